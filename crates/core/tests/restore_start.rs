//! `restore --start` takes the server's word for how recovery ended, not its log's (issue 17
//! #13): a log that already says "ready to accept connections" (an earlier run's, or a
//! client's: during hot standby an error message quotes a client's input and `RAISE LOG` writes
//! what it likes) must not make a server still in recovery count as promoted.
//!
//! PostgreSQL refuses to run as root, and so does `start_and_wait`: as root the test runs its
//! second half (`child_waits_for_the_server_not_its_log`) as the PostgreSQL user, in this test
//! binary installed where that user can run it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pitr_core::repofile::BackupManifest;
use pitr_core::restore::{start_and_wait, StartOptions, TargetAction};
use pitr_testkit::cluster::{psql_command, stop_immediately};
use pitr_testkit::cmd::{describe, output, stdout_of};
use pitr_testkit::programs::{pg_bindir, pg_command};
use pitr_testkit::user::{give_to_pg, unprivileged};
use pitr_testkit::{free_port, PgCluster, TestDir};

/// What the parent hands the child: data directory, socket directory, port, version number.
const CHILD: &str = "PITR_TEST_START_CHILD";

const SAYS_PROMOTED: &str = "database system is ready to accept connections";

/// Stops whatever server runs on the data directory when the test ends, passed or not.
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        stop_immediately(pg_bindir(), &self.0);
    }
}

#[test]
fn a_log_saying_promoted_does_not_end_the_wait() {
    // A cluster that, started, stays in hot standby (a standby of nothing) until promoted.
    let mut pg = PgCluster::builder().conf("hot_standby = on").init();
    let version = pg.server_version_num();
    pg.stop("fast");
    let data = pg.data_dir().to_owned();
    let _stop = StopOnDrop(data.clone());
    for (file, text) in [
        ("standby.signal", String::new()),
        // An earlier run's log, or a client's line: the words recovery success is known by.
        (
            "pitr-recovery.log",
            format!("2026-12-07 20:00:00 UTC [1] LOG:  {SAYS_PROMOTED}\n"),
        ),
    ] {
        let path = data.join(file);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        give_to_pg(&path);
    }
    let dir = TestDir::new();
    let sock = dir.mkdir("s");
    let exe = dir.install_program(&std::env::current_exe().expect("the test binary's path"));
    let mut cmd = unprivileged(&exe);
    cmd.args([
        "--exact",
        "child_waits_for_the_server_not_its_log",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(
        CHILD,
        format!(
            "{}\n{}\n{}\n{version}",
            data.display(),
            sock.display(),
            free_port()
        ),
    );
    let out = output(&mut cmd);
    assert!(
        out.status.success() && stdout_of(&out).contains("1 passed"),
        "{}",
        describe(&cmd, &out)
    );
}

#[test]
#[ignore = "the second half of a_log_saying_promoted_does_not_end_the_wait, as the PostgreSQL user"]
fn child_waits_for_the_server_not_its_log() {
    let given = std::env::var(CHILD).expect("run by a_log_saying_promoted_does_not_end_the_wait");
    let given: Vec<&str> = given.lines().collect();
    let (data, sock) = (PathBuf::from(given[0]), PathBuf::from(given[1]));
    let port: u16 = given[2].parse().unwrap();
    let manifest: BackupManifest = serde_json::from_value(manifest(given[3].parse().unwrap()))
        .expect("a manifest that parses");
    let opts = StartOptions {
        port: Some(port),
        stop_after: false,
        pg_options: vec![
            format!("unix_socket_directories='{}'", sock.display()),
            "listen_addresses=''".into(),
        ],
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let waiting = {
        let data = data.clone();
        rt.spawn(
            async move { start_and_wait(&data, &manifest, TargetAction::Promote, &opts).await },
        )
    };
    // The server answers, read-only, in recovery...
    wait_for_answer(&sock, port, "select pg_is_in_recovery()", "t", &data);
    // ...and a client writes the words into its log as well.
    psql(
        &sock,
        port,
        &format!("DO $$BEGIN RAISE LOG '{SAYS_PROMOTED}'; END$$"),
    );
    assert!(
        !waiting.is_finished(),
        "start_and_wait returned while the server is still in recovery: {:?}",
        rt.block_on(waiting)
    );
    // Promoted for real: now the wait ends, with the server's state.
    let mut promote = pg_command("pg_ctl");
    promote.arg("-D").arg(&data).args(["-w", "promote"]);
    let out = output(&mut promote);
    assert!(out.status.success(), "{}", describe(&promote, &out));
    let outcome = rt
        .block_on(waiting)
        .expect("the waiting task")
        .expect("start_and_wait after the promotion");
    assert!(
        outcome.state.starts_with("promoted"),
        "state {:?}",
        outcome.state
    );
    assert_eq!(psql(&sock, port, "select pg_is_in_recovery()"), "f");
}

#[track_caller]
fn psql(sock: &Path, port: u16, sql: &str) -> String {
    let mut cmd = psql_command(sock, port, sql);
    let out = output(&mut cmd);
    assert!(out.status.success(), "{}", describe(&cmd, &out));
    stdout_of(&out).trim().to_owned()
}

/// Polls `sql` until it answers `want` (a minute at most).
#[track_caller]
fn wait_for_answer(sock: &Path, port: u16, sql: &str, want: &str, data: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = output(&mut psql_command(sock, port, sql));
        if out.status.success() && stdout_of(&out).trim() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not answer {sql:?} with {want:?}: {}\n{}",
            stdout_of(&out),
            pitr_testkit::dirs::tail(&data.join("pitr-recovery.log"), 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The manifest fields `start_and_wait` reads (the server's version) around a minimal backup.
fn manifest(pg_version_num: u32) -> serde_json::Value {
    let server = serde_json::json!({"path": "backup_manifest", "kind": "file", "mode": 384,
                                    "size": 0, "mtime": 0});
    serde_json::json!({
        "format_version": 1, "id": "b", "label": "b",
        "start_time": "2026-11-26T00:00:00Z", "stop_time": "2026-11-26T00:00:01Z",
        "start_lsn": "0/2000028", "stop_lsn": "0/2000100", "timeline": 1,
        "system_identifier": "7312000000000000001", "pg_version": "15",
        "pg_version_num": pg_version_num, "size_bytes": 0, "stored_bytes": 0,
        "wal_start": "000000010000000000000002", "wal_stop": "000000010000000000000002",
        "files": [], "tablespaces": [], "wal": [], "server_manifest": server,
    })
}

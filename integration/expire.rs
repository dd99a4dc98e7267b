//! `pitr expire`, `pin` and `unpin` against a real cluster: four backups with continuous WAL
//! between them; `--retain-full 2` removes the two old backups, the WAL before the third and
//! their unshared chunks, after which `verify` is clean and the oldest kept backup restores
//! to the end of the archived WAL. A pin keeps a backup; no retention flag deletes nothing;
//! an expire killed with SIGKILL at any moment leaves a repository that verifies, and the
//! next expire finishes.

use pitr_testkit::cluster::stop_immediately;
use pitr_testkit::cmd::{describe, output, run, spawn, stdout_of};
use pitr_testkit::dirs::tail;
use pitr_testkit::programs::pg_bindir;
use pitr_testkit::{free_port, PgCluster, TestDir};

use crate::harness::{ArchiveTo, Pitr, ARCHIVE_TIMEOUT};

/// `pitr expire <args> --json`, expecting success; the parsed report.
#[track_caller]
fn expire_json(pitr: &Pitr, args: &[&str]) -> serde_json::Value {
    let mut cmd = pitr.command(["expire", "--json"]);
    cmd.args(args);
    let out = run(&mut cmd);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "expire --json printed no JSON: {e}\n{}",
            describe(&cmd, &out)
        )
    })
}

fn ids_of(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("{list} is not an array"))
        .iter()
        .map(|b| b["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn expire_keeps_the_newest_backups_and_what_they_need() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let pg = PgCluster::builder().archive_to(&pitr).init();
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(pitr.backup(&pg, &["--checkpoint", "fast"]));
        // some changed pages between backups, so that each has chunks of its own
        pg.psql(&format!(
            "update pgbench_accounts set abalance = abalance + {i} where aid % 7 = {i}"
        ));
        let seg = pg.switch_wal();
        pg.wait_archived(&seg, ARCHIVE_TIMEOUT);
    }
    let before_names = pitr.archived_names();
    let before_chunks = pitr.chunk_files().len();

    // Without a retention flag nothing is deleted, and the error says which flag to give.
    let mut cmd = pitr.command(["expire"]);
    let out = output(&mut cmd);
    assert!(
        !out.status.success() && describe(&cmd, &out).contains("--retain-full"),
        "expire without a retention\n{}",
        describe(&cmd, &out)
    );
    assert_eq!(pitr.list_json().len(), 4);

    // A pin keeps the second backup; list shows it.
    run(&mut pitr.command(["pin", &ids[1]]));
    let listed = pitr.listed_backup(&ids[1]);
    assert_eq!(listed["pinned"], true, "{listed}");
    assert_eq!(pitr.listed_backup(&ids[0])["pinned"], false);
    let out = pitr.run(["list"]);
    let text = stdout_of(&out);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&ids[1]) && l.split_whitespace().any(|w| w == "yes")),
        "`list` shows the pin\n{text}"
    );
    let dry = expire_json(
        &pitr,
        &["--retain-full", "2", "--dry-run", "--gc-grace", "0s"],
    );
    assert_eq!(ids_of(&dry["backups"]), [ids[0].clone()], "{dry:#}");
    run(&mut pitr.command(["unpin", &ids[1]]));
    assert_eq!(pitr.listed_backup(&ids[1])["pinned"], false);

    // The dry run names what would go and deletes nothing.
    let dry = expire_json(
        &pitr,
        &["--retain-full", "2", "--dry-run", "--gc-grace", "0s"],
    );
    assert_eq!(ids_of(&dry["backups"]), ids[..2], "{dry:#}");
    assert_eq!(pitr.archived_names(), before_names);
    assert_eq!(pitr.chunk_files().len(), before_chunks);

    // kill -9 at several moments of an expire (on copies of the repository): what is left
    // verifies, and a second expire finishes the work.
    for (i, delay_ms) in [1u64, 5, 15, 40, 100].into_iter().enumerate() {
        let name = format!("repo-kill-{i}");
        let copy = dir.path().join(&name);
        run(std::process::Command::new("cp")
            .arg("-a")
            .arg(pitr.repo())
            .arg(&copy));
        let killed = Pitr::new(&dir, &name);
        let mut child =
            spawn(&mut killed.command(["expire", "--retain-full", "2", "--gc-grace", "0s"]));
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let status = child.wait().unwrap();
        let verify_clean = |when: &str| {
            let mut cmd = killed.command(["verify"]);
            let out = output(&mut cmd);
            assert!(
                out.status.success(),
                "verify {when} (expire killed after {delay_ms} ms: {status})\n{}",
                describe(&cmd, &out)
            );
        };
        verify_clean("after the kill");
        let finished = expire_json(&killed, &["--retain-full", "2", "--gc-grace", "0s"]);
        verify_clean("after the second expire");
        assert_eq!(killed.list_json().len(), 2, "{finished:#}");
    }

    let done = expire_json(&pitr, &["--retain-full", "2", "--gc-grace", "0s"]);
    assert_eq!(ids_of(&done["backups"]), ids[..2], "{done:#}");
    assert_eq!(done["wal"], dry["wal"], "the dry run said what would go");
    assert_eq!(
        done["chunks"], dry["chunks"],
        "the dry run said what would go"
    );
    let chunks_gone = done["chunks"].as_array().unwrap().len();
    assert!(
        chunks_gone > 0,
        "the old backups had chunks of their own\n{done:#}"
    );
    assert!(done["bytes_freed"].as_u64().unwrap() > 0, "{done:#}");
    assert_eq!(pitr.chunk_files().len(), before_chunks - chunks_gone);

    // Two backups left; no WAL segment before the third backup's first is left.
    let left: Vec<String> = pitr
        .list_json()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, ids[2..]);
    let wal_start = pitr.listed_backup(&ids[2])["wal_start"]
        .as_str()
        .unwrap()
        .to_string();
    let names = pitr.archived_names();
    assert!(
        names.iter().all(|n| n.len() < 24 || n[..24] >= *wal_start),
        "WAL before {wal_start} left: {names:?}"
    );
    assert!(
        before_names
            .iter()
            .any(|n| n.len() >= 24 && n[..24] < *wal_start),
        "there was WAL before {wal_start}: {before_names:?}"
    );

    // A second run has nothing to do.
    let again = expire_json(&pitr, &["--retain-full", "2", "--gc-grace", "0s"]);
    assert_eq!(again["bytes_freed"], 0, "{again:#}");

    // The repository verifies, and the oldest kept backup restores to the end of the WAL.
    let mut cmd = pitr.command(["verify"]);
    let out = output(&mut cmd);
    assert!(
        out.status.success() && stdout_of(&out).contains("no problems"),
        "verify after expire\n{}",
        describe(&cmd, &out)
    );
    let pgdata = dir.path().join("restored");
    let sock = dir.mkdir("s-restored");
    let mut cmd = pitr.command(["restore", "--pgdata"]);
    cmd.arg(&pgdata)
        .args(["--backup", &ids[2], "--start", "--stop-after", "--json"])
        .args(["--port", &free_port().to_string()])
        .args([
            "--pg-option",
            &format!("unix_socket_directories='{}'", sock.display()),
        ])
        .args(["--pg-option", "listen_addresses=''"])
        .args(["--pg-option", "archive_mode=off"]);
    let out = output(&mut cmd);
    let ok = out.status.success();
    if !ok {
        stop_immediately(pg_bindir(), &pgdata);
    }
    assert!(
        ok,
        "restore of {} after expire\n{}\n--- recovery log ---\n{}",
        ids[2],
        describe(&cmd, &out),
        tail(&pgdata.join("pitr-recovery.log"), 40)
    );
}

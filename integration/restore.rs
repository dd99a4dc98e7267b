//! `pitr restore` against real clusters, modelled on PostgreSQL's own
//! src/test/recovery/t/003_recovery_targets.pl: a backup, a workload of numbered rows committed
//! one transaction at a time with targets recorded between them, and a restore to each target
//! kind with `--start`, asserting the exact rows recovery kept. Then backup choice with two
//! backups, a WAL gap refused before anything is written, recovery across a timeline switch
//! archived into the same repository, `pg_verifybackup` on a restored directory, and `--delta`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use pitr_testkit::cmd::{describe, output, run, stderr_of, stdout_of};
use pitr_testkit::dirs::{list_dir, tail};
use pitr_testkit::programs::pg_command;
use pitr_testkit::user::give_to_pg;
use pitr_testkit::{free_port, PgCluster, TestDir};

use crate::harness::{ArchiveTo, Pitr, ARCHIVE_TIMEOUT};
use crate::restored::{parse_json, restore_started, stop_server, Place, Restored};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `pitr backup` of `pg` (fast checkpoint); returns the backup ID it prints.
#[track_caller]
fn take_backup(pitr: &Pitr, pg: &PgCluster) -> String {
    let conn = format!(
        "host={} port={} user=postgres",
        pg.socket_dir().display(),
        pg.port()
    );
    let out = pitr.run(["backup", "-d", &conn, "--checkpoint", "fast"]);
    let id = stdout_of(&out)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
        .unwrap_or_else(|| panic!("pitr backup printed no ID\n{}", stderr_of(&out)));
    assert!(!id.contains(' '), "backup ID {id:?} looks wrong");
    id
}

/// A time as text both PostgreSQL and `pitr` read: `YYYY-MM-DD HH:MM:SS.ffffff+00`, from a
/// timestamptz SQL expression.
fn utc_text(expr: &str) -> String {
    format!("select to_char(({expr}) at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
}

/// `X/Y` in PostgreSQL's canonical form (pg_waldump pads with zeros).
fn canonical_lsn(lsn: &str) -> String {
    let (hi, lo) = lsn
        .split_once('/')
        .unwrap_or_else(|| panic!("{lsn:?} is not an LSN"));
    let hi = u64::from_str_radix(hi, 16).unwrap_or_else(|e| panic!("LSN {lsn:?}: {e}"));
    let lo = u64::from_str_radix(lo, 16).unwrap_or_else(|e| panic!("LSN {lsn:?}: {e}"));
    format!("{hi:X}/{lo:X}")
}

/// Start LSN of the commit record of transaction `xid`, found with pg_waldump in the WAL
/// between `from` and `to` (inclusive bounds, both `X/Y`) still in `pg`'s pg_wal.
#[track_caller]
fn commit_record_lsn(pg: &PgCluster, from: &str, to: &str, xid: &str) -> String {
    let mut cmd = pg_command("pg_waldump");
    cmd.arg("-p").arg(pg.data_dir().join("pg_wal")).args([
        "-s",
        from,
        "-e",
        to,
        "-r",
        "Transaction",
    ]);
    let out = output(&mut cmd);
    let text = stdout_of(&out);
    for line in text.lines() {
        let field = |name: &str| {
            line.split(',')
                .find_map(|f| f.trim().strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        if line.contains("desc: COMMIT") && field("tx:").as_deref() == Some(xid) {
            return canonical_lsn(&field("lsn:").expect("pg_waldump line with an lsn"));
        }
    }
    panic!(
        "no commit record of transaction {xid} between {from} and {to}\n{}",
        describe(&cmd, &out)
    );
}

/// `pg_verifybackup DIR` (PostgreSQL's own tool), expecting success.
#[track_caller]
fn verifybackup(dir: &Path) {
    let mut cmd = pg_command("pg_verifybackup");
    cmd.arg(dir);
    let out = run(&mut cmd);
    assert!(
        stdout_of(&out).contains("backup successfully verified"),
        "pg_verifybackup exited 0 without saying so\n{}",
        describe(&cmd, &out)
    );
}

/// `pitr restore --pgdata DIR <args> --dry-run --json`, parsed.
#[track_caller]
fn dry_run(pitr: &Pitr, pgdata: &Path, args: &[&str]) -> serde_json::Value {
    let mut cmd = pitr.command(["restore", "--pgdata"]);
    cmd.arg(pgdata).args(args).args(["--dry-run", "--json"]);
    let out = run(&mut cmd);
    assert!(
        !pgdata.exists() || list_dir(pgdata).is_empty(),
        "--dry-run wrote into {}",
        pgdata.display()
    );
    parse_json(&cmd, &out)
}

/// `pitr restore --pgdata DIR <args>`, expecting a refusal: non-zero exit, nothing written.
/// Returns stderr.
#[track_caller]
fn restore_refused(pitr: &Pitr, pgdata: &Path, args: &[&str]) -> String {
    let existed = pgdata.exists();
    let mut cmd = pitr.command(["restore", "--pgdata"]);
    cmd.arg(pgdata).args(args);
    let out = output(&mut cmd);
    assert!(
        !out.status.success(),
        "restore should have been refused\n{}",
        describe(&cmd, &out)
    );
    if existed {
        assert!(
            list_dir(pgdata).is_empty(),
            "a refused restore wrote into {}: {:?}\n{}",
            pgdata.display(),
            list_dir(pgdata),
            describe(&cmd, &out)
        );
    } else {
        assert!(
            !pgdata.exists(),
            "a refused restore created {}\n{}",
            pgdata.display(),
            describe(&cmd, &out)
        );
    }
    let err = stderr_of(&out);
    assert!(
        err.lines().count() <= 5 && !err.contains("panicked"),
        "the refusal should be a clear error line or two\n{}",
        describe(&cmd, &out)
    );
    err
}

/// Runs `jobs` on `workers` threads; every job runs even if others fail, then the test fails
/// naming every job that panicked (their messages are already on stderr).
fn run_jobs(workers: usize, jobs: Vec<(String, Box<dyn FnOnce() + Send + '_>)>) {
    let queue = Mutex::new(jobs.into_iter().rev().collect::<Vec<_>>());
    let failed = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let Some((name, job)) = next else { break };
                let started = Instant::now();
                let ok = catch_unwind(AssertUnwindSafe(job)).is_ok();
                eprintln!(
                    "restore case {name}: {} in {:.1} s",
                    if ok { "ok" } else { "FAILED" },
                    started.elapsed().as_secs_f64()
                );
                if !ok {
                    failed.lock().unwrap_or_else(|e| e.into_inner()).push(name);
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap_or_else(|e| e.into_inner());
    assert!(failed.is_empty(), "restore cases failed: {failed:?}");
}

/// Every file and directory under `root` (relative path → (is_dir, mode, content)), skipping
/// the recovery log `--start` writes.
fn tree(root: &Path) -> BTreeMap<String, (bool, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for p in list_dir(&dir) {
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            if rel == "pitr-recovery.log" {
                continue;
            }
            let meta = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                stack.push(p.clone());
                out.insert(rel, (true, mode, Vec::new()));
            } else {
                let mut bytes = fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                if rel == "postgresql.auto.conf" {
                    // The restore's own header line carries the time of the restore.
                    let text = String::from_utf8_lossy(&bytes)
                        .lines()
                        .filter(|l| !l.starts_with("# pitr restore"))
                        .collect::<Vec<_>>()
                        .join("\n");
                    bytes = text.into_bytes();
                }
                out.insert(rel, (false, mode, bytes));
            }
        }
    }
    out
}

/// The two directories hold the same files with the same modes and contents.
#[track_caller]
fn assert_same_tree(got: &Path, want: &Path) {
    let (g, w) = (tree(got), tree(want));
    let only_got: Vec<&String> = g.keys().filter(|k| !w.contains_key(*k)).collect();
    let only_want: Vec<&String> = w.keys().filter(|k| !g.contains_key(*k)).collect();
    assert!(
        only_got.is_empty() && only_want.is_empty(),
        "{} vs {}: only in the first: {only_got:?}; only in the second: {only_want:?}",
        got.display(),
        want.display()
    );
    for (path, (is_dir, mode, bytes)) in &g {
        let (w_dir, w_mode, w_bytes) = &w[path];
        assert_eq!(
            (is_dir, mode),
            (w_dir, w_mode),
            "{path}: (is_dir, mode) differ between {} and {}",
            got.display(),
            want.display()
        );
        assert!(
            bytes == w_bytes,
            "{path}: content differs between {} and {} ({} vs {} bytes)",
            got.display(),
            want.display(),
            bytes.len(),
            w_bytes.len()
        );
    }
}

/// A source cluster archiving into a fresh repository, with table `t (i int)` created before
/// anything else happens.
fn source(dir: &TestDir, conf: &[&str]) -> (Pitr, PgCluster) {
    let pitr = Pitr::init(dir, "repo");
    let mut builder = PgCluster::builder().archive_to(&pitr);
    for line in conf {
        builder = builder.conf(*line);
    }
    let pg = builder.init();
    pg.psql("create table t (i int)");
    (pitr, pg)
}

/// Inserts row `i` in its own transaction (its own connection, autocommit); returns its xid.
#[track_caller]
fn insert(pg: &PgCluster, i: u32) -> String {
    pg.psql(&format!(
        "insert into t values ({i}) returning pg_current_xact_id()"
    ))
}

/// Completes the current WAL segment and waits until the archiver stored it.
#[track_caller]
fn switch_and_archive(pg: &PgCluster) -> String {
    let seg = pg.switch_wal();
    pg.wait_archived(&seg, ARCHIVE_TIMEOUT);
    seg
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// 003_recovery_targets.pl: rows 1..=8 committed one transaction at a time after a backup,
/// with an xid, a time between two commits, a commit's exact time, a commit record's LSN and a
/// restore point recorded among them; a restore to each target kind (and with
/// `--target-exclusive`) keeps exactly the rows PostgreSQL's semantics say. The same source
/// also serves `pg_verifybackup` on a restored directory and `--delta` over a damaged one.
#[test]
fn restore_to_each_target_kind_keeps_exactly_the_right_rows() {
    let started = Instant::now();
    let dir = TestDir::new();
    let (pitr, pg) = source(&dir, &["track_commit_timestamp = on"]);
    let backup = take_backup(&pitr, &pg);

    insert(&pg, 1);
    insert(&pg, 2);
    // xid target: transaction 3.
    let xid3 = insert(&pg, 3);
    insert(&pg, 4);
    // A time strictly between commit 4 and commit 5 (each statement is its own connection).
    let time_between = pg.psql(&format!(
        "{} from pg_sleep(0.02)",
        utc_text("clock_timestamp()")
    ));
    pg.psql("select pg_sleep(0.02)");
    // Exact commit time of transaction 5 (as RFC 3339, the other accepted spelling).
    let xid5 = insert(&pg, 5);
    let commit5 = pg.psql(&format!(
        "select to_char(pg_xact_commit_timestamp('{xid5}'::xid) at time zone 'UTC', \
         'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
    ));
    // LSN target: the start of transaction 6's commit record.
    let before6 = pg.psql("select pg_current_wal_insert_lsn()");
    let xid6 = insert(&pg, 6);
    insert(&pg, 7);
    pg.psql("select pg_create_restore_point('p')");
    let after_p = pg.psql("select pg_current_wal_lsn()");
    let lsn6 = commit_record_lsn(&pg, &before6, &after_p, &xid6);
    // The trailing commit every time target needs after it, then its own statement to switch.
    let xid8 = insert(&pg, 8);
    switch_and_archive(&pg);
    let workload_done = Instant::now();
    eprintln!(
        "xid3={xid3} time_between={time_between} commit5={commit5} (xid {xid5}) \
         lsn6={lsn6} (xid {xid6}) xid8={xid8}; source ready in {:.1} s",
        (workload_done - started).as_secs_f64()
    );

    let rows = |n: u32| (1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    // (case, target arguments, rows kept, words of PostgreSQL's "recovery stopping" line)
    let cases: Vec<(&str, Vec<String>, String, String)> = vec![
        (
            "xid",
            vec!["--target-xid".into(), xid3.clone()],
            rows(3),
            format!("after commit of transaction {xid3}"),
        ),
        (
            "xid-exclusive",
            vec![
                "--target-xid".into(),
                xid3.clone(),
                "--target-exclusive".into(),
            ],
            rows(2),
            format!("before commit of transaction {xid3}"),
        ),
        (
            "time-between-commits",
            vec!["--target-time".into(), time_between.clone()],
            rows(4),
            format!("before commit of transaction {xid5}"),
        ),
        (
            "time-at-commit",
            vec!["--target-time".into(), commit5.clone()],
            rows(5),
            format!("before commit of transaction {xid6}"),
        ),
        (
            "time-at-commit-exclusive",
            vec![
                "--target-time".into(),
                commit5.clone(),
                "--target-exclusive".into(),
            ],
            rows(4),
            format!("before commit of transaction {xid5}"),
        ),
        (
            "lsn",
            vec!["--target-lsn".into(), lsn6.clone()],
            rows(6),
            format!("after WAL location (LSN) \"{lsn6}\""),
        ),
        (
            "lsn-exclusive",
            vec![
                "--target-lsn".into(),
                lsn6.clone(),
                "--target-exclusive".into(),
            ],
            rows(5),
            format!("before WAL location (LSN) \"{lsn6}\""),
        ),
        (
            "name",
            vec!["--target-name".into(), "p".into()],
            rows(7),
            "at restore point \"p\"".into(),
        ),
        (
            "immediate",
            vec!["--target-immediate".into()],
            String::new(),
            "after reaching consistency".into(),
        ),
        ("none", vec![], rows(8), String::new()),
    ];

    let mut jobs: Vec<(String, Box<dyn FnOnce() + Send + '_>)> = Vec::new();
    for (name, args, want_rows, want_stop) in cases {
        let (pitr, dir, backup) = (&pitr, &dir, &backup);
        jobs.push((
            name.to_owned(),
            Box::new(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let r = restore_started(pitr, dir, name, &args, "off");
                assert_eq!(
                    r.rows(),
                    want_rows,
                    "{name}: rows of t after restore {args:?}"
                );
                let stopped = r.recovery("stopped");
                if want_stop.is_empty() {
                    assert_eq!(stopped, "", "{name}: no target, so no \"recovery stopping\"");
                } else {
                    assert!(
                        stopped.contains(&want_stop),
                        "{name}: expected \"recovery stopping {want_stop}…\", the report says {stopped:?}"
                    );
                }
                r.assert_spool_gone(name);
                assert!(
                    r.recovery("state").starts_with("promoted"),
                    "{name}: state {:?}",
                    r.recovery("state")
                );
                assert_eq!(r.recovery("timeline"), "2", "{name}: new timeline in the report");
                assert_eq!(r.wal_timeline(), 2, "{name}: timeline the server writes on");
                assert_eq!(
                    r.psql("select pg_is_in_recovery()"),
                    "f",
                    "{name}: promoted, so not in recovery"
                );
                assert!(
                    r.stderr.contains(backup.as_str()),
                    "{name}: the log should name backup {backup}:\n{}",
                    r.stderr
                );
            }),
        ));
    }

    // --target-action pause: the server stays in recovery at the target, read-only.
    jobs.push((
        "xid-pause".to_owned(),
        Box::new(|| {
            let r = restore_started(
                &pitr,
                &dir,
                "pause",
                &["--target-xid", &xid3, "--target-action", "pause"],
                "off",
            );
            assert!(
                r.recovery("state").starts_with("paused"),
                "pause: state {:?}",
                r.recovery("state")
            );
            assert_eq!(r.rows(), "1,2,3", "pause: rows at transaction {xid3}");
            assert_eq!(
                r.psql("select pg_is_in_recovery(), pg_get_wal_replay_pause_state()"),
                "t|paused",
                "pause: the server waits at the target"
            );
        }),
    ));

    // A target recovery never reaches (a transaction that never committed): refused before
    // a byte is written, naming the transaction (PostgreSQL would replay everything and stop
    // with FATAL).
    jobs.push((
        "unreachable-xid".to_owned(),
        Box::new(|| {
            let never = (xid8.parse::<u64>().expect("xid") + 1000).to_string();
            let place = Place::new(&dir, "unreachable");
            let mut cmd = pitr.command(["restore", "--pgdata"]);
            cmd.arg(&place.pgdata)
                .args(["--target-xid", &never])
                .args(place.start_args("off"));
            let out = output(&mut cmd);
            let written = place.pgdata.exists();
            stop_server(&place.pgdata);
            assert!(
                !out.status.success(),
                "recovery to a never-committed xid should be refused\n{}",
                describe(&cmd, &out)
            );
            assert!(
                stderr_of(&out).contains(&format!("transaction {never} commits or aborts nowhere")),
                "the refusal should name the transaction\n{}",
                describe(&cmd, &out)
            );
            assert!(
                !written,
                "a refused restore wrote {}",
                place.pgdata.display()
            );
        }),
    ));

    // pg_verifybackup on a fresh restore, then --delta over a damaged copy gives the same
    // directory as a fresh restore, and recovers to the same rows.
    jobs.push((
        "verifybackup-and-delta".to_owned(),
        Box::new(|| verify_and_delta(&pitr, &dir, &pg, &rows(7))),
    ));

    run_jobs(2, jobs);
    eprintln!(
        "restores done in {:.1} s (total {:.1} s)",
        workload_done.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

fn verify_and_delta(pitr: &Pitr, dir: &TestDir, pg: &PgCluster, want_rows: &str) {
    let target = ["--target-name", "p"];
    // A fresh restore, never started: PostgreSQL's own verifier accepts it.
    let fresh = dir.path().join("d-fresh");
    let out = pitr.run(
        ["restore", "--pgdata", fresh.to_str().expect("utf-8 path")]
            .into_iter()
            .chain(target),
    );
    assert!(
        fresh.join("recovery.signal").is_file(),
        "no recovery.signal in the restored directory\n{}",
        stderr_of(&out)
    );
    let auto =
        fs::read_to_string(fresh.join("postgresql.auto.conf")).expect("postgresql.auto.conf");
    for want in [
        format!("--repo {} restore-wal %f %p", pitr.repo().display()),
        "recovery_target_name = 'p'".to_owned(),
        "recovery_target_action = 'promote'".to_owned(),
    ] {
        assert!(
            auto.contains(&want),
            "postgresql.auto.conf lacks {want:?}:\n{auto}"
        );
    }
    let mode = fs::metadata(&fresh).expect("stat restored dir").mode() & 0o777;
    assert_eq!(mode, 0o700, "mode of the restored data directory");
    verifybackup(&fresh);

    // The same restore, then damaged: a relation file changed in place (same size), one cut
    // short, two files deleted (one of them pg_control), extra files and a directory added.
    let stale = dir.path().join("d-stale");
    pitr.run(
        ["restore", "--pgdata", stale.to_str().expect("utf-8 path")]
            .into_iter()
            .chain(target),
    );
    let file_of = |rel: &str| stale.join(pg.psql(&format!("select pg_relation_filepath('{rel}')")));
    let changed = file_of("pg_class");
    let mut bytes = fs::read(&changed).expect("read pg_class file");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0x5a;
    }
    fs::write(&changed, &bytes).expect("rewrite pg_class file");
    let cut = file_of("pg_attribute");
    let len = fs::metadata(&cut).expect("stat pg_attribute file").len();
    fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate pg_attribute file");
    let deleted = [file_of("pg_proc"), stale.join("global/pg_control")];
    for p in &deleted {
        fs::remove_file(p).unwrap_or_else(|e| panic!("remove {}: {e}", p.display()));
    }
    let extra_file = stale.join("base/5/999999");
    let extra_top = stale.join("not-from-the-backup.txt");
    let extra_dir = stale.join("pg_extra_dir");
    fs::write(&extra_file, b"stale relation").expect("write extra file");
    fs::write(&extra_top, b"junk").expect("write extra file");
    fs::create_dir(&extra_dir).expect("mkdir extra dir");
    fs::write(extra_dir.join("x"), b"x").expect("write file in extra dir");
    for p in [&extra_file, &extra_top, &extra_dir, &extra_dir.join("x")] {
        give_to_pg(p);
    }
    let damaged_bytes = bytes.len() as u64 + len;

    let mut cmd = pitr.command(["restore", "--pgdata"]);
    cmd.arg(&stale).args(target).args(["--delta", "--json"]);
    let out = run(&mut cmd);
    let json = parse_json(&cmd, &out);
    let stats = &json["restore"];
    let num = |k: &str| {
        stats[k]
            .as_u64()
            .unwrap_or_else(|| panic!("restore.{k} missing from the --delta report: {json}"))
    };
    assert!(
        num("bytes_reused") > 0 && num("files_reused") > 0,
        "--delta reused nothing: {stats}"
    );
    assert!(
        num("bytes_fetched") >= damaged_bytes,
        "--delta fetched {} bytes, less than the {damaged_bytes} bytes of the changed files: {stats}",
        num("bytes_fetched")
    );
    assert!(
        num("bytes_fetched") < num("bytes_reused"),
        "--delta fetched more than it reused after damaging four files: {stats}"
    );
    assert!(
        num("removed") >= 3,
        "--delta should report the removed extras: {stats}"
    );
    // Every restore logs the line; --delta's must carry the figures of its report.
    let logged = format!(
        "{} MiB fetched, {} MiB reused",
        num("bytes_fetched") >> 20,
        num("bytes_reused") >> 20
    );
    assert!(
        num("bytes_reused") >> 20 > 0 && stderr_of(&out).contains(&logged),
        "the log should report the reused and fetched bytes ({logged})\n{}",
        describe(&cmd, &out)
    );
    for p in [&extra_file, &extra_top, &extra_dir] {
        assert!(!p.exists(), "--delta left {} behind", p.display());
    }
    assert_same_tree(&stale, &fresh);
    verifybackup(&stale);

    // Started (with --delta again: everything already matches), it recovers to the same rows.
    let place = Place {
        pgdata: stale.clone(),
        sock: dir.mkdir("s-stale"),
        port: free_port(),
    };
    let mut cmd = pitr.command(["restore", "--pgdata"]);
    cmd.arg(&stale)
        .args(target)
        .arg("--delta")
        .args(place.start_args("off"))
        .arg("--json");
    let out = output(&mut cmd);
    if !out.status.success() {
        stop_server(&stale);
        panic!("delta restore --start failed\n{}", describe(&cmd, &out));
    }
    let r = Restored {
        json: parse_json(&cmd, &out),
        place,
        stderr: stderr_of(&out),
    };
    let again = &r.json["restore"];
    assert!(
        again["bytes_fetched"].as_u64().unwrap_or(u64::MAX) < 1 << 20,
        "a second --delta over an identical directory should fetch next to nothing: {again}"
    );
    assert_eq!(
        r.rows(),
        want_rows,
        "rows after --delta restore to restore point p"
    );
}

/// Two backups: a time (or LSN) between them picks the older, a later one the newer; a time
/// before the first backup, or after the last archived WAL, is refused with the recoverable
/// window and nothing written.
#[test]
fn restore_picks_the_backup_before_the_target_and_refuses_outside_the_window() {
    let dir = TestDir::new();
    let (pitr, pg) = source(&dir, &[]);
    let before_first = pg.psql(&utc_text("clock_timestamp()"));
    let first = take_backup(&pitr, &pg);
    insert(&pg, 1);
    insert(&pg, 2);
    let lsn_between = pg.psql("select pg_current_wal_lsn()");
    let time_between = pg.psql(&format!(
        "{} from pg_sleep(0.02)",
        utc_text("clock_timestamp()")
    ));
    pg.psql("select pg_sleep(0.02)");
    insert(&pg, 3);
    // Two backups in one second get distinct IDs (a suffix), no wait needed.
    let second = take_backup(&pitr, &pg);
    assert_ne!(first, second, "two backups, two IDs");
    insert(&pg, 4);
    let time_after = pg.psql(&format!(
        "{} from pg_sleep(0.02)",
        utc_text("clock_timestamp()")
    ));
    pg.psql("select pg_sleep(0.02)");
    insert(&pg, 5);
    // A restore point after the second backup (a name target must exist to be planned).
    pg.psql("select pg_create_restore_point('x')");
    switch_and_archive(&pg);

    let nowhere = dir.path().join("d-plan");
    let plan = |args: &[&str]| dry_run(&pitr, &nowhere, args);
    let picked = |args: &[&str]| plan(args)["backup"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        picked(&["--target-time", &time_between]),
        first,
        "time between the backups"
    );
    assert_eq!(
        picked(&["--target-lsn", &lsn_between]),
        first,
        "LSN between the backups"
    );
    assert_eq!(
        picked(&["--target-time", &time_after]),
        second,
        "time after the second"
    );
    assert_eq!(picked(&[]), second, "no target: the newest backup");
    assert_eq!(
        picked(&["--target-name", "x"]),
        second,
        "name target: the newest backup"
    );
    assert_eq!(
        picked(&["--target-time", &time_after, "--backup", &first]),
        first,
        "--backup overrides"
    );

    // Refused: before the first backup finished, and after the last archived WAL.
    let err = restore_refused(&pitr, &nowhere, &["--target-time", &before_first]);
    assert!(
        err.contains("recoverable window") || err.contains("earliest backup"),
        "a target before the first backup should be refused with the recoverable window:\n{err}"
    );
    let empty = dir.mkdir("d-empty");
    let err = restore_refused(&pitr, &empty, &["--target-time", "2099-01-01 00:00:00+00"]);
    assert!(
        err.contains("recoverable window"),
        "a target after the last archived WAL should be refused with the recoverable window:\n{err}"
    );
    let err = restore_refused(&pitr, &nowhere, &["--target-lsn", "0/10"]);
    assert!(
        err.contains("0/10"),
        "an LSN before the first backup should be refused naming it:\n{err}"
    );
    // ... and with a backup that finished after the target.
    let err = restore_refused(
        &pitr,
        &nowhere,
        &["--target-time", &time_between, "--backup", &second],
    );
    assert!(
        err.contains(&second),
        "the refusal should name backup {second}:\n{err}"
    );

    // A directory that is not empty is not overwritten without --delta.
    let occupied = dir.mkdir("d-occupied");
    fs::write(occupied.join("precious"), b"keep me").expect("write precious file");
    let mut cmd = pitr.command(["restore", "--pgdata"]);
    cmd.arg(&occupied);
    let out = output(&mut cmd);
    assert!(
        !out.status.success() && stderr_of(&out).contains("not empty"),
        "restore into a non-empty directory should be refused\n{}",
        describe(&cmd, &out)
    );
    assert_eq!(
        list_dir(&occupied),
        vec![occupied.join("precious")],
        "the refused restore touched {}",
        occupied.display()
    );

    // The restore to the time between the backups really comes from the first one.
    let r = restore_started(
        &pitr,
        &dir,
        "between",
        &["--target-time", &time_between],
        "off",
    );
    assert_eq!(r.rows(), "1,2", "rows at the time between the backups");
    assert!(
        r.stderr.contains(&first) && !r.stderr.contains(&second),
        "the restore should name backup {first} only:\n{}",
        r.stderr
    );
}

/// A WAL segment missing from the middle of the archive is named before anything is written,
/// whether the target lies after the gap or there is none; a target before the gap is fine.
#[test]
fn restore_names_a_missing_wal_segment_before_writing_anything() {
    let dir = TestDir::new();
    let (pitr, pg) = source(&dir, &[]);
    take_backup(&pitr, &pg);
    // The archiver falls behind (as under load): everything below is archived only after the
    // target time, so a segment's archive time alone cannot tell whether it holds a commit
    // after the target (these hold none: the first one after the target lies beyond the gap).
    pg.psql("alter system set archive_command = ''");
    pg.psql("select pg_reload_conf()");
    // Four completed segments after the backup, one row in each.
    let mut segs = Vec::new();
    let mut lsn_in_first = String::new();
    for i in 1..=4 {
        insert(&pg, i);
        if i == 1 {
            lsn_in_first = pg.psql("select pg_current_wal_lsn()");
        }
        segs.push(pg.switch_wal());
    }
    insert(&pg, 5);
    let time_after = pg.psql(&format!(
        "{} from pg_sleep(0.02)",
        utc_text("clock_timestamp()")
    ));
    pg.psql("select pg_sleep(0.02)");
    insert(&pg, 6);
    let last = pg.switch_wal();
    pg.psql("alter system reset archive_command");
    pg.psql("select pg_reload_conf()");
    pg.wait_archived(&last, ARCHIVE_TIMEOUT);

    let missing = &segs[2];
    let ref_path = pitr.wal_ref_path(missing);
    fs::remove_file(&ref_path).unwrap_or_else(|e| panic!("remove {}: {e}", ref_path.display()));

    let absent = dir.path().join("d-absent");
    let empty = dir.mkdir("d-empty");
    for (pgdata, args) in [
        (&absent, vec![]),
        (&empty, vec![]),
        (&absent, vec!["--target-time", time_after.as_str()]),
        (&empty, vec!["--target-name", "nowhere"]),
        (&absent, vec!["--dry-run"]),
    ] {
        let err = restore_refused(&pitr, pgdata, &args);
        assert!(
            err.contains(missing.as_str()),
            "restore {args:?} should name the missing segment {missing}:\n{err}"
        );
    }
    // The gap lies after an LSN in the first segment: that restore can go ahead.
    let plan = dry_run(&pitr, &absent, &["--target-lsn", &lsn_in_first]);
    assert_eq!(plan["timeline"], 1, "plan: {plan}");
}

/// Restore, promote with archiving into the same repository (timeline 2), more work there;
/// then a restore from the timeline-1 backup to a time on timeline 2 follows the history file
/// and keeps the timeline-1 prefix and the timeline-2 work (and ends on timeline 3), while
/// `--target-timeline 1` still replays the original timeline.
#[test]
fn restore_follows_a_timeline_switch_archived_into_the_same_repository() {
    let dir = TestDir::new();
    let (pitr, mut pg) = source(&dir, &[]);
    let backup = take_backup(&pitr, &pg);
    insert(&pg, 1);
    let xid2 = insert(&pg, 2);
    insert(&pg, 3);
    switch_and_archive(&pg);
    pg.stop("fast"); // the original primary is gone

    // Restore to transaction 2, promote, archiving on: timeline 2, into the same repository.
    let place = Place::new(&dir, "tl2");
    let mut cmd = pitr.command(["restore", "--pgdata"]);
    cmd.arg(&place.pgdata)
        .args(["--target-xid", &xid2])
        .args(place.start_args("on"))
        .args(["--stop-after", "--json"]);
    let out = output(&mut cmd);
    if !out.status.success() {
        stop_server(&place.pgdata);
        panic!(
            "restore to timeline 2 failed\n{}\n--- recovery log ---\n{}",
            describe(&cmd, &out),
            tail(&place.pgdata.join("pitr-recovery.log"), 40)
        );
    }
    let json = parse_json(&cmd, &out);
    assert_eq!(json["recovery"]["timeline"], 2, "{json}");
    let conf = fs::read_to_string(place.pgdata.join("postgresql.conf")).expect("postgresql.conf");
    assert!(
        conf.contains(&pitr.archive_command()),
        "the restored postgresql.conf should archive into the same repository"
    );
    let tl2 = PgCluster::builder().start_existing(&place.pgdata);
    assert_eq!(
        tl2.psql("select string_agg(i::text, ',' order by i) from t"),
        "1,2"
    );
    insert(&tl2, 101);
    insert(&tl2, 102);
    let time_on_tl2 = tl2.psql(&format!(
        "{} from pg_sleep(0.02)",
        utc_text("clock_timestamp()")
    ));
    tl2.psql("select pg_sleep(0.02)");
    insert(&tl2, 103);
    let seg = switch_and_archive(&tl2);
    assert!(seg.starts_with("00000002"), "timeline 2 segment {seg}");
    let names = pitr.archived_names();
    assert!(
        names.iter().any(|n| n == "00000002.history") && names.contains(&seg),
        "the promoted server should have archived 00000002.history and {seg}: {names:?}"
    );

    // From the timeline-1 backup to a time on timeline 2.
    let nowhere = dir.path().join("d-plan");
    let plan = dry_run(&pitr, &nowhere, &["--target-time", &time_on_tl2]);
    assert_eq!(plan["backup"], backup.as_str(), "{plan}");
    assert_eq!(plan["timeline"], 2, "{plan}");
    assert_eq!(plan["timeline_path"], serde_json::json!([1, 2]), "{plan}");
    let r = restore_started(&pitr, &dir, "tl3", &["--target-time", &time_on_tl2], "off");
    assert_eq!(r.rows(), "1,2,101,102", "rows at a time on timeline 2");
    assert_eq!(r.recovery("timeline"), "3", "the report's new timeline");
    assert_eq!(
        r.wal_timeline(),
        3,
        "timeline the restored server writes on"
    );
    drop(r);

    // The original timeline is still there to restore.
    let r = restore_started(&pitr, &dir, "tl1", &["--target-timeline", "1"], "off");
    assert_eq!(r.rows(), "1,2,3", "rows at the end of timeline 1");
    drop(tl2);
}

/// Issue 19 #1: a side-by-side restore that archives into the production repository (the old
/// runbook's `--archive-mode preserve`) leaves a stray timeline 2 forking before the next
/// production backup. The default restore (dry run and real), `info`'s window and `verify`
/// still work on timeline 1, naming timeline 2; `check`'s probe warns until `expire
/// --retire-timeline 2` retires it. Fails on main: "timeline 2 forked … before backup … was
/// consistent".
#[test]
fn a_side_by_side_restore_that_archived_here_does_not_poison_later_restores() {
    let dir = TestDir::new();
    let (pitr, pg) = source(&dir, &[]);
    take_backup(&pitr, &pg);
    insert(&pg, 1);
    switch_and_archive(&pg);

    // The clone, archiving on into this repository: promoted onto timeline 2.
    let place = Place::new(&dir, "clone");
    let mut cmd = pitr.command(["restore", "--pgdata"]);
    cmd.arg(&place.pgdata)
        .args(place.start_args("on"))
        .args(["--stop-after", "--json"]);
    let out = output(&mut cmd);
    if !out.status.success() {
        stop_server(&place.pgdata);
        panic!(
            "the side-by-side restore failed\n{}\n--- recovery log ---\n{}",
            describe(&cmd, &out),
            tail(&place.pgdata.join("pitr-recovery.log"), 40)
        );
    }
    let json = parse_json(&cmd, &out);
    assert_eq!(json["archive_mode"], "preserve", "{json}");
    let clone = PgCluster::builder().start_existing(&place.pgdata);
    let seg = switch_and_archive(&clone);
    assert!(seg.starts_with("00000002"), "timeline 2 segment {seg}");
    drop(clone);
    assert!(
        pitr.archived_names()
            .iter()
            .any(|n| n == "00000002.history"),
        "the clone should have archived 00000002.history"
    );

    // Production goes on on timeline 1 and takes the next backup.
    insert(&pg, 2);
    let second = take_backup(&pitr, &pg);
    insert(&pg, 3);
    switch_and_archive(&pg);

    let nowhere = dir.path().join("d-plan");
    let plan = dry_run(&pitr, &nowhere, &[]);
    assert_eq!(plan["backup"], second.as_str(), "{plan}");
    assert_eq!(plan["timeline"], 1, "{plan}");
    assert_eq!(plan["stray_timelines"][0]["timeline"], 2, "{plan}");
    let info = pitr.info_json();
    assert!(
        !info["recoverable_to"].is_null()
            && info["recoverable"]
                .as_array()
                .is_some_and(|r| !r.is_empty()),
        "info's window should not drop: {info}"
    );
    let probe = |want: i32| {
        let mut cmd = pitr.command(["check", "--max-backup-age", "7d"]);
        let out = output(&mut cmd);
        assert_eq!(out.status.code(), Some(want), "{}", describe(&cmd, &out));
        stdout_of(&out)
    };
    // The first backup (before the fork) still reaches timeline 2: not a stray yet.
    probe(0);

    // The default restore follows timeline 1 to its end.
    let r = restore_started(&pitr, &dir, "after", &["--archive-mode", "off"], "off");
    assert_eq!(r.rows(), "1,2,3", "rows at the end of timeline 1");
    assert_eq!(r.json["archive_mode"], "off", "{}", r.json);
    assert!(
        r.stderr.contains("timeline 2 is passed over"),
        "restore should name the stray:\n{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("archive_mode off in the restored server"),
        "{}",
        r.stderr
    );
    drop(r);

    // verify --restore-test follows the same rule; asked for timeline 2 by number it is
    // refused, naming the fork.
    let mut cmd = pitr.command(["verify", "--restore-test"]);
    let out = output(&mut cmd);
    assert!(out.status.success(), "{}", describe(&cmd, &out));
    let mut cmd = pitr.command(["verify", "--restore-test", "--target-timeline", "2"]);
    let out = output(&mut cmd);
    assert!(
        !out.status.success() && describe(&cmd, &out).contains("timeline 2 forked"),
        "{}",
        describe(&cmd, &out)
    );

    // With the first backup expired no backup reaches timeline 2: verify warns (and passes),
    // check's probe says WARNING.
    let mut cmd = pitr.command(["expire", "--retain-full", "1"]);
    run(&mut cmd);
    assert!(pitr
        .archived_names()
        .iter()
        .any(|n| n == "00000002.history"));
    let mut cmd = pitr.command(["verify"]);
    let out = output(&mut cmd);
    assert!(
        out.status.success() && stdout_of(&out).contains("warning: archived timeline 2 is a stray"),
        "verify warns about timeline 2 and passes\n{}",
        describe(&cmd, &out)
    );
    assert!(probe(1).contains("timeline 2"));

    // Retired by name: the dry run shows it, then it goes and check is quiet.
    let mut cmd = pitr.command(["expire", "--retain-full", "1", "--retire-timeline", "2"]);
    cmd.arg("--dry-run");
    let out = run(&mut cmd);
    assert!(
        stdout_of(&out).contains("would remove stray timeline 2"),
        "{}",
        describe(&cmd, &out)
    );
    assert!(pitr
        .archived_names()
        .iter()
        .any(|n| n == "00000002.history"));
    let mut cmd = pitr.command(["expire", "--retain-full", "1", "--retire-timeline", "2"]);
    run(&mut cmd);
    assert!(
        !pitr
            .archived_names()
            .iter()
            .any(|n| n.starts_with("00000002")),
        "{:?}",
        pitr.archived_names()
    );
    probe(0);
}

/// `info`'s recoverable window and `restore` agree: both ends of the interval info prints are
/// targets restore accepts (the end one restored to with `--start`), a microsecond past the end
/// is refused, and with an archived segment deleted the window ends before the gap.
#[test]
fn info_window_ends_are_targets_restore_reaches() {
    let dir = TestDir::new();
    let (pitr, pg) = source(&dir, &[]);
    take_backup(&pitr, &pg);
    let mut segments = Vec::new();
    for i in 1..=3 {
        insert(&pg, i);
        segments.push(switch_and_archive(&pg));
    }
    let window = |what: &str| -> Vec<(String, String)> {
        let info = pitr.info_json();
        let ranges = info["recoverable"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: info --json has no recoverable list: {info}"));
        ranges
            .iter()
            .map(|r| {
                let end = |k: &str| r[k].as_str().expect("a time").to_string();
                (end("from"), end("to"))
            })
            .collect()
    };
    let micro_later = |t: &str| {
        let t: chrono::DateTime<chrono::Utc> = t.parse().expect("an RFC 3339 time");
        (t + chrono::Duration::microseconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    let whole = window("whole archive");
    assert_eq!(whole.len(), 1, "one unbroken interval: {whole:?}");
    let (from, to) = whole[0].clone();
    let pgdata = dir.path().join("d-window");
    for t in [&from, &to] {
        dry_run(&pitr, &pgdata, &["--target-time", t]);
    }
    let e = restore_refused(&pitr, &pgdata, &["--target-time", &micro_later(&to)]);
    assert!(
        e.contains("recoverable window") || e.contains("could not stop there"),
        "{e}"
    );
    restore_started(&pitr, &dir, "window-end", &["--target-time", &to], "off");

    // A hole after the first segment archived after the backup: the window ends before it.
    let hole = &segments[1];
    std::fs::remove_file(pitr.wal_ref_path(hole)).expect("remove a WAL ref");
    let holed = window("with a hole");
    assert_eq!(holed.len(), 1, "{holed:?}");
    let (_, holed_to) = holed[0].clone();
    let time = |t: &str| {
        t.parse::<chrono::DateTime<chrono::Utc>>()
            .expect("an RFC 3339 time")
    };
    assert!(
        time(&holed_to) < time(&to),
        "the window still ends at {holed_to} past the hole at {hole}"
    );
    dry_run(&pitr, &pgdata, &["--target-time", &holed_to]);
    restore_refused(&pitr, &pgdata, &["--target-time", &micro_later(&holed_to)]);
}

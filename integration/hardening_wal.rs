//! Issue 10's WAL side: restore-wal hands PostgreSQL only what NAME is (a swapped, emptied,
//! truncated or foreign ref, or a hole in an archived timeline, stops recovery instead of
//! ending it early), archive-wal refuses history files that would block the real ones
//! forever, the repository is private whatever the umask, `pitr init` is not run as root by
//! accident, and exit statuses come from the parsed subcommand.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use pitr_testkit::cmd::{describe, output, run, run_expect_code, stderr_of};
use pitr_testkit::dirs::{assert_same_bytes, list_dir};
use pitr_testkit::user::{chmod, give_to_pg, pg_user};
use pitr_testkit::wal::segment_name;
use pitr_testkit::{PgCluster, TestDir};

use crate::harness::{ArchiveTo, Pitr, ARCHIVE_TIMEOUT};

/// Three consecutive completed segments of one cluster, copied out of pg_wal.
fn three_segments(dir: &TestDir) -> Vec<(String, PathBuf)> {
    let pg = PgCluster::init();
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    let mut names = Vec::new();
    for _ in 0..3 {
        names.push(pg.switch_wal());
    }
    let copies = dir.mkdir("segments");
    names
        .into_iter()
        .map(|name| {
            let dest = copies.join(&name);
            fs::copy(pg.wal_path(&name), &dest)
                .unwrap_or_else(|e| panic!("copy {name} out of pg_wal: {e}"));
            chmod(&dest, 0o644);
            give_to_pg(&dest);
            (name, dest)
        })
        .collect()
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&read(path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// `pitr restore-wal name DEST` must stop recovery: exit above 125, no DEST, the message
/// naming NAME and `key`.
#[track_caller]
fn assert_restore_refused(pitr: &Pitr, name: &str, key: &str, dest: &Path, how: &str) {
    let mut cmd = pitr.restore_cmd(name, dest);
    let out = output(&mut cmd);
    assert!(
        out.status.code().is_some_and(|c| c > 125),
        "restore-wal of {how} must stop recovery (exit > 125)\n{}",
        describe(&cmd, &out)
    );
    assert!(!dest.exists(), "{how}: {} appeared", dest.display());
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains(name) && stderr.contains(key),
        "{how}: the error should name {name} and {key}\n{}",
        describe(&cmd, &out)
    );
}

/// Swapped, emptied, truncated and foreign WAL refs: each makes restore-wal exit above 125
/// without DEST, naming NAME and its ref; put back, the same command succeeds.
#[test]
fn restore_wal_refuses_refs_that_are_not_name() {
    let dir = TestDir::new();
    let segments = three_segments(&dir);
    let pitr = Pitr::init(&dir, "repo");
    for (name, path) in &segments {
        pitr.archive(path, name);
    }
    let (a, _) = &segments[0];
    let (b, b_path) = &segments[1];
    let b_ref = pitr.wal_ref_path(b);
    let key = format!("wal/{}/{b}.json", &b[..8]);
    let pristine = read(&b_ref);
    let original = json(&b_ref);
    let restored = dir.mkdir("restored");
    let dest = restored.join("RECOVERYXLOG");

    let mut renamed_a = json(&pitr.wal_ref_path(a));
    renamed_a["name"] = serde_json::json!(b);
    let mut emptied = original.clone();
    emptied["chunks"] = serde_json::json!([]);
    emptied["size"] = serde_json::json!(0);
    let mut truncated = original.clone();
    let first = original["chunks"][0].clone();
    truncated["size"] = first["len"].clone();
    truncated["chunks"] = serde_json::json!([first]);
    let mut short = original.clone();
    short["chunks"] = serde_json::json!([original["chunks"][0].clone()]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("A's ref under B's key", read(&pitr.wal_ref_path(a))),
        (
            "A's ref renamed to B",
            serde_json::to_vec(&renamed_a).unwrap(),
        ),
        ("an emptied ref", serde_json::to_vec(&emptied).unwrap()),
        ("a truncated ref", serde_json::to_vec(&truncated).unwrap()),
        (
            "a ref whose chunks fall short of its size",
            serde_json::to_vec(&short).unwrap(),
        ),
    ];
    for (how, body) in &cases {
        fs::write(&b_ref, body).expect("replace ref");
        assert_restore_refused(&pitr, b, &key, &dest, how);
        fs::write(&b_ref, &pristine).expect("put the ref back");
        let got = pitr.restore(b, &dest);
        assert_same_bytes(&format!("{b} after {how}"), &got, &read(b_path));
        fs::remove_file(&dest).expect("remove restored copy");
    }

    // The repository belongs to another system: its WAL is not this cluster's.
    let cluster = pitr.repo().join("cluster.json");
    let cluster_bytes = read(&cluster);
    let mut doc = json(&cluster);
    let ours: u64 = doc["system_identifier"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cluster.json: {doc}"));
    doc["system_identifier"] = serde_json::json!((ours ^ 1).to_string());
    fs::write(&cluster, serde_json::to_vec(&doc).unwrap()).expect("rewrite cluster.json");
    assert_restore_refused(&pitr, b, &key, &dest, "WAL of another system");
    fs::write(&cluster, &cluster_bytes).expect("put cluster.json back");
    pitr.restore(b, &dest);
}

/// The prefetch worker applies the same checks: a swapped ref never reaches the spool, and
/// the call for that segment still stops recovery. The good segment before it must reach the
/// spool first, so the worker is known to have run (and to have got as far as the swap).
#[test]
fn restore_wal_prefetch_never_spools_a_swapped_segment() {
    let dir = TestDir::new();
    let segments = three_segments(&dir);
    let pitr = Pitr::init(&dir, "repo");
    for (name, path) in &segments {
        pitr.archive(path, name);
    }
    let (a, _) = &segments[0];
    let (b, b_path) = &segments[1];
    let (c, _) = &segments[2];
    // C's ref holds B's chunks under C's name.
    let mut swapped = json(&pitr.wal_ref_path(b));
    swapped["name"] = serde_json::json!(c);
    fs::write(pitr.wal_ref_path(c), serde_json::to_vec(&swapped).unwrap()).expect("swap");

    let pg_wal = dir.mkdir("pg_wal");
    let dest = pg_wal.join("RECOVERYXLOG");
    pitr.restore(a, &dest);
    fs::remove_file(&dest).expect("remove restored copy");
    // The worker spools B (good) before it looks at C; then it is done once its lock is free.
    let spool = pg_wal.join("pitr-spool");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let worker_done = || {
        let f = fs::File::options().write(true).open(spool.join(".lock"));
        f.is_ok_and(|f| {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a descriptor we own.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
        })
    };
    while !(spool.join(b).exists() && worker_done()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the prefetch worker never spooled the good segment {b}: {:?}",
            list_dir(&spool)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        !spool.join(c).exists(),
        "the prefetch worker spooled a swapped {c}: {:?}",
        list_dir(&spool)
    );
    // B is served from the spool, byte for byte.
    let got = pitr.restore(b, &dest);
    assert_same_bytes(b, &got, &read(b_path));
    fs::remove_file(&dest).expect("remove restored copy");
    let key = format!("wal/{}/{c}.json", &c[..8]);
    assert_restore_refused(&pitr, c, &key, &dest, "a swapped ref (prefetch on)");
}

/// A ref missing in the middle of an archived timeline is a hole, not the end of the
/// archive: exit above 125. One past the last segment is still "not archived" (1).
#[test]
fn restore_wal_refuses_a_hole_in_an_archived_timeline() {
    let dir = TestDir::new();
    let segments = three_segments(&dir);
    let pitr = Pitr::init(&dir, "repo");
    for (name, path) in &segments {
        pitr.archive(path, name);
    }
    let (b, _) = &segments[1];
    let (c, _) = &segments[2];
    let restored = dir.mkdir("restored");
    let dest = restored.join("RECOVERYXLOG");
    let key = format!("wal/{}/{b}.json", &b[..8]);

    let b_ref = pitr.wal_ref_path(b);
    let pristine = read(&b_ref);
    fs::remove_file(&b_ref).expect("remove B's ref");
    assert_restore_refused(&pitr, b, &key, &dest, "a hole in the timeline");
    // A ref path that is not an object is no better.
    fs::create_dir(&b_ref).expect("directory in the ref's place");
    assert_restore_refused(&pitr, b, &key, &dest, "a directory in the ref's place");
    fs::remove_dir(&b_ref).expect("remove the directory");
    fs::write(&b_ref, &pristine).expect("put B's ref back");
    pitr.restore(b, &dest);
    fs::remove_file(&dest).expect("remove restored copy");

    let past_end = {
        let segno = pitr_testkit::wal::segno(c).expect("segment name");
        segment_name(1, segno + 1)
    };
    run_expect_code(&mut pitr.restore_cmd(&past_end, &dest), 1);
    assert!(!dest.exists());
}

/// An empty or malformed `.history` and a `.backup` that is not what its name says are
/// refused with 1 and nothing stored, so the real file can still be archived afterwards.
#[test]
fn archive_wal_refuses_bad_history_and_backup_files() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let files = dir.mkdir("files");
    let history = "00000002.history";
    let backup = "000000010000000000000002.00000028.backup";
    let good_backup = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
        STOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\n\
        CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
        START TIME: 2026-11-25 14:03:00 UTC\nLABEL: pitr-test\nSTART TIMELINE: 1\n\
        STOP TIME: 2026-11-25 14:03:01 UTC\nSTOP TIMELINE: 1\n";
    let cases: [(&str, &str, &str); 6] = [
        (history, "an empty history file", ""),
        (
            history,
            "a malformed history file",
            "this is not a history\n",
        ),
        (
            history,
            "a history file naming itself as parent",
            "2\t0/3000000\tno recovery target specified\n",
        ),
        (backup, "an empty backup history file", ""),
        (
            backup,
            "a backup history file of another location",
            "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\n",
        ),
        (
            backup,
            "a garbled backup history file",
            "LABEL: x\nSTART WAL LOCATION: 0/zz\n",
        ),
    ];
    for (name, how, content) in cases {
        let path = files.join(name);
        fs::write(&path, content).expect("write file");
        give_to_pg(&path);
        let mut cmd = pitr.archive_cmd(&path, name);
        let out = run_expect_code(&mut cmd, 1);
        assert!(
            stderr_of(&out).contains(name),
            "{how}: the error should name {name}\n{}",
            describe(&cmd, &out)
        );
        assert!(
            !pitr.archived_names().iter().any(|n| n == name),
            "{how} was stored"
        );
    }
    for (name, content) in [
        (history, "1\t0/3000000\tno recovery target specified\n"),
        (backup, good_backup),
    ] {
        let path = files.join(name);
        fs::write(&path, content).expect("write file");
        pitr.archive(&path, name);
        let got = pitr.restore(name, &dir.path().join(format!("restored-{name}")));
        assert_same_bytes(name, &got, content.as_bytes());
    }
}

/// Every directory and object of a repository built under umask 022 (init, archive-wal of
/// segments and a history file, a backup) is private to its owner.
#[test]
fn repository_is_private_whatever_the_umask() {
    let dir = TestDir::new();
    let pitr = Pitr::new(&dir, "repo");
    let with_umask = |mut cmd: Command| {
        // SAFETY: umask is async-signal-safe and touches nothing but the child's mask.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            });
        }
        cmd
    };
    run(&mut with_umask(pitr.command(["init"])));
    let pg = PgCluster::builder().archive_to(&pitr).init();
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    let last = pg.switch_wal();
    pg.wait_archived(&last, ARCHIVE_TIMEOUT);
    let files = dir.mkdir("files");
    let history = files.join("00000002.history");
    fs::write(&history, "1\t0/3000000\tno recovery target specified\n").expect("write");
    give_to_pg(&history);
    run(&mut with_umask(
        pitr.archive_cmd(&history, "00000002.history"),
    ));
    let mut backup = with_umask(pitr.backup_cmd(&pg, &["--checkpoint", "fast"]));
    let out = output(&mut backup);
    crate::harness::backup_id_of(&backup, &out, &pg);

    let mut open = Vec::new();
    let mut seen = 0;
    let mut stack = vec![pitr.repo().to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).expect("stat");
        seen += 1;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if meta.permissions().mode() & 0o777 != want {
            open.push(format!(
                "{} {:04o}",
                path.display(),
                meta.permissions().mode() & 0o777
            ));
        }
        if meta.is_dir() {
            stack.extend(list_dir(&path));
        }
    }
    assert!(seen > 10, "only {seen} entries in the repository");
    assert!(
        open.is_empty(),
        "directories must be 0700 and objects 0600; these are not:\n{}",
        open.join("\n")
    );
}

/// As root, `pitr init` of a local repository is refused unless `--allow-root`; nothing is
/// created. A user who cannot read the repository is told its owner and mode.
#[test]
fn init_as_root_needs_allow_root_and_permission_errors_name_the_owner() {
    if !pitr_testkit::require::root_or_skip("init_as_root_needs_allow_root") {
        return;
    }
    let dir = TestDir::new();
    let pitr = Pitr::new(&dir, "repo");
    let root_cmd = |args: &[&str]| {
        let mut cmd = Command::new(pitr.bin());
        cmd.env_remove("PITR_REPO")
            .env_remove("PITR_CONFIG")
            .arg("--repo")
            .arg(pitr.repo())
            .args(args);
        cmd
    };
    let mut cmd = root_cmd(&["init"]);
    let out = run_expect_code(&mut cmd, 1);
    assert!(
        stderr_of(&out).contains("--allow-root"),
        "the refusal should say how to override it\n{}",
        describe(&cmd, &out)
    );
    assert!(
        !pitr.repo().exists(),
        "a refused init created the repository"
    );
    run(&mut root_cmd(&["init", "--allow-root"]));
    assert!(pitr.repo().join("config.json").is_file());

    // A repository made by the PostgreSQL user, read by somebody else.
    let theirs = Pitr::init(&dir, "theirs");
    let owner = pg_user().expect("root runs PostgreSQL as postgres");
    let mut cmd = Command::new(theirs.bin());
    cmd.env_remove("PITR_REPO")
        .env_remove("PITR_CONFIG")
        .current_dir("/")
        .arg("--repo")
        .arg(theirs.repo())
        .arg("info")
        .uid(65534)
        .gid(65534);
    let out = run_expect_code(&mut cmd, 1);
    let stderr = stderr_of(&out);
    let owner_name = fs::metadata(theirs.repo()).expect("stat repo").uid();
    assert_eq!(owner_name, owner.uid);
    assert!(
        stderr.contains("owner postgres") && stderr.contains("permission denied"),
        "the error should name the owner and say permission denied\n{}",
        describe(&cmd, &out)
    );
}

/// Every path under `dir` with its owner, sorted.
fn owned_tree(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).expect("stat");
        all.push((path.clone(), meta.uid()));
        if meta.is_dir() {
            stack.extend(list_dir(&path));
        }
    }
    all.sort();
    all
}

/// As root, every command that writes refuses a local repository another user owns, naming
/// the owner, and writes nothing; with `--allow-root` it proceeds. Commands that only read
/// (and `expire --dry-run`) run as root as before.
#[test]
fn writing_as_root_to_someone_elses_repository_needs_allow_root() {
    if !pitr_testkit::require::root_or_skip("writing_as_root_needs_allow_root") {
        return;
    }
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let pg = PgCluster::init();
    let id = pitr.backup(&pg, &[]);
    let segment = pg.switch_wal();
    let wal = pg.wal_path(&segment).to_string_lossy().into_owned();
    let root_cmd = |args: &[&str]| {
        let mut cmd = Command::new(pitr.bin());
        cmd.env_remove("PITR_REPO")
            .env_remove("PITR_CONFIG")
            .arg("--repo")
            .arg(pitr.repo())
            .args(args);
        cmd
    };
    let connstr = pg.socket_connstr();
    let writers: Vec<Vec<&str>> = vec![
        vec!["pin", &id],
        vec!["archive-wal", &wal, &segment],
        vec!["backup", "-d", &connstr],
        // keeps the newest backup and the pinned one
        vec!["expire", "--retain-full", "1"],
    ];
    let before = owned_tree(pitr.repo());
    for args in &writers {
        let mut cmd = root_cmd(args);
        let out = run_expect_code(&mut cmd, 1);
        let stderr = stderr_of(&out);
        assert!(
            stderr.contains("owned by postgres") && stderr.contains("--allow-root"),
            "the refusal should name the owner and the override\n{}",
            describe(&cmd, &out)
        );
    }
    assert_eq!(
        owned_tree(pitr.repo()),
        before,
        "a refused command wrote to the repository"
    );
    // Reading as root is not writing.
    run(&mut root_cmd(&["list"]));
    run(&mut root_cmd(&[
        "expire",
        "--retain-full",
        "1",
        "--dry-run",
    ]));

    for args in &writers {
        let mut cmd = root_cmd(args);
        cmd.arg("--allow-root");
        run(&mut cmd);
    }
    // What root wrote belongs to root now: read it back as root.
    let out = run(&mut root_cmd(&["list", "--json"]));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("list --json");
    assert_eq!(listed.len(), 2, "backup --allow-root made a second backup");
    assert!(
        listed
            .iter()
            .any(|b| b["id"] == id.as_str() && b["pinned"] == true),
        "pin --allow-root pinned {id}: {listed:?}"
    );
}

/// The exit status of a refused command line comes from the subcommand clap parsed, not from
/// the word `restore-wal` anywhere in it.
#[test]
fn exit_status_comes_from_the_parsed_subcommand() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let mut cmd = pitr.command(["restore-wal", "--bogus-flag", "X", "Y"]);
    let out = output(&mut cmd);
    assert!(
        out.status.code().is_some_and(|c| c > 125),
        "restore-wal with a bad flag must stop recovery\n{}",
        describe(&cmd, &out)
    );
    // `restore-wal` as the repository's path: `list` fails (a relative URL) with 1.
    let mut cmd = pitr.bare_command();
    cmd.args(["--repo", "restore-wal", "list"]);
    run_expect_code(&mut cmd, 1);
    // `restore-wal` as an argument of another command: a usage error, 2.
    let mut cmd = pitr.command(["archive-wal", "restore-wal"]);
    run_expect_code(&mut cmd, 2);
}

/// A ref under a timeline-1 name whose segment's first page says timeline 2 (the segment of a
/// later timeline, put in its place) stops recovery: a page from a newer timeline is never the
/// older timeline's WAL.
#[test]
fn restore_wal_refuses_a_first_page_from_a_newer_timeline() {
    let dir = TestDir::new();
    let segments = three_segments(&dir);
    let pitr = Pitr::init(&dir, "repo");
    let (a, a_path) = &segments[0];
    pitr.archive(a_path, a);
    // The same segment as timeline 2 wrote it: xlp_tli (bytes 4..8 of the long page header).
    let mut bytes = read(a_path);
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let newer = format!("00000002{}", &a[8..]);
    let newer_path = dir.path().join("segments").join(&newer);
    fs::write(&newer_path, &bytes).expect("write the timeline-2 copy");
    give_to_pg(&newer_path);
    pitr.archive(&newer_path, &newer);
    // Its ref, under A's name.
    let mut moved = json(&pitr.wal_ref_path(&newer));
    moved["name"] = serde_json::json!(a);
    fs::write(pitr.wal_ref_path(a), serde_json::to_vec(&moved).unwrap()).expect("replace ref");

    let dest = dir.mkdir("pg_wal").join("RECOVERYXLOG");
    let key = format!("wal/00000001/{a}.json");
    assert_restore_refused(&pitr, a, &key, &dest, "a first page from timeline 2");
    let out = output(&mut pitr.restore_cmd(a, &dest));
    assert!(
        stderr_of(&out).contains("from timeline 2")
            || stderr_of(&out).contains("timeline 2, not 1"),
        "the error should say which timeline the page is from\n{}",
        stderr_of(&out)
    );
}

/// A history file's ref swapped for a later timeline's history (whose last switch is from
/// the timeline itself) stops recovery: it is not this timeline's history.
#[test]
fn restore_wal_refuses_a_tampered_history_file() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let files = dir.mkdir("history");
    let write = |name: &str, text: &str| {
        let p = files.join(name);
        fs::write(&p, text).expect("write a history file");
        chmod(&p, 0o644);
        give_to_pg(&p);
        pitr.archive(&p, name);
    };
    write(
        "00000002.history",
        "1\t0/3000000\tno recovery target specified\n",
    );
    write(
        "00000003.history",
        "1\t0/3000000\tno recovery target specified\n2\t0/5000000\tno recovery target specified\n",
    );
    let dest = dir.mkdir("pg_wal").join("RECOVERYHISTORY");
    // Intact, it restores.
    pitr.restore("00000002.history", &dest);
    fs::remove_file(&dest).expect("remove the restored history");
    // Timeline 3's history under timeline 2's name.
    let mut swapped = json(&pitr.wal_ref_path("00000003.history"));
    swapped["name"] = serde_json::json!("00000002.history");
    fs::write(
        pitr.wal_ref_path("00000002.history"),
        serde_json::to_vec(&swapped).unwrap(),
    )
    .expect("swap the history refs");
    assert_restore_refused(
        &pitr,
        "00000002.history",
        "wal/00000002/00000002.history.json",
        &dest,
        "timeline 3's history as timeline 2's",
    );
}

/// Issue 19 #9: what the arguments ask for that cannot be — a time that does not parse,
/// conflicting targets, a malformed `--tablespace-map` — exits 2 like clap's usage errors,
/// before any repository is opened (none exists here).
#[test]
fn restore_usage_errors_exit_2() {
    let dir = TestDir::new();
    let pitr = Pitr::new(&dir, "no-repo");
    let pgdata = dir.path().join("restored");
    for (args, says) in [
        (&["--target-time", "yesterday-ish"][..], "--target-time"),
        (&["--target-lsn", "0/1", "--target-xid", "5"], "at most one"),
        (&["--tablespace-map", "16400"], "OID=DIR"),
        (&["--target-timeline", "sideways"], "--target-timeline"),
    ] {
        let mut cmd = pitr.command(["restore", "--pgdata"]);
        cmd.arg(&pgdata).args(args);
        let out = output(&mut cmd);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: a usage error exits 2\n{}",
            describe(&cmd, &out)
        );
        assert!(
            stderr_of(&out).contains(says),
            "{args:?}: the error should say {says:?}\n{}",
            describe(&cmd, &out)
        );
        assert!(!pgdata.exists(), "{args:?}: something was created");
    }
}

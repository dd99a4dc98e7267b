//! Issue 17 #1: logging and result output can never change an exit status. stderr may be
//! `/dev/full`, a full log filesystem or a closed pipe; stdout may be a pipe whose reader left
//! (`pitr list | head`). restore-wal must still exit 1 only for "not archived" and 255 for
//! every other failure (PostgreSQL reads 101 as "not archived" and promotes early), and no
//! command may panic.

use std::fs::{self, File, OpenOptions};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Output, Stdio};

use pitr_testkit::cmd::{describe, output, stderr_of};
use pitr_testkit::user::{chmod, give_to_pg};
use pitr_testkit::{PgCluster, TestDir};

use crate::harness::Pitr;

/// The ways stderr or stdout can refuse to be written.
#[derive(Clone, Copy, Debug)]
enum Broken {
    /// `/dev/full`: every write fails with ENOSPC.
    Full,
    /// A pipe whose read end is closed: every write fails with EPIPE.
    ClosedPipe,
}

const BROKEN: [Broken; 2] = [Broken::Full, Broken::ClosedPipe];

fn broken(how: Broken) -> Stdio {
    match how {
        Broken::Full => {
            let f: File = OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .expect("open /dev/full");
            Stdio::from(f)
        }
        Broken::ClosedPipe => {
            let mut fds = [0; 2];
            // SAFETY: fds is a valid array of two ints for pipe(2) to fill.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe(2)");
            // SAFETY: both descriptors were just returned by pipe(2) and are owned here.
            let (read, write) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            drop(read);
            Stdio::from(write)
        }
    }
}

/// Runs `cmd` with stderr broken `how` (stdout captured).
fn with_broken_stderr(mut cmd: Command, how: Broken) -> (Command, Output) {
    cmd.stderr(broken(how));
    let out = output(&mut cmd);
    (cmd, out)
}

#[track_caller]
fn assert_code(cmd: &Command, out: &Output, want: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(want),
        "{what}: exit status must be {want} whatever stderr does\n{}",
        describe(cmd, out)
    );
}

/// One real segment archived into a fresh repository.
fn archived_segment(dir: &TestDir) -> (Pitr, String) {
    let pitr = Pitr::init(dir, "repo");
    let pg = PgCluster::init();
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i");
    let name = pg.switch_wal();
    let copy = dir.path().join(&name);
    fs::copy(pg.wal_path(&name), &copy).expect("copy the segment out of pg_wal");
    chmod(&copy, 0o644);
    give_to_pg(&copy);
    pitr.archive(&copy, &name);
    (pitr, name)
}

#[test]
fn restore_wal_status_does_not_depend_on_stderr() {
    let dir = TestDir::new();
    let (pitr, name) = archived_segment(&dir);
    let dest_dir = dir.mkdir("pg_wal");
    let dest = dest_dir.join("RECOVERYXLOG");
    for how in BROKEN {
        // Served: 0.
        let (cmd, out) = with_broken_stderr(pitr.restore_cmd(&name, &dest), how);
        assert_code(
            &cmd,
            &out,
            0,
            &format!("restore-wal of an archived segment, {how:?}"),
        );
        fs::remove_file(&dest).expect("remove the restored segment");
        // Not in the archive: 1, the one status that ends recovery.
        let missing = "0000000100000000000000F0";
        let (cmd, out) = with_broken_stderr(pitr.restore_cmd(missing, &dest), how);
        assert_code(
            &cmd,
            &out,
            1,
            &format!("restore-wal of an unarchived segment, {how:?}"),
        );
        // An unreachable repository: 255.
        let mut unreachable = pitr.bare_command();
        unreachable
            .args(["--repo", "/nonexistent/pitr-repo", "restore-wal", &name])
            .arg(&dest);
        let (cmd, out) = with_broken_stderr(unreachable, how);
        assert_code(
            &cmd,
            &out,
            255,
            &format!("restore-wal from no repository, {how:?}"),
        );
        assert!(!dest.exists(), "{how:?}: nothing may appear at DEST");
    }
    // A damaged archive: every chunk of the segment's ref gone. 255.
    let mut ids: Vec<String> = pitr
        .wal_ref_chunks(&name)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    ids.dedup();
    for id in ids {
        fs::remove_file(pitr.chunk_path(&id)).expect("remove a chunk");
    }
    for how in BROKEN {
        let (cmd, out) = with_broken_stderr(pitr.restore_cmd(&name, &dest), how);
        assert_code(
            &cmd,
            &out,
            255,
            &format!("restore-wal of a damaged segment, {how:?}"),
        );
        assert!(!dest.exists(), "{how:?}: nothing may appear at DEST");
    }
}

#[test]
fn archive_wal_failures_stay_failures_whatever_stderr_does() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let missing = dir.path().join("000000010000000000000001");
    for how in BROKEN {
        let (cmd, out) =
            with_broken_stderr(pitr.archive_cmd(&missing, "000000010000000000000001"), how);
        assert_code(
            &cmd,
            &out,
            1,
            &format!("archive-wal of a missing file, {how:?}"),
        );
    }
}

/// `pitr info | head` and `pitr list --json > /full/disk`: one line naming stdout, exit 1, no
/// panic.
#[test]
fn result_output_that_cannot_be_written_is_an_error_not_a_panic() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    for args in [&["info"][..], &["list", "--json"], &["info", "--json"]] {
        for how in BROKEN {
            let mut cmd = pitr.command(args);
            cmd.stdout(broken(how));
            let out = output(&mut cmd);
            let err = stderr_of(&out);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{args:?} {how:?}\n{}",
                describe(&cmd, &out)
            );
            assert!(
                err.contains("cannot write the result to stdout"),
                "{args:?} {how:?}: the error must name stdout\n{err}"
            );
            assert!(
                !err.contains("panicked"),
                "{args:?} {how:?}: panicked\n{err}"
            );
        }
    }
}

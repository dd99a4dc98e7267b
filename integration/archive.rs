//! archive-wal and restore-wal against real servers: PostgreSQL's own archiver runs
//! `pitr archive-wal`, every archived file must come back byte for byte, and every way of
//! breaking things (conflicting content, a foreign cluster, corruption, SIGKILL) must end in
//! the exit status PostgreSQL needs and nothing lost.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use pitr_testkit::cmd::{describe, output, run_expect_code, spawn, status_text, stderr_of};
use pitr_testkit::dirs::{assert_same_bytes, list_dir};
use pitr_testkit::user::{chmod, give_to_pg, mkdir_for_pg};
use pitr_testkit::wal::{segment_name, segno};
use pitr_testkit::{PgCluster, TestDir};

use crate::harness::{chunks_of_ref, ArchiveTo, Pitr, ARCHIVE_TIMEOUT};

/// Completed WAL segments with real content (pgbench data), copied out of a scratch cluster
/// that is gone once this returns. All come from one cluster, so one system identifier.
fn segment_copies(dir: &TestDir, scale: &str) -> Vec<(String, PathBuf)> {
    let pg = PgCluster::init();
    pg.pgbench(&["-i", "-q", "-s", scale]);
    let last = pg.switch_wal();
    let copies = dir.mkdir("segments");
    let mut segments = Vec::new();
    for seg in 1..=segno(&last).expect("segment name") {
        let name = segment_name(1, seg);
        let dest = copies.join(&name);
        match fs::copy(pg.wal_path(&name), &dest) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => continue, // removed at a checkpoint
            Err(e) => panic!("copy {name} out of pg_wal: {e}"),
        }
        chmod(&dest, 0o644);
        give_to_pg(&dest);
        segments.push((name, dest));
    }
    assert!(
        segments.len() >= 2,
        "expected at least 2 completed segments, got {segments:?}"
    );
    segments
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A failed restore-wal leaves nothing in the destination directory: neither DEST nor a
/// temporary file beside it (files named `prefix*`).
#[track_caller]
fn assert_no_leftovers(dir: &Path, prefix: &str, what: &str) {
    let left: Vec<PathBuf> = list_dir(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    assert!(left.is_empty(), "{what} failed but left {left:?}");
}

/// Every WAL reference in the repository parses and names only chunks that exist.
#[track_caller]
fn assert_refs_name_existing_chunks(pitr: &Pitr, context: &str) {
    for path in pitr.wal_refs() {
        for (id, _) in chunks_of_ref(&path) {
            assert!(
                pitr.chunk_path(&id).is_file(),
                "{context}: {} names chunk {id}, which is not stored at {}",
                path.display(),
                pitr.chunk_path(&id).display()
            );
        }
    }
}

/// PostgreSQL's archiver runs `pitr archive-wal` through pgbench load and WAL switches:
/// no failure, every segment archived, each one restored byte-identical to pg_wal's copy.
#[test]
fn archiver_stores_every_segment_and_restore_returns_identical_bytes() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    // wal_keep_size keeps the segments in pg_wal, so each archived one can be compared.
    let pg = PgCluster::builder()
        .archive_to(&pitr)
        .conf("wal_keep_size = '1GB'")
        .init();
    pg.pgbench(&["-i", "-q", "-s", "5"]);
    pg.pgbench(&["-c", "2", "-j", "2", "-T", "3"]);
    let mut last = String::new();
    for _ in 0..3 {
        last = pg.switch_wal();
    }
    pg.wait_archived(&last, ARCHIVE_TIMEOUT);

    let (archived_count, failed_count, last_archived) = pg.archiver_stats();
    assert_eq!(failed_count, 0, "pg_stat_archiver.failed_count");
    assert_eq!(last_archived, last, "pg_stat_archiver.last_archived_wal");

    // Exactly the segments from the first one to the last switched one.
    let names = pitr.archived_names();
    let expected: Vec<String> = (1..=segno(&last).expect("segment name"))
        .map(|seg| segment_name(1, seg))
        .collect();
    assert_eq!(names, expected, "WAL files in the repository");
    assert_eq!(archived_count as usize, names.len(), "archived_count");

    let restored = dir.mkdir("restored");
    let mut compared = 0;
    for name in &names {
        let original = match fs::read(pg.wal_path(name)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => panic!("read pg_wal/{name}: {e}"),
        };
        let dest = restored.join(name);
        let got = pitr.restore(name, &dest);
        assert_same_bytes(&format!("restore-wal {name}"), &got, &original);
        fs::remove_file(&dest).expect("remove restored copy");
        compared += 1;
    }
    assert!(
        compared >= 5,
        "only {compared} of {} archived segments were still in pg_wal to compare",
        names.len()
    );
    assert_refs_name_existing_chunks(&pitr, "after archiving");
}

/// Re-archiving identical content succeeds; different content under an archived name, or a
/// segment from another cluster, is refused with 1 and the archive keeps the original.
#[test]
fn archive_wal_refuses_other_content_and_other_clusters() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    // `pitr init` again with the same settings is fine.
    pitr.run(["init"]);
    let pg = PgCluster::builder().archive_to(&pitr).init();
    pg.psql("create table t as select generate_series(1, 100000) as i");
    let seg = pg.switch_wal();
    pg.wait_archived(&seg, ARCHIVE_TIMEOUT);
    let original = read(&pg.wal_path(&seg));

    // Identical content again, with %p relative to the data directory as PostgreSQL passes it.
    let mut again = pitr.archive_cmd(Path::new(&format!("pg_wal/{seg}")), &seg);
    again.current_dir(pg.data_dir());
    run_expect_code(&mut again, 0);
    // ... and from a copy (another inode, other timestamps), so the content itself is compared.
    let copy = dir.mkdir("copy").join(&seg);
    fs::write(&copy, &original).expect("write copy of segment");
    run_expect_code(&mut pitr.archive_cmd(&copy, &seg), 0);

    // Same name, one byte different.
    let mut forged = original.clone();
    forged[3 * 8192 + 100] ^= 0xff;
    let forged_path = dir.mkdir("forged").join(&seg);
    fs::write(&forged_path, &forged).expect("write forged segment");
    let out = run_expect_code(&mut pitr.archive_cmd(&forged_path, &seg), 1);
    assert!(
        stderr_of(&out).contains(&seg),
        "the refusal should name {seg}\n{}",
        describe(&pitr.archive_cmd(&forged_path, &seg), &out)
    );
    let got = pitr.restore(&seg, &dir.mkdir("restored").join(&seg));
    assert_same_bytes(
        &format!("{seg} after a conflicting archive-wal"),
        &got,
        &original,
    );

    // A segment from another cluster, under a name this repository has not seen.
    // Its archiver points at our repository too, as after a careless copy of postgresql.conf.
    let names_before = pitr.archived_names();
    let other = PgCluster::builder().archive_to(&pitr).init();
    let newest = pitr.archived_names().pop().expect("something archived");
    let mut foreign = other.switch_wal();
    for _ in 0..20 {
        if foreign > newest {
            break;
        }
        foreign = other.switch_wal();
    }
    assert!(
        foreign > newest,
        "could not get past {newest} in the other cluster"
    );
    let mut cmd = pitr.archive_cmd(&other.wal_path(&foreign), &foreign);
    let out = run_expect_code(&mut cmd, 1);
    assert!(
        !stderr_of(&out).trim().is_empty(),
        "refusing a foreign segment should say why\n{}",
        describe(&cmd, &out)
    );
    let dest = dir.path().join("restored").join(&foreign);
    run_expect_code(&mut pitr.restore_cmd(&foreign, &dest), 1);
    assert!(
        !dest.exists(),
        "{} exists after a refused archive",
        dest.display()
    );

    // Failures PostgreSQL should simply retry: 1..=125, never above (that restarts the
    // archiver), and the error names what is missing.
    let missing_file = dir.path().join("no-such-file");
    let no_repo = Pitr::new(&dir, "no-such-repo");
    let cases = [
        (
            pitr.archive_cmd(&missing_file, &foreign),
            missing_file.clone(),
        ),
        (
            no_repo.archive_cmd(&pg.wal_path(&seg), &seg),
            no_repo.repo().to_owned(),
        ),
    ];
    for (mut cmd, named) in cases {
        let out = output(&mut cmd);
        assert!(
            out.status.code().is_some_and(|c| (1..=125).contains(&c)),
            "archive-wal should fail with a status in 1..=125\n{}",
            describe(&cmd, &out)
        );
        assert!(
            stderr_of(&out).contains(&named.display().to_string()),
            "the error should name {}\n{}",
            named.display(),
            describe(&cmd, &out)
        );
    }

    // The other cluster's own archiver is refused as well, and nothing of it gets in.
    let refused = other.wait_archive_failure(ARCHIVE_TIMEOUT);
    let (archived, _, _) = other.archiver_stats();
    assert_eq!(
        archived, 0,
        "the other cluster archived something; refused: {refused}"
    );
    assert_eq!(
        pitr.archived_names(),
        names_before,
        "WAL files in the repository"
    );
    assert_refs_name_existing_chunks(&pitr, "after the refusals");
}

/// The server archives `.backup` files itself; `.history` and `.partial` files (which a
/// promotion produces) are accepted too, and all come back byte-identical.
#[test]
fn archive_wal_accepts_backup_history_and_partial_files() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let pg = PgCluster::builder().archive_to(&pitr).init();
    pg.psql("create table t as select generate_series(1, 1000) as i");
    // pg_backup_stop(true) waits until the backup's WAL and its .backup file are archived.
    pg.psql("select pg_backup_start('pitr-test', true); select lsn from pg_backup_stop(true)");
    pg.wait_archived(&pg.switch_wal(), ARCHIVE_TIMEOUT);
    let backups: Vec<String> = pitr
        .archived_names()
        .into_iter()
        .filter(|n| n.ends_with(".backup"))
        .collect();
    assert_eq!(backups.len(), 1, "archived .backup files: {backups:?}");
    let restored = dir.mkdir("restored");
    let backup = &backups[0];
    let got = pitr.restore(backup, &restored.join(backup));
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("LABEL: pitr-test") && text.contains("STOP WAL LOCATION"),
        "restored {backup} is not the backup history file:\n{text}"
    );
    if let Ok(original) = fs::read(pg.wal_path(backup)) {
        assert_same_bytes(backup, &got, &original);
    }

    // A timeline history file, as a promotion writes it.
    let history = "00000002.history";
    let content = b"1\t0/3000000\tno recovery target specified\n";
    let history_path = dir.mkdir("files").join(history);
    fs::write(&history_path, content).expect("write history file");
    pitr.archive(&history_path, history);
    pitr.archive(&history_path, history); // identical again: still 0
    let got = pitr.restore(history, &restored.join(history));
    assert_same_bytes(history, &got, content);

    // The in-progress segment under its .partial name, as a promoted primary archives it.
    let current = pg.current_segment();
    let partial = format!("{current}.partial");
    let partial_path = dir.path().join("files").join(&partial);
    fs::copy(pg.wal_path(&current), &partial_path).expect("copy the current segment");
    chmod(&partial_path, 0o644);
    let original = read(&partial_path);
    pitr.archive(&partial_path, &partial);
    let got = pitr.restore(&partial, &restored.join(&partial));
    assert_same_bytes(&partial, &got, &original);

    let names = pitr.archived_names();
    for name in [history, partial.as_str()] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} not listed in {names:?}"
        );
    }
}

/// restore-wal: a name not in the archive exits 1 and writes nothing; a corrupt chunk exits
/// above 125 naming the chunk; an unwritable destination fails naming the path.
#[test]
fn restore_wal_reports_missing_corrupt_and_unwritable() {
    let dir = TestDir::new();
    let segments = segment_copies(&dir, "2");
    let pitr = Pitr::init(&dir, "repo");
    for (name, path) in &segments {
        pitr.archive(path, name);
    }
    let restored = dir.mkdir("restored");

    // Not in the archive: 1 (PostgreSQL's "end of archive"), no DEST.
    for missing in ["0000000100000000000000AA", "00000007.history"] {
        let dest = restored.join("RECOVERYXLOG");
        run_expect_code(&mut pitr.restore_cmd(missing, &dest), 1);
        assert_no_leftovers(&restored, "RECOVERYXLOG", &format!("restore-wal {missing}"));
    }

    // Global options after the subcommand, and the repository from PITR_REPO.
    let (name, path) = &segments[0];
    let original = read(path);
    let dest = restored.join("after");
    let mut cmd = pitr.bare_command();
    cmd.arg("restore-wal")
        .arg(name)
        .arg(&dest)
        .arg("--repo")
        .arg(pitr.repo());
    run_expect_code(&mut cmd, 0);
    assert_same_bytes("restore-wal with --repo last", &read(&dest), &original);
    let dest = restored.join("env");
    let mut cmd = pitr.bare_command();
    cmd.env("PITR_REPO", pitr.repo())
        .arg("restore-wal")
        .arg(name)
        .arg(&dest);
    run_expect_code(&mut cmd, 0);
    assert_same_bytes("restore-wal with PITR_REPO", &read(&dest), &original);

    // Corrupt the biggest chunk of the first segment, two ways: a flipped byte in the
    // compressed body, and another chunk's (valid) object put in its place.
    let chunks = pitr.wal_ref_chunks(name);
    let (victim, _) = chunks
        .iter()
        .max_by_key(|(_, len)| *len)
        .cloned()
        .expect("the segment has chunks");
    let victim_path = pitr.chunk_path(&victim);
    let pristine = read(&victim_path);
    assert!(
        pristine.len() > 17,
        "chunk {victim} is only {} bytes",
        pristine.len()
    );
    let mut flipped = pristine.clone();
    let mid = 16 + (flipped.len() - 16) / 2;
    flipped[mid] ^= 0x55;
    let (other_id, other_path) = pitr
        .chunk_files()
        .into_iter()
        .find(|(id, _)| *id != victim)
        .expect("a second chunk in the repository");
    let swapped = read(&other_path);
    let mode = fs::metadata(&victim_path)
        .expect("stat chunk")
        .permissions();
    let corruptions = [
        ("a flipped byte".to_owned(), Some(flipped)),
        (format!("chunk {other_id} in its place"), Some(swapped)),
        (
            "truncated to its header".to_owned(),
            Some(pristine[..16].to_vec()),
        ),
        ("deleted".to_owned(), None),
    ];
    for (how, bytes) in &corruptions {
        chmod(&victim_path, 0o644);
        match bytes {
            Some(bytes) => fs::write(&victim_path, bytes).expect("corrupt chunk"),
            None => fs::remove_file(&victim_path).expect("delete chunk"),
        }
        let dest = restored.join("RECOVERYXLOG");
        let mut cmd = pitr.restore_cmd(name, &dest);
        let out = output(&mut cmd);
        let status = out.status.code();
        assert!(
            status.is_some_and(|c| c > 125),
            "a corrupt chunk ({how}) must stop recovery: exit status above 125, got {}\n{}",
            status_text(out.status),
            describe(&cmd, &out)
        );
        assert!(
            stderr_of(&out).contains(&victim),
            "the error ({how}) should name chunk {victim}\n{}",
            describe(&cmd, &out)
        );
        assert_no_leftovers(&restored, "RECOVERYXLOG", &format!("restore-wal ({how})"));
        // Put the chunk back: the same command now succeeds, so the failure was the corruption.
        fs::write(&victim_path, &pristine).expect("repair chunk");
        fs::set_permissions(&victim_path, mode.clone()).expect("restore chunk mode");
        // Objects are 0600: a chunk re-created by root must be the repository owner's again.
        give_to_pg(&victim_path);
        let got = pitr.restore(name, &dest);
        assert_same_bytes("restore-wal after repair", &got, &original);
        fs::remove_file(&dest).expect("remove restored copy");
    }

    // No repository at all (an unmounted backup volume, say) is not "end of archive" either.
    let absent = dir.path().join("no-such-repo");
    let dest = restored.join("RECOVERYXLOG");
    let mut cmd = Pitr::new(&dir, "no-such-repo").restore_cmd(name, &dest);
    let out = output(&mut cmd);
    assert!(
        out.status.code().is_some_and(|c| c > 125),
        "restore-wal from a missing repository must stop recovery (exit > 125)\n{}",
        describe(&cmd, &out)
    );
    assert!(
        stderr_of(&out).contains(&absent.display().to_string()),
        "the error should name {}\n{}",
        absent.display(),
        describe(&cmd, &out)
    );
    assert_no_leftovers(
        &restored,
        "RECOVERYXLOG",
        "restore-wal from a missing repository",
    );

    // A destination directory nobody (but root, which pitr is not here) may write to.
    let read_only = dir.mkdir("read-only");
    chmod(&read_only, 0o555);
    let dest = read_only.join("RECOVERYXLOG");
    let mut cmd = pitr.restore_cmd(name, &dest);
    let out = output(&mut cmd);
    chmod(&read_only, 0o755);
    assert!(
        !out.status.success(),
        "restore-wal into read-only {} succeeded\n{}",
        read_only.display(),
        describe(&cmd, &out)
    );
    assert!(
        stderr_of(&out).contains(&read_only.display().to_string()),
        "the error should name {}\n{}",
        read_only.display(),
        describe(&cmd, &out)
    );
    // Any status from 1 to 125 tells PostgreSQL "not archived" and it promotes early: an I/O
    // error must stop recovery (above 125).
    assert!(
        out.status.code().is_some_and(|c| c > 125),
        "an unwritable destination must stop recovery (exit > 125), not look like a missing file\n{}",
        describe(&cmd, &out)
    );
    assert!(!dest.exists());
}

/// SIGKILL at points spread over an archive-wal run never leaves a reference to a missing
/// chunk, and the retry PostgreSQL would make succeeds with identical content.
#[test]
fn archive_wal_killed_at_any_point_leaves_a_consistent_repository() {
    let dir = TestDir::new();
    let segments = segment_copies(&dir, "3");
    // A full segment of pgbench data, not a mostly-empty switched one.
    let (name, path) = &segments[segments.len() / 2];
    let original = read(path);

    // How long one run takes, so the kills land throughout it.
    let probe = Pitr::init(&dir, "probe");
    let started = Instant::now();
    probe.archive(path, name);
    let duration = started.elapsed();

    // Eight kills spread over the probe's time, then (on a loaded machine a run may be much
    // slower or faster than the probe) kills placed by bisection between the latest that
    // landed before any work and the earliest that found it done, until one left it part-done.
    const KILLS: u32 = 8;
    const MORE: u32 = 16;
    let mut killed_midway = 0;
    let (mut before_work, mut done) = (Duration::ZERO, duration * 2);
    let mut i = 0;
    while i < KILLS || (killed_midway == 0 && i < KILLS + MORE) {
        let delay = if i < KILLS {
            duration * i / KILLS
        } else {
            (before_work + done) / 2
        };
        let pitr = Pitr::init(&dir, &format!("repo{i}"));
        let mut cmd = pitr.archive_cmd(path, name);
        let mut child = spawn(cmd.stdout(Stdio::null()).stderr(Stdio::null()));
        std::thread::sleep(delay); // kill timing, not a readiness check
        let _ = child.kill(); // SIGKILL; fails only if it already exited
        let status = child.wait().expect("wait for pitr");
        let stored = !pitr.chunk_files().is_empty();
        let referenced = !pitr.archived_names().is_empty();
        if status.code().is_none() && stored && !referenced {
            // Killed while working, not before it began: chunks stored, no ref yet.
            killed_midway += 1;
        } else if !stored {
            before_work = before_work.max(delay);
        } else {
            done = done.min(delay);
        }
        if before_work >= done {
            done = before_work + duration;
        }
        if status.code().is_some() {
            assert!(
                status.success(),
                "archive-wal (not killed, {delay:?}) failed: {}",
                status_text(status)
            );
        }
        let context = format!("after SIGKILL at {delay:?} ({})", status_text(status));
        assert_refs_name_existing_chunks(&pitr, &context);

        // PostgreSQL retries the same command.
        run_expect_code(&mut pitr.archive_cmd(path, name), 0);
        let dest = dir.path().join(format!("restored{i}"));
        mkdir_for_pg(&dest);
        let got = pitr.restore(name, &dest.join(name));
        assert_same_bytes(&format!("{name} retried {context}"), &got, &original);
        assert_refs_name_existing_chunks(&pitr, &format!("{context}, then retried"));
        i += 1;
    }
    eprintln!("archive-wal takes {duration:?}; {killed_midway} of {i} kills left it part-done");
    assert!(
        killed_midway >= 1,
        "no kill left a part-done archive-wal (chunks stored, no ref), so the retry was never \
         tested against one (a run takes {duration:?})"
    );
}

/// `info --json` reports the archived range as pg_stat_archiver saw it, without gaps.
#[test]
fn info_reports_archived_wal() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let pg = PgCluster::builder().archive_to(&pitr).init();
    let mut last = String::new();
    for _ in 0..3 {
        last = pg.switch_wal();
    }
    pg.wait_archived(&last, ARCHIVE_TIMEOUT);
    let (_, _, last_archived) = pg.archiver_stats();

    let info = pitr.info_json();
    let wal = &info["wal"];
    let timelines = wal["timelines"].as_array().unwrap_or_else(|| {
        panic!("info --json has no wal.timelines array: {info:#}");
    });
    assert_eq!(timelines.len(), 1, "timelines: {info:#}");
    let tl = &timelines[0];
    assert_eq!(tl["timeline"], 1, "{info:#}");
    assert_eq!(tl["first"], "000000010000000000000001", "{info:#}");
    assert_eq!(tl["last"], last_archived.as_str(), "{info:#}");
    assert_eq!(
        tl["segments"],
        segno(&last).expect("segment name"),
        "{info:#}"
    );
    assert_eq!(tl["gaps"], serde_json::json!([]), "{info:#}");
    assert_eq!(
        wal["last_archived"],
        last_archived.as_str(),
        "wal.last_archived should be the newest WAL file archived, as pg_stat_archiver \
         reports it, whatever order the files were stored in: {info:#}"
    );
    assert!(wal["last_archived_at"].is_string(), "{info:#}");
    let raw = wal["raw_bytes"].as_u64().unwrap_or(0);
    assert!(raw >= 3 * 16 * 1024 * 1024, "raw_bytes {raw}: {info:#}");
    let stored = wal["stored_bytes"].as_u64().unwrap_or(u64::MAX);
    assert!(
        stored < raw,
        "stored_bytes {stored} vs raw_bytes {raw}: {info:#}"
    );
}

/// `init` is idempotent with the same settings and refuses different ones, leaving the
/// repository as it was.
#[test]
fn init_is_idempotent_and_refuses_other_settings() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let config = pitr.repo().join("config.json");
    let before = read(&config);
    pitr.run(["init"]);
    let mut cmd = pitr.command(["init", "--chunk-size", "2M"]);
    let out = output(&mut cmd);
    assert!(
        !out.status.success(),
        "init with another chunk size over an existing repository succeeded\n{}",
        describe(&cmd, &out)
    );
    assert_same_bytes("config.json after a refused init", &read(&config), &before);
}

//! docs/format.md's garbage-collection rules, each observed on a real backup: a backup's
//! marker exists while it runs and is gone once it failed (rule 6); relying on a chunk
//! refreshes it (rule 7, local); a backup of another system is refused (rule 4); a restore
//! only reads, so it works from a repository it may not write (rule 10).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use pitr_testkit::cmd::{describe, output, spawn, stderr_of};
use pitr_testkit::dirs::list_dir;
use pitr_testkit::{PgCluster, TestDir};

use crate::harness::{ArchiveTo, Pitr};

/// The chunk IDs a backup manifest names (its files, WAL and server manifest).
fn chunk_ids_of_manifest(pitr: &Pitr, id: &str) -> BTreeSet<String> {
    let path = pitr.repo().join(format!("backups/{id}.json"));
    let doc: serde_json::Value =
        serde_json::from_slice(&fs::read(&path).expect("read the manifest")).expect("JSON");
    fn walk(v: &serde_json::Value, out: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let (Some(serde_json::Value::String(id)), Some(_)) = (m.get("id"), m.get("len"))
                {
                    out.insert(id.clone());
                }
                m.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    for field in ["files", "wal", "server_manifest"] {
        walk(&doc[field], &mut out);
    }
    assert!(!out.is_empty(), "{} names no chunk", path.display());
    out
}

fn markers(pitr: &Pitr) -> Vec<std::path::PathBuf> {
    let dir = pitr.repo().join("markers");
    if dir.exists() {
        list_dir(&dir)
    } else {
        Vec::new()
    }
}

/// Rule 6: the marker is written before the backup stores anything, names the backup's
/// process, and is removed when the backup fails (here: the server ends the connection).
#[test]
fn a_backup_has_a_marker_while_it_runs_and_none_after_it_failed() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let pg = PgCluster::builder().archive_to(&pitr).init();
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    // 32 kB/s: minutes for this cluster, so it is still running when looked at.
    let mut cmd = pitr.backup_cmd(&pg, &["--checkpoint", "fast", "--max-rate", "32"]);
    let mut child = spawn(cmd.stdout(Stdio::null()).stderr(Stdio::piped()));
    let deadline = Instant::now() + Duration::from_secs(120);
    let marker = loop {
        if let Some(m) = markers(&pitr).into_iter().next() {
            break m;
        }
        if let Some(status) = child.try_wait().expect("poll the backup") {
            panic!("the backup ended ({status}) and no marker was ever seen");
        }
        assert!(Instant::now() < deadline, "no marker after 120 s of backup");
        std::thread::sleep(Duration::from_millis(50));
    };
    let doc: serde_json::Value =
        serde_json::from_slice(&fs::read(&marker).expect("read the marker")).expect("JSON");
    assert_eq!(
        doc["pid"],
        child.id(),
        "the marker names the backup's process: {doc}"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the backup is still running"
    );

    let ended = pg.psql(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity \
         where backend_type = 'walsender'",
    );
    // The backup's connections: the base backup's and the WAL stream's.
    assert_ne!(ended, "0", "no walsender (the backup's) to end");
    let out = child.wait_with_output().expect("wait for the backup");
    assert!(
        !out.status.success(),
        "the backup succeeded although its connection was ended"
    );
    assert!(
        markers(&pitr).is_empty(),
        "a failed backup left its marker: {:?}\n{}",
        markers(&pitr),
        stderr_of(&out)
    );
    assert!(
        pitr.list_json().is_empty(),
        "a failed backup left a manifest"
    );
}

/// Rule 7 on a local repository: chunks a backup finds already stored (unchanged since the
/// previous backup) are refreshed before the new manifest names them, while chunks only the
/// old backup names keep their age. Rule 4: a backup of another cluster is refused. Rule 10:
/// a restore works from a repository it cannot write.
#[test]
fn reused_chunks_are_refreshed_other_systems_refused_and_restore_only_reads() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let pg = PgCluster::builder().archive_to(&pitr).init();
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    let first = pitr.backup(&pg, &["--checkpoint", "fast"]);
    let old = SystemTime::now() - Duration::from_secs(2 * 86_400);
    for (_, path) in pitr.chunk_files() {
        fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(old))
            .unwrap_or_else(|e| panic!("age {}: {e}", path.display()));
    }
    let before_second = SystemTime::now() - Duration::from_secs(1);
    let second = pitr.backup(&pg, &["--checkpoint", "fast"]);
    let (a, b) = (
        chunk_ids_of_manifest(&pitr, &first),
        chunk_ids_of_manifest(&pitr, &second),
    );
    let reused: Vec<&String> = a.intersection(&b).collect();
    assert!(
        reused.len() > 10,
        "the second backup reused {} chunks",
        reused.len()
    );
    let mtime = |id: &str| {
        fs::metadata(pitr.chunk_path(id))
            .and_then(|m| m.modified())
            .unwrap_or_else(|e| panic!("chunk {id}: {e}"))
    };
    let stale: Vec<&&String> = reused
        .iter()
        .filter(|id| mtime(id) < before_second)
        .collect();
    assert!(
        stale.is_empty(),
        "{} of {} chunks the second backup relied on were not refreshed: {:?}",
        stale.len(),
        reused.len(),
        &stale[..stale.len().min(5)]
    );
    if let Some(only_first) = a.difference(&b).next() {
        assert!(
            mtime(only_first) < before_second,
            "an unrelied-on chunk was refreshed"
        );
    }

    // Another cluster's backup into this repository is refused, naming both systems.
    let other = PgCluster::init();
    let mut cmd = pitr.backup_cmd(&other, &["--checkpoint", "fast"]);
    let out = output(&mut cmd);
    assert!(
        !out.status.success(),
        "a backup of another system was taken\n{}",
        describe(&cmd, &out)
    );
    let sysid = |c: &PgCluster| c.psql("select system_identifier from pg_control_system()");
    let (ours, theirs) = (sysid(&pg), sysid(&other));
    let err = stderr_of(&out);
    assert!(
        err.contains(&ours) && err.contains(&theirs),
        "the error should name both system identifiers ({ours}, {theirs})\n{err}"
    );
    assert_eq!(pitr.list_json().len(), 2, "no third backup");

    // A repository the restoring user cannot write: the restore only reads.
    let ro = |mode: &str| {
        pitr_testkit::cmd::run(
            std::process::Command::new("chmod")
                .args(["-R", mode])
                .arg(pitr.repo()),
        );
    };
    ro("a-w");
    let target = dir.path().join("restored");
    let mut cmd = pitr.command([
        "restore",
        "--backup",
        &second,
        "--target-immediate",
        "--pgdata",
    ]);
    cmd.arg(&target);
    let out = output(&mut cmd);
    ro("u+w");
    assert!(
        out.status.success(),
        "a restore from a read-only repository failed\n{}",
        describe(&cmd, &out)
    );
    assert!(
        Path::new(&target).join("PG_VERSION").exists(),
        "nothing laid down"
    );
}

//! `pitr restore` treats the repository as untrusted input: a backup manifest tampered with
//! to carry a symbolic link out of the data directory is refused, naming the entry, and a
//! `--delta` over a directory with planted links follows none of them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use pitr_testkit::cmd::{describe, output, stderr_of};
use pitr_testkit::user::give_to_pg;
use pitr_testkit::{PgCluster, TestDir};

use crate::harness::{ArchiveTo, Pitr};

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn a_tampered_manifest_is_refused_and_planted_links_are_not_followed() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let pg = PgCluster::builder().archive_to(&pitr).init();
    pg.psql("create table t (i int); insert into t values (1)");
    let id = pitr.backup(&pg, &["--checkpoint", "fast"]);

    // Somewhere the restoring user could write, outside the data directory.
    let outside = dir.mkdir("outside");
    let victim = outside.join("victim");
    fs::write(&victim, b"keep me").expect("write victim");
    give_to_pg(&victim);

    // The same backup under another ID, with a link out of the data directory and a file
    // "inside" it (the content of PG_VERSION).
    let key = pitr.repo().join("backups").join(format!("{id}.json"));
    let mut m: serde_json::Value =
        serde_json::from_slice(&fs::read(&key).expect("read manifest")).expect("parse manifest");
    let tampered = format!("{id}-tampered");
    m["id"] = serde_json::json!(tampered);
    let files = m["files"].as_array_mut().expect("files");
    let mut evil = files
        .iter()
        .find(|f| f["path"] == "PG_VERSION")
        .expect("PG_VERSION entry")
        .clone();
    evil["path"] = serde_json::json!("pg_evil/PG_VERSION");
    files.push(
        serde_json::json!({"path": "pg_evil", "kind": "symlink", "mode": 511,
                                  "size": 0, "mtime": 0, "link": outside}),
    );
    files.push(evil);
    let tampered_key = key.with_file_name(format!("{tampered}.json"));
    fs::write(&tampered_key, serde_json::to_vec(&m).expect("serialize")).expect("write");
    give_to_pg(&tampered_key);

    let pgdata = dir.path().join("d-tampered");
    for dry_run in [true, false] {
        let mut cmd = pitr.command(["restore", "--target-immediate", "--backup", &tampered]);
        cmd.arg("--pgdata").arg(&pgdata);
        if dry_run {
            cmd.arg("--dry-run");
        }
        let out = output(&mut cmd);
        assert!(
            !out.status.success(),
            "a manifest with a symlink entry was restored\n{}",
            describe(&cmd, &out)
        );
        let err = stderr_of(&out);
        assert!(
            err.contains(&tampered)
                && err.contains(
                    "entry pg_evil/PG_VERSION is below pg_evil, which is a symbolic link"
                ),
            "the refusal should name the backup and the entry\n{}",
            describe(&cmd, &out)
        );
    }
    assert!(
        !pgdata.exists(),
        "a refused restore created {}",
        pgdata.display()
    );
    assert_eq!(
        entries(&outside),
        ["victim"],
        "something was written outside"
    );

    // --delta over a directory where links stand in for a directory, a file and the files
    // restore writes itself.
    let stale = dir.mkdir("d-stale");
    for (name, to) in [
        ("base", outside.as_path()),
        ("global", outside.as_path()),
        ("PG_VERSION", victim.as_path()),
        ("postgresql.auto.conf", victim.as_path()),
        ("recovery.signal", victim.as_path()),
    ] {
        std::os::unix::fs::symlink(to, stale.join(name)).expect("plant link");
    }
    let mut cmd = pitr.command(["restore", "--target-immediate", "--delta", "--backup", &id]);
    cmd.arg("--pgdata").arg(&stale);
    let out = output(&mut cmd);
    assert!(
        out.status.success(),
        "--delta restore failed\n{}",
        describe(&cmd, &out)
    );
    assert_eq!(
        entries(&outside),
        ["victim"],
        "--delta wrote outside\n{}",
        describe(&cmd, &out)
    );
    assert_eq!(fs::read(&victim).expect("read victim"), b"keep me");
    for name in [
        "base",
        "global",
        "PG_VERSION",
        "postgresql.auto.conf",
        "recovery.signal",
    ] {
        let meta = fs::symlink_metadata(stale.join(name)).expect("stat");
        assert!(!meta.file_type().is_symlink(), "{name} is still a link");
    }
    assert_eq!(
        fs::read(stale.join("PG_VERSION")).expect("read PG_VERSION"),
        fs::read(pg.data_dir().join("PG_VERSION")).expect("read source PG_VERSION")
    );
    assert!(stale.join("global/pg_control").is_file());
    let mode = fs::metadata(stale.join("base"))
        .expect("stat base")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o700, "mode of base");
}

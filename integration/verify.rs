//! `pitr verify`: clean on a healthy repository (whole, and `--backup ID`); a corrupt chunk of
//! a backup and a missing archived segment are each named on stdout with a non-zero exit.

use pitr_testkit::cmd::{describe, output, stdout_of};
use pitr_testkit::{PgCluster, TestDir};

use crate::harness::{ArchiveTo, Pitr, ARCHIVE_TIMEOUT};

#[test]
fn verify_names_corrupt_chunks_and_wal_gaps() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let pg = PgCluster::builder().archive_to(&pitr).init();
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    let id = pitr.backup(&pg, &["--checkpoint", "fast"]);
    let mut segments = Vec::new();
    for _ in 0..3 {
        let seg = pg.switch_wal();
        pg.wait_archived(&seg, ARCHIVE_TIMEOUT);
        segments.push(seg);
    }

    let verify = |args: &[&str]| {
        let mut cmd = pitr.command(["verify"]);
        cmd.args(args);
        let out = output(&mut cmd);
        (out.status.success(), stdout_of(&out), describe(&cmd, &out))
    };
    let (ok, stdout, what) = verify(&[]);
    assert!(
        ok && stdout.contains("no problems"),
        "a healthy repository\n{what}"
    );
    let (ok, _, what) = verify(&["--backup", &id]);
    assert!(ok, "verify --backup {id}\n{what}");
    let (ok, _, what) = verify(&["--backup", "20000101T000000Z"]);
    assert!(
        !ok && what.contains("no backup 20000101T000000Z"),
        "unknown backup\n{what}"
    );

    // Flip the last byte of a chunk of one of the backup's data files.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(pitr.repo().join(format!("backups/{id}.json"))).unwrap(),
    )
    .unwrap();
    let chunk = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["path"].as_str().is_some_and(|p| p.starts_with("base/")))
        .find_map(|f| f["chunks"][0]["id"].as_str())
        .expect("a data file with chunks")
        .to_string();
    let path = pitr.repo().join("chunks").join(&chunk[..2]).join(&chunk);
    let mut body = std::fs::read(&path).unwrap();
    *body.last_mut().unwrap() ^= 0xff;
    let mut perm = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
    std::fs::set_permissions(&path, perm).unwrap();
    std::fs::write(&path, body).unwrap();

    // And lose the middle one of the three archived segments.
    let tli_dir = pitr.repo().join("wal").join(&segments[1][..8]);
    std::fs::remove_file(tli_dir.join(format!("{}.json", segments[1]))).unwrap();

    let (ok, stdout, what) = verify(&[]);
    assert!(!ok, "verify must fail\n{what}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&chunk) && l.contains(&format!("backup {id}"))),
        "the corrupt chunk {chunk} of backup {id} should be named\n{what}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("segment {} is missing", segments[1]))),
        "the missing segment {} should be named\n{what}",
        segments[1]
    );
    assert_eq!(lines.len(), 2, "exactly the two problems\n{what}");
}

//! `pitr verify`: clean on a healthy repository (whole, and `--backup ID`); a corrupt chunk of
//! a backup and a missing archived segment are each named on stdout with a non-zero exit.
//! `--restore-test` restores and starts a scratch instance without archiving into the
//! production repository (no new timeline appears there), and fails naming a corrupt chunk.
//! A segment missing before the first archived one, on a backup's way forward, is named.

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
    // A test restore: recovered, checked, removed, and nothing archived from it.
    let scratch = dir.path().join("scratch");
    let (ok, stdout, what) = verify(&[
        "--restore-test",
        "--json",
        "--scratch",
        scratch.to_str().unwrap(),
    ]);
    assert!(ok, "verify --restore-test on a healthy repository\n{what}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect(&what);
    assert_eq!(doc["ok"], true, "{what}");
    let test = &doc["restore_test"];
    assert_eq!(test["backup"], id.as_str(), "{what}");
    assert!(test["recovery_seconds"].as_f64().is_some(), "{what}");
    let checks = test["checks"].as_array().expect(&what);
    assert!(
        !checks.is_empty() && checks.iter().all(|c| c["ok"] == true),
        "{what}"
    );
    assert!(
        !scratch.exists(),
        "the scratch directory it made is removed\n{what}"
    );
    // The production server keeps archiving; the scratch instance's timeline 2 must not
    // appear.
    let seg = pg.switch_wal();
    pg.wait_archived(&seg, ARCHIVE_TIMEOUT);
    let names = pitr.archived_names();
    assert!(
        !names.iter().any(|n| n.starts_with("00000002")),
        "the test restore archived into the repository: {names:?}\n{what}"
    );
    let (ok, _, what) = verify(&[
        "--restore-test",
        "--check-sql",
        "SELECT count(*) FROM pgbench_accounts",
        "--check-sql",
        "SELECT * FROM no_such_table",
    ]);
    assert!(
        !ok && what.contains("no_such_table") && what.contains("check"),
        "a failing --check-sql fails verify\n{what}"
    );

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

    // The test restore cannot get past the corrupt chunk either.
    let (ok, stdout, what) = verify(&["--restore-test"]);
    assert!(!ok, "verify --restore-test must fail\n{what}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&format!("restore test of backup {id}")) && l.contains(&chunk)),
        "the restore test should name the corrupt chunk {chunk}\n{what}"
    );

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

/// A backup whose start segment and the one after it are not archived, while later ones are:
/// no gap between archived segments, but recovery from the backup cannot get past them.
#[test]
fn verify_checks_continuity_from_each_backups_start() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let pg = PgCluster::builder().archive_to(&pitr).init();
    let id = pitr.backup(&pg, &["--checkpoint", "fast"]);
    for _ in 0..3 {
        let seg = pg.switch_wal();
        pg.wait_archived(&seg, ARCHIVE_TIMEOUT);
    }
    let wal_start = pitr.listed_backup(&id)["wal_start"]
        .as_str()
        .expect("wal_start")
        .to_string();
    let segno = u64::from_str_radix(&wal_start[16..], 16).unwrap();
    let next = format!("{}{:08X}", &wal_start[..16], segno + 1);
    // Lose every archived segment of the timeline up to the one after the backup's start.
    for name in pitr.archived_names() {
        if name.len() == 24 && name[..8] == wal_start[..8] && name <= next {
            std::fs::remove_file(pitr.wal_ref_path(&name)).unwrap();
        }
    }
    let mut cmd = pitr.command(["verify", "--json"]);
    let out = output(&mut cmd);
    let what = describe(&cmd, &out);
    assert!(!out.status.success(), "verify must fail\n{what}");
    let doc: serde_json::Value = serde_json::from_str(&stdout_of(&out)).expect(&what);
    assert_eq!(doc["ok"], false, "{what}");
    let problems = doc["problems"].as_array().expect(&what);
    assert!(
        problems.iter().any(|p| {
            let p = p.as_str().unwrap();
            p.contains(&next) && p.contains(&format!("backup {id}"))
        }),
        "segment {next} after backup {id}'s start {wal_start} should be named\n{what}"
    );
}

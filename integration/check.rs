//! `pitr check`: 0 on a cluster archiving into the repository (WAL switched and seen in the
//! repository, system identifiers equal); 2 naming the check when archive_command archives
//! elsewhere or archive_mode is off; the age probe (no server connection) 2 when the newest
//! backup is older than `--max-backup-age`, 0 when it is fresh.

use pitr_testkit::cmd::{describe, output, stdout_of};
use pitr_testkit::{PgCluster, TestDir};

use crate::harness::{ArchiveTo, Pitr};

/// `pitr --repo <pitr's repo> check <args>`: (exit code, stdout, the description of the run
/// with the server log tail for a failure message).
fn check(pitr: &Pitr, pg: Option<&PgCluster>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = pitr.command(["check"]);
    if let Some(pg) = pg {
        cmd.args(["-d", &pg.socket_connstr()]);
    }
    cmd.args(args);
    let out = output(&mut cmd);
    let mut what = describe(&cmd, &out);
    if let Some(pg) = pg {
        what.push_str(&format!("\nserver log:\n{}", pg.log_tail(30)));
    }
    (out.status.code().unwrap_or(-1), stdout_of(&out), what)
}

fn statuses(json: &str, what: &str) -> serde_json::Value {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("check --json: {e}\n{what}"))
}

#[test]
fn check_passes_when_archiving_into_the_repository_and_names_what_is_wrong() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let pg = PgCluster::builder().archive_to(&pitr).init();

    let (code, stdout, what) = check(&pitr, Some(&pg), &["--archive-timeout", "120s"]);
    assert_eq!(code, 0, "a healthy cluster\n{what}");
    assert!(stdout.starts_with("PITR OK"), "{what}");
    let (code, stdout, what) = check(&pitr, Some(&pg), &["--json", "--archive-timeout", "120s"]);
    assert_eq!(code, 0, "{what}");
    let doc = statuses(&stdout, &what);
    assert_eq!(doc["status"], "ok", "{what}");
    let names: Vec<&str> = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    for name in [
        "connection",
        "archive_mode",
        "wal_level",
        "archive_command",
        "archive_push",
        "system_identifier",
    ] {
        assert!(names.contains(&name), "{name} missing\n{what}");
    }

    // The same server checked against another repository: its archive_command points
    // elsewhere.
    let other = Pitr::init(&dir, "other");
    let (code, stdout, what) = check(&other, Some(&pg), &["--json", "--archive-timeout", "5s"]);
    assert_eq!(
        code, 2,
        "archive_command points at another repository\n{what}"
    );
    let doc = statuses(&stdout, &what);
    let critical: Vec<&str> = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "critical")
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert!(critical.contains(&"archive_command"), "{what}");

    // The age probe connects to no server: no backup yet is critical.
    let (code, stdout, what) = check(&pitr, None, &["--max-backup-age", "1h"]);
    assert_eq!(code, 2, "no backup\n{what}");
    assert!(stdout.contains("no backup"), "{what}");
    pitr.backup(&pg, &["--checkpoint", "fast"]);
    let (code, _, what) = check(
        &pitr,
        None,
        &["--max-backup-age", "1h", "--max-archive-age", "1h"],
    );
    assert_eq!(code, 0, "a fresh backup and fresh WAL\n{what}");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (code, stdout, what) = check(&pitr, None, &["--json", "--max-backup-age", "1s"]);
    assert_eq!(
        code, 2,
        "the newest backup is older than --max-backup-age\n{what}"
    );
    let doc = statuses(&stdout, &what);
    assert_eq!(doc["status"], "critical", "{what}");
    assert_eq!(doc["checks"][0]["check"], "backup_age", "{what}");
}

#[test]
fn check_fails_with_archive_mode_off() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let pg = PgCluster::builder()
        .archive_to(&pitr)
        .conf("archive_mode = off")
        .init();
    let (code, stdout, what) = check(&pitr, Some(&pg), &["--archive-timeout", "5s"]);
    assert_eq!(code, 2, "archive_mode = off\n{what}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("CRITICAL") && l.contains("archive_mode = off")),
        "{what}"
    );
}

/// `info` and `list` name every document they could not use (a manifest and a WAL ref that do
/// not parse), in `info --json`'s `damaged` field and as a warning on stderr, and summarise
/// the rest.
#[test]
fn info_and_list_name_damaged_documents() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let history = dir.path().join("00000002.history");
    std::fs::write(&history, "1\t0/3000000\tno recovery target specified\n").unwrap();
    pitr_testkit::user::chmod(&history, 0o644);
    pitr_testkit::user::give_to_pg(&history);
    pitr.archive(&history, "00000002.history");
    let manifest = pitr.repo().join("backups/20261201T000000Z.json");
    let wal_ref = pitr.repo().join("wal/00000003/00000003.history.json");
    for p in [&manifest, &wal_ref] {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"{ not json").unwrap();
        pitr_testkit::user::give_to_pg(p.parent().unwrap());
        pitr_testkit::user::give_to_pg(p);
    }
    let info = pitr.info_json();
    let damaged: Vec<String> = info["damaged"]
        .as_array()
        .unwrap_or_else(|| panic!("info --json has no damaged list: {info:#}"))
        .iter()
        .map(|d| d["key"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        damaged.contains(&"backups/20261201T000000Z.json".to_string())
            && damaged.contains(&"wal/00000003/00000003.history.json".to_string()),
        "info --json must name both damaged documents: {damaged:?}"
    );
    assert_eq!(
        info["wal"]["files"], 1,
        "the intact ref is still counted: {info:#}"
    );
    let out = pitr.run(["list", "--json"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([]),
        "list shows no backup for a damaged manifest"
    );
    let err = pitr_testkit::cmd::stderr_of(&out);
    assert!(
        err.contains("backups/20261201T000000Z.json"),
        "list names the damaged manifest on stderr\n{err}"
    );
}

//! What is shipped for unattended use (issue 19 #5–7): the systemd units in contrib/systemd
//! alert through `pitr-notify@` on every failure, have a start timeout and the hardening
//! the issue names, stay at or below an exposure of 3.5 (printed by check-units.sh); a probe
//! timer runs `check` on the repository alone beside the hourly end-to-end `check --server`
//! with a backup age limit; `contrib/install.sh` into a DESTDIR with PREFIX=/usr writes paths
//! of that prefix and files the postgres group can read, with the shell completions and the
//! manual page; `pitr completions bash` and `pitr man` print them; and `check --server` applies the age
//! limits against a real server.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use pitr_testkit::cmd::{describe, output, stdout_of};
use pitr_testkit::user::pg_user;
use pitr_testkit::{PgCluster, TestDir};

use crate::harness::{ArchiveTo, Pitr};

fn top() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped units: (file name, text), sorted by name.
fn units(ext: &str) -> Vec<(String, String)> {
    let dir = top().join("contrib/systemd");
    let mut out: Vec<(String, String)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {name}: {e}"));
            (name, text)
        })
        .collect();
    out.sort();
    out
}

/// The values of `key=` in a unit (comments skipped; a continued line joined).
fn values(text: &str, key: &str) -> Vec<String> {
    let joined = text.replace("\\\n", " ");
    joined
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .map(|v| v.trim().to_string())
        .collect()
}

fn value(name: &str, text: &str, key: &str) -> String {
    let v = values(text, key);
    assert_eq!(v.len(), 1, "{name}: want one {key}=, found {v:?}");
    v[0].clone()
}

#[test]
fn every_service_alerts_times_out_and_is_hardened() {
    let services = units("service");
    assert!(
        services.iter().any(|(n, _)| n == "pitr-notify@.service"),
        "no pitr-notify@.service among {:?}",
        services.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    for (name, text) in &services {
        if value(name, text, "Type") == "oneshot" {
            let t = value(name, text, "TimeoutStartSec");
            assert!(
                t.starts_with(|c: char| c.is_ascii_digit()) && t != "0",
                "{name}: TimeoutStartSec={t} is no limit"
            );
        }
        for (key, want) in [
            ("UMask", "0077"),
            ("SystemCallFilter", "@system-service"),
            ("PrivateDevices", "yes"),
            ("ProtectProc", "invisible"),
            ("NoNewPrivileges", "yes"),
        ] {
            assert_eq!(value(name, text, key), want, "{name}: {key}=");
        }
        if name == "pitr-notify@.service" {
            // It must not alert about itself: a failing notifier would loop.
            assert!(values(text, "OnFailure").is_empty(), "{name}");
            let exec = value(name, text, "ExecStart");
            assert!(exec.contains("%i"), "{name} names the failed unit: {exec}");
            continue;
        }
        assert_eq!(
            value(name, text, "OnFailure"),
            "pitr-notify@%n.service",
            "{name}: a failure must alert"
        );
        let exec = value(name, text, "ExecStart");
        let ident = value(name, text, "SyslogIdentifier");
        if name.contains("@.") {
            assert_eq!(
                value(name, text, "ConditionPathExists"),
                "/etc/pitr/%i.toml",
                "{name}"
            );
            assert!(
                exec.contains("--config /etc/pitr/%i.toml"),
                "{name}: {exec}"
            );
            assert!(ident.ends_with("@%i"), "{name}: SyslogIdentifier={ident}");
        }
        let kind = name
            .trim_start_matches("pitr-")
            .split(['.', '@'])
            .next()
            .unwrap();
        if kind == "backup" || kind == "verify" {
            assert_eq!(value(name, text, "IOSchedulingClass"), "idle", "{name}");
            let nice: i32 = value(name, text, "Nice").parse().unwrap();
            assert!(nice > 0, "{name}: Nice={nice}");
        }
        match kind {
            "verify" => {
                assert!(exec.contains("--max-age "), "{name}: {exec}");
                assert!(
                    exec.contains("--restore-test --scratch ${PITR_SCRATCH}"),
                    "{name}: {exec}"
                );
                // The scratch directory is on disk, made by systemd for postgres, one per
                // configuration, and nowhere under a tmpfs /tmp.
                let env = value(name, text, "Environment");
                let dir = env.strip_prefix("PITR_SCRATCH=").unwrap_or_else(|| {
                    panic!("{name}: Environment={env} does not set PITR_SCRATCH")
                });
                let state = value(name, text, "StateDirectory");
                assert_eq!(dir, format!("/var/lib/{state}"), "{name}");
                assert!(!dir.starts_with("/tmp"), "{name}");
            }
            "check" => {
                assert!(
                    exec.contains("check --server --max-backup-age "),
                    "{name}: the hourly check applies a backup age limit too: {exec}"
                );
            }
            "probe" => {
                assert!(
                    exec.contains("check --max-backup-age ")
                        && exec.contains("--max-archive-age ")
                        && !exec.contains("--server"),
                    "{name}: the probe looks at the repository only: {exec}"
                );
            }
            "backup" | "expire" => {}
            other => panic!("{name}: an unknown kind of service {other}"),
        }
    }
    // Every service but the notifier has its timer; the probe's runs every few minutes.
    let timers = units("timer");
    for (name, _) in services
        .iter()
        .filter(|(n, _)| !n.starts_with("pitr-notify"))
    {
        let timer = name.replace(".service", ".timer");
        assert!(
            timers.iter().any(|(t, _)| *t == timer),
            "{name} has no {timer}"
        );
    }
    for (name, text) in timers.iter().filter(|(n, _)| n.starts_with("pitr-probe")) {
        assert_eq!(value(name, text, "OnCalendar"), "*:0/5", "{name}");
    }
}

/// check-units.sh verifies the units and prints each service's exposure, at most 3.5.
#[test]
fn check_units_prints_each_exposure_at_most_3_5() {
    let mut cmd = Command::new(top().join("contrib/systemd/check-units.sh"));
    cmd.arg(env!("CARGO_BIN_EXE_pitr"));
    let out = output(&mut cmd);
    let what = describe(&cmd, &out);
    assert!(out.status.success(), "{what}");
    let stdout = stdout_of(&out);
    for (name, _) in units("service") {
        let unit = name.replace("@.", "@main.");
        let line = stdout
            .lines()
            .find(|l| l.ends_with(&format!(" {unit}")) && l.starts_with("exposure "))
            .unwrap_or_else(|| panic!("no exposure line for {unit}\n{what}"));
        let level: f64 = line.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(level <= 3.5, "{line}\n{what}");
    }
}

/// DESTDIR and PREFIX=/usr, under root's strictest umask: the paths say /usr, the postgres
/// group reads the configuration, and everyone else what is not secret.
#[test]
fn install_sh_writes_prefix_paths_and_files_postgres_can_read() {
    let dir = TestDir::new();
    let dest = dir.path().join("stage");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 0077 && exec \"$0\"")
        .arg(top().join("contrib/install.sh"))
        .env("DESTDIR", &dest)
        .env("PREFIX", "/usr")
        .env("PITR_BIN", env!("CARGO_BIN_EXE_pitr"));
    let out = output(&mut cmd);
    let what = describe(&cmd, &out);
    assert!(out.status.success(), "{what}");

    let snippet = fs::read_to_string(dest.join("usr/share/doc/pitr/postgresql.conf.pitr"))
        .unwrap_or_else(|e| panic!("postgresql.conf.pitr: {e}\n{what}"));
    assert!(
        snippet.contains("archive_command = '/usr/bin/pitr archive-wal %p %f'"),
        "{snippet}"
    );
    assert!(!snippet.contains("/usr/local"), "{snippet}");
    let units = dest.join("usr/lib/systemd/system");
    for unit in ["pitr-backup.service", "pitr-probe@.service"] {
        let text = fs::read_to_string(units.join(unit)).unwrap();
        assert!(text.contains("ExecStart=/usr/bin/pitr "), "{unit}: {text}");
        assert!(!text.contains("/usr/local"), "{unit}: {text}");
    }

    let conf = dest.join("etc/pitr/pitr.toml");
    let meta = fs::metadata(&conf).unwrap_or_else(|e| panic!("{}: {e}", conf.display()));
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o640,
        "{}",
        conf.display()
    );
    if let Some(pg) = pg_user() {
        // As root the group exists (the tests run PostgreSQL as postgres).
        assert_eq!(
            meta.gid(),
            pg.gid,
            "{} is not group postgres",
            conf.display()
        );
    }
    // Completions and the manual page, from the binary's own command line.
    for (path, wants) in [
        ("usr/share/bash-completion/completions/pitr", "restore-wal"),
        ("usr/share/zsh/site-functions/_pitr", "restore-wal"),
        (
            "usr/share/fish/vendor_completions.d/pitr.fish",
            "restore-wal",
        ),
        ("usr/share/man/man1/pitr.1", ".TH"),
    ] {
        let text =
            fs::read_to_string(dest.join(path)).unwrap_or_else(|e| panic!("{path}: {e}\n{what}"));
        assert!(text.contains(wants), "{path} lacks {wants:?}:\n{text}");
        let mode = fs::metadata(dest.join(path)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "{path} is mode {mode:o}");
    }
    // What postgres runs and reads, every directory on the way: others may read and enter.
    for (p, file_needs) in [
        (dest.join("usr/bin/pitr"), 0o005),
        (units.join("pitr-notify@.service"), 0o004),
        (dest.join("usr/share/doc/pitr/monitoring.md"), 0o004),
        (dest.join("usr/share/doc/pitr/postgresql.conf.pitr"), 0o004),
    ] {
        let mut at: &Path = &p;
        while at != dest {
            let mode = fs::metadata(at).unwrap().permissions().mode();
            let need = if at == p { file_needs } else { 0o005 };
            assert_eq!(mode & need, need, "{} is mode {:o}", at.display(), mode);
            at = at.parent().unwrap();
        }
    }
}

/// `pitr completions bash` and `pitr man` need no repository or configuration: the script
/// completes the subcommands, the page is roff.
#[test]
fn completions_and_man_page_print_without_a_repository() {
    for (args, wants) in [
        (&["completions", "bash"][..], "restore-wal"),
        (&["completions", "zsh"], "restore-wal"),
        (&["completions", "fish"], "restore-wal"),
        (&["man"], ".TH"),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pitr"));
        cmd.env_remove("PITR_REPO")
            .env("PITR_CONFIG", "/nonexistent/pitr.toml")
            .args(args);
        let out = output(&mut cmd);
        assert!(out.status.success(), "{}", describe(&cmd, &out));
        let text = stdout_of(&out);
        assert!(text.contains(wants), "{}", describe(&cmd, &out));
    }
}

/// `check --server` with age limits: the server checks and the limits in one report; a stale
/// (or missing) backup is critical though archiving works. Without --server an age limit is
/// still a probe that connects to nothing.
#[test]
fn check_server_mode_applies_the_age_limits() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let pg = PgCluster::builder().archive_to(&pitr).init();
    let check = |args: &[&str]| {
        let mut cmd = pitr.command(["check", "--json", "-d", &pg.socket_connstr()]);
        cmd.args(args);
        let out = output(&mut cmd);
        let what = format!("{}\nserver log:\n{}", describe(&cmd, &out), pg.log_tail(30));
        let doc: serde_json::Value = serde_json::from_str(&stdout_of(&out))
            .unwrap_or_else(|e| panic!("check --json: {e}\n{what}"));
        (out.status.code().unwrap_or(-1), doc, what)
    };
    let status_of = |doc: &serde_json::Value, check: &str| {
        doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == check)
            .map(|c| c["status"].as_str().unwrap().to_string())
    };

    // No backup yet: archiving works end to end, the backup age is critical.
    let (code, doc, what) = check(&[
        "--server",
        "--archive-timeout",
        "120s",
        "--max-backup-age",
        "7d",
        "--max-archive-age",
        "1h",
    ]);
    assert_eq!(code, 2, "{what}");
    assert_eq!(
        status_of(&doc, "archive_push").as_deref(),
        Some("ok"),
        "{what}"
    );
    assert_eq!(
        status_of(&doc, "archive_age").as_deref(),
        Some("ok"),
        "{what}"
    );
    assert_eq!(
        status_of(&doc, "backup_age").as_deref(),
        Some("critical"),
        "{what}"
    );

    pitr.backup(&pg, &["--checkpoint", "fast"]);
    let (code, doc, what) = check(&[
        "--server",
        "--archive-timeout",
        "120s",
        "--max-backup-age",
        "7d",
    ]);
    assert_eq!(code, 0, "a fresh backup\n{what}");
    assert_eq!(
        status_of(&doc, "backup_age").as_deref(),
        Some("ok"),
        "{what}"
    );
    assert_eq!(
        status_of(&doc, "connection").as_deref(),
        Some("ok"),
        "{what}"
    );

    // Stale: the backup's age, not readiness, is what the pause is for.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (code, doc, what) = check(&[
        "--server",
        "--archive-timeout",
        "120s",
        "--max-backup-age",
        "1s",
    ]);
    assert_eq!(code, 2, "the backup is older than --max-backup-age\n{what}");
    assert_eq!(doc["status"], "critical", "{what}");
    assert_eq!(
        status_of(&doc, "backup_age").as_deref(),
        Some("critical"),
        "{what}"
    );
    for server_check in [
        "connection",
        "archive_mode",
        "archive_push",
        "system_identifier",
    ] {
        assert_eq!(
            status_of(&doc, server_check).as_deref(),
            Some("ok"),
            "{server_check}\n{what}"
        );
    }

    // Without --server the same limit is a probe of the repository: no server checks.
    let (code, doc, what) = check(&["--max-backup-age", "7d"]);
    assert_eq!(code, 0, "{what}");
    // The probe's checks: the backup's age and the archived timelines, none of the server's.
    let names: Vec<&str> = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["check"].as_str())
        .collect();
    assert_eq!(names, ["backup_age", "timelines"], "{what}");
    assert_eq!(status_of(&doc, "connection"), None, "{what}");
}

//! A server `pitr restore --start` leaves running, for the tests that restore and then look
//! at the result (restore, encryption): where it goes, how it is started, and its guard.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use pitr_testkit::cluster::{psql_command, stop_immediately};
use pitr_testkit::cmd::{describe, output, stderr_of, stdout_of};
use pitr_testkit::dirs::{list_dir, tail};
use pitr_testkit::programs::pg_bindir;
use pitr_testkit::{free_port, TestDir};

use crate::harness::Pitr;

/// Stops the server on `pgdata` (immediate) if a postmaster.pid says one runs.
pub fn stop_server(pgdata: &Path) {
    stop_immediately(pg_bindir(), pgdata);
}

/// Where a restore goes: `<dir>/d-<name>` (not created: `pitr restore` makes it) and a socket
/// directory `<dir>/s-<name>` for the server `--start` runs.
pub struct Place {
    pub pgdata: PathBuf,
    pub sock: PathBuf,
    pub port: u16,
}

impl Place {
    pub fn new(dir: &TestDir, name: &str) -> Place {
        Place {
            pgdata: dir.path().join(format!("d-{name}")),
            sock: dir.mkdir(&format!("s-{name}")),
            port: free_port(),
        }
    }

    /// `--start` options: our port, our socket directory, no TCP (so no port clash with
    /// anything else on the machine), and `archive_mode` as asked.
    pub fn start_args(&self, archive_mode: &str) -> Vec<String> {
        vec![
            "--start".into(),
            "--port".into(),
            self.port.to_string(),
            "--pg-option".into(),
            format!("unix_socket_directories='{}'", self.sock.display()),
            "--pg-option".into(),
            "listen_addresses=''".into(),
            "--pg-option".into(),
            format!("archive_mode={archive_mode}"),
        ]
    }
}

/// A server `pitr restore --start` left running. Stopped (immediate) on drop; when the test is
/// failing, the tail of its log goes to stderr.
pub struct Restored {
    pub place: Place,
    /// `pitr restore --start --json` output.
    pub json: serde_json::Value,
    /// `pitr restore` stderr (its log).
    pub stderr: String,
}

impl Restored {
    #[track_caller]
    pub fn psql(&self, sql: &str) -> String {
        let mut cmd = psql_command(&self.place.sock, self.place.port, sql);
        let out = output(&mut cmd);
        if !out.status.success() {
            panic!(
                "psql on the restored server failed\n{}\n--- recovery log ---\n{}",
                describe(&cmd, &out),
                tail(&self.place.pgdata.join("pitr-recovery.log"), 30)
            );
        }
        stdout_of(&out).trim_end_matches('\n').to_owned()
    }

    /// The numbered rows of `t`, in order, comma-separated ("" when none).
    pub fn rows(&self) -> String {
        self.psql("select coalesce(string_agg(i::text, ',' order by i), '') from t")
    }

    /// `recovery.<field>` of the JSON report, as text ("" when absent or null).
    pub fn recovery(&self, field: &str) -> String {
        match &self.json["recovery"][field] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            v => v.to_string(),
        }
    }

    /// restore-wal's prefetch spool (`pg_wal/pitr-spool`) was made during recovery (the
    /// recovery log says so: [`restore_started`] runs restore-wal with debug logging) and is
    /// gone once the server promoted (allowing a prefetch worker a few seconds to notice).
    #[track_caller]
    pub fn assert_spool_gone(&self, what: &str) {
        let spool = self.place.pgdata.join("pg_wal/pitr-spool");
        let log = std::fs::read_to_string(self.place.pgdata.join("pitr-recovery.log"))
            .unwrap_or_else(|e| panic!("{what}: read the recovery log: {e}"));
        assert!(
            log.contains(&format!("created the prefetch spool {}", spool.display()))
                || log.contains("created the prefetch spool pg_wal/pitr-spool"),
            "{what}: no prefetch spool was ever made, so its removal proves nothing\n{}",
            tail(&self.place.pgdata.join("pitr-recovery.log"), 30)
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while spool.exists() {
            if Instant::now() > deadline {
                panic!(
                    "{what}: {} still exists 10 s after promotion: {:?}",
                    spool.display(),
                    list_dir(&spool)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The timeline the server now writes WAL on.
    pub fn wal_timeline(&self) -> u32 {
        let seg = self.psql("select pg_walfile_name(pg_current_wal_lsn())");
        u32::from_str_radix(&seg[..8], 16).unwrap_or_else(|e| panic!("segment {seg:?}: {e}"))
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} ---\n{}\n--- recovery log {} ---\n{}\n--- end ---",
                self.place.pgdata.display(),
                serde_json::to_string_pretty(&self.json).unwrap_or_default(),
                self.place.pgdata.join("pitr-recovery.log").display(),
                tail(&self.place.pgdata.join("pitr-recovery.log"), 40)
            );
        }
        stop_server(&self.place.pgdata);
    }
}

/// `pitr restore --pgdata <place> <args> --start … --json`, expecting success; the server is
/// left running.
#[track_caller]
pub fn restore_started(
    pitr: &Pitr,
    dir: &TestDir,
    name: &str,
    args: &[&str],
    archive_mode: &str,
) -> Restored {
    let place = Place::new(dir, name);
    let mut cmd = pitr.command(["restore", "--pgdata"]);
    // restore-wal, run by the server, inherits this: its debug lines (the prefetch spool
    // made, segments served from it) reach the recovery log for the tests to look at.
    cmd.env("PITR_LOG", "warn,pitr=debug");
    cmd.arg(&place.pgdata)
        .args(args)
        .args(place.start_args(archive_mode))
        .arg("--json");
    let out = output(&mut cmd);
    if !out.status.success() {
        let log = tail(&place.pgdata.join("pitr-recovery.log"), 40);
        stop_server(&place.pgdata);
        panic!(
            "restore {name} failed\n{}\n--- recovery log ---\n{log}",
            describe(&cmd, &out)
        );
    }
    let json = parse_json(&cmd, &out);
    Restored {
        place,
        json,
        stderr: stderr_of(&out),
    }
}

#[track_caller]
pub fn parse_json(cmd: &std::process::Command, out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "expected one JSON document on stdout: {e}\n{}",
            describe(cmd, out)
        )
    })
}

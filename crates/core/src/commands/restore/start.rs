//! `pitr restore --start`: start PostgreSQL on the restored directory, follow its log until
//! recovery reached the target and the target action ran, and report where it stopped.

use std::fmt;
use std::io::{BufRead, BufReader, Seek};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

use super::{StartOptions, TargetAction};
use crate::repofile::BackupManifest;

#[derive(Debug, Default, Serialize)]
pub struct RecoveryOutcome {
    /// PostgreSQL's own words: "recovery stopping before commit of transaction 745, time …".
    pub stopped: Option<String>,
    /// "redo done at 0/3000148 …"
    pub redo_done: Option<String>,
    pub last_transaction: Option<String>,
    pub timeline: Option<u32>,
    pub state: String,
    pub log: String,
}

impl fmt::Display for RecoveryOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "recovery:  {}", self.state)?;
        if let Some(s) = &self.stopped {
            writeln!(f, "stopped:   {s}")?;
        }
        if let Some(s) = &self.redo_done {
            writeln!(f, "redo:      {s}")?;
        }
        if let Some(s) = &self.last_transaction {
            writeln!(f, "last xact: {s}")?;
        }
        if let Some(t) = self.timeline {
            writeln!(f, "timeline:  {t}")?;
        }
        write!(f, "log:       {}", self.log)
    }
}

/// PostgreSQL binaries for `major`: PITR_PG_BINDIR, /usr/lib/postgresql/<major>/bin, then
/// `pg_config --bindir`.
pub fn pg_bindir(major: u32) -> anyhow::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(d) = std::env::var("PITR_PG_BINDIR") {
        candidates.push(PathBuf::from(d));
    }
    candidates.push(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    candidates
        .into_iter()
        .find(|d| d.join("pg_ctl").is_file())
        .with_context(|| {
            format!("no PostgreSQL {major} binaries (pg_ctl) found: set PITR_PG_BINDIR")
        })
}

fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| line[i + marker.len()..].trim())
}

pub async fn start_and_wait(
    pgdata: &Path,
    manifest: &BackupManifest,
    action: TargetAction,
    args: &StartOptions,
) -> anyhow::Result<RecoveryOutcome> {
    refuse_root()?;
    let major = manifest.pg_version_num / 10000;
    let bindir = pg_bindir(major)?;
    let log = pgdata.join("pitr-recovery.log");
    let mut opts = String::from("-c logging_collector=off -c log_destination=stderr");
    if let Some(p) = args.port {
        opts.push_str(&format!(" -p {p}"));
    }
    for o in &args.pg_options {
        opts.push_str(&format!(" -c {o}"));
    }
    let status = Command::new(bindir.join("pg_ctl"))
        .arg("-D")
        .arg(pgdata)
        .arg("-l")
        .arg(&log)
        .arg("-o")
        .arg(&opts)
        .arg("-W")
        .arg("start")
        .stdout(std::process::Stdio::null())
        .status()
        .context("run pg_ctl start")?;
    if !status.success() {
        bail!(
            "pg_ctl start on {} failed ({status}); see {}",
            pgdata.display(),
            log.display()
        );
    }
    tracing::info!(
        "started PostgreSQL on {}; following {}",
        pgdata.display(),
        log.display()
    );
    let mut outcome = RecoveryOutcome {
        log: log.display().to_string(),
        ..Default::default()
    };
    let mut pos = 0u64;
    let mut partial = String::new();
    let done = loop {
        // Read what the server logged since last time.
        let mut f = match std::fs::File::open(&log) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("open {}", log.display())),
        };
        f.seek(std::io::SeekFrom::Start(pos))?;
        let mut reader = BufReader::new(f);
        let mut line = String::new();
        let mut finished = None;
        loop {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 {
                break;
            }
            if !line.ends_with('\n') {
                partial = line.clone();
                break;
            }
            pos += n as u64;
            let full = std::mem::take(&mut partial) + &line;
            let l = full.trim_end();
            if l.contains("FATAL:") || l.contains("PANIC:") {
                let _ = stop(&bindir, pgdata);
                bail!("PostgreSQL failed during recovery: {l}");
            }
            if let Some(s) = after(l, "LOG:  recovery stopping ") {
                outcome.stopped = Some(format!("recovery stopping {s}"));
            }
            if let Some(s) = after(l, "LOG:  redo done at ") {
                outcome.redo_done = Some(s.to_string());
            }
            if let Some(s) = after(l, "last completed transaction was at log time ") {
                outcome.last_transaction = Some(s.to_string());
            }
            if let Some(s) = after(l, "LOG:  selected new timeline ID: ") {
                outcome.timeline = s
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse().ok());
            }
            if l.contains("database system is ready to accept connections") {
                finished = Some("promoted: the server is up and accepting connections");
            }
            if l.contains("recovery has paused") || l.contains("pausing at the end of recovery") {
                finished = Some("paused at the target (read-only, in recovery)");
            }
            if l.contains("database system is shut down") {
                finished = Some("shut down at the target");
            }
        }
        if let Some(state) = finished {
            break state;
        }
        if !pgdata.join("postmaster.pid").exists() && pos > 0 {
            bail!(
                "PostgreSQL on {} exited during recovery; see {}",
                pgdata.display(),
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    outcome.state = done.to_string();
    if args.stop_after && matches!(action, TargetAction::Promote | TargetAction::Pause) {
        stop(&bindir, pgdata)?;
        outcome.state.push_str("; stopped (--stop-after)");
    }
    Ok(outcome)
}

fn stop(bindir: &Path, pgdata: &Path) -> anyhow::Result<()> {
    if !pgdata.join("postmaster.pid").exists() {
        return Ok(());
    }
    let status = Command::new(bindir.join("pg_ctl"))
        .arg("-D")
        .arg(pgdata)
        .args(["-m", "fast", "-w", "stop"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("run pg_ctl stop")?;
    if !status.success() {
        bail!("pg_ctl stop on {} failed ({status})", pgdata.display());
    }
    Ok(())
}

/// `--start` as root cannot work (PostgreSQL refuses to run as root): say so before anything
/// is written.
pub fn refuse_root() -> anyhow::Result<()> {
    if unsafe_is_root() {
        bail!("--start: PostgreSQL refuses to run as root; run pitr restore as the database owner (e.g. runuser -u postgres --)");
    }
    Ok(())
}

fn unsafe_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

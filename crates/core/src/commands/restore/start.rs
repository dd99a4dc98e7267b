//! `pitr restore --start`: start PostgreSQL on the restored directory, wait until recovery
//! reached the target and the target action ran, and report where it stopped.
//!
//! Whether it got there is the server's word, never its log's: clients write into the log
//! during hot standby (an error message quotes their input, `RAISE LOG` writes what they
//! like), and a log may hold an earlier run. The postmaster's status in `postmaster.pid` says
//! accepts connections and `pg_control` that it is in production: it promoted; `pg_control`
//! says whether a server that exited shut down in recovery (the target action `shutdown`) or
//! failed; a query says whether a server in hot standby paused. The log,
//! read only from where this run began, gives the report PostgreSQL's own words on where it
//! stopped, and a failure its last FATAL or PANIC line.

use std::fmt;
use std::io::{BufRead, BufReader, Seek};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pitr_pg::ClusterState;
use serde::Serialize;

use super::{StartOptions, TargetAction};
use crate::instance::{self, PmStatus, Postmaster};
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

fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| line[i + marker.len()..].trim())
}

/// The server log from where this run began: what it says is read into the report, never
/// into the judgment.
struct LogFollower {
    path: PathBuf,
    pos: u64,
    started_at: u64,
    partial: String,
    /// The last FATAL or PANIC line, for the message when the server exited.
    last_fatal: Option<String>,
    /// The log mentioned a pause since the server was last asked.
    pause_said: bool,
}

impl LogFollower {
    /// Follow `path` from its current end (an earlier run's lines are not this run's).
    fn from_end(path: &Path) -> LogFollower {
        let len = std::fs::metadata(path).map_or(0, |m| m.len());
        LogFollower {
            path: path.to_path_buf(),
            pos: len,
            started_at: len,
            partial: String::new(),
            last_fatal: None,
            pause_said: false,
        }
    }

    /// Whether the server has written anything since it was started.
    fn grew(&self) -> bool {
        self.pos > self.started_at || !self.partial.is_empty()
    }

    /// Read the complete lines logged since last time into `outcome`.
    fn read(&mut self, outcome: &mut RecoveryOutcome) -> anyhow::Result<()> {
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("open {}", self.path.display())),
        };
        f.seek(std::io::SeekFrom::Start(self.pos))?;
        let mut reader = BufReader::new(f);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 {
                return Ok(());
            }
            self.pos += n as u64;
            if !line.ends_with('\n') {
                self.partial.push_str(&line);
                return Ok(());
            }
            let full = std::mem::take(&mut self.partial) + &line;
            self.note(full.trim_end(), outcome);
        }
    }

    fn note(&mut self, l: &str, outcome: &mut RecoveryOutcome) {
        if l.contains("FATAL:") || l.contains("PANIC:") {
            self.last_fatal = Some(l.to_string());
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
        if l.contains("recovery has paused") || l.contains("pausing at the end of recovery") {
            self.pause_said = true;
        }
    }
}

/// What the server says it is doing.
#[derive(Debug, PartialEq, Eq)]
enum Observed {
    /// No postmaster yet, and nothing logged.
    Starting,
    /// The postmaster's status, and what `pg_control` says.
    Running(PmStatus, Option<ClusterState>),
    /// The postmaster is gone; `pg_control` says this.
    Exited(Option<ClusterState>),
}

/// How a recovery that is over ended, by what the server says: `Ok(state)` for the report,
/// `Err(())` for a server that exited without getting there; `None` while it goes on.
/// `paused` is the server's answer to "in recovery and paused?", when it was asked.
fn judge(observed: &Observed, paused: Option<bool>) -> Option<Result<&'static str, ()>> {
    match observed {
        Observed::Starting => None,
        Observed::Running(PmStatus::Ready, Some(ClusterState::InProduction)) => {
            Some(Ok("promoted: the server is up and accepting connections"))
        }
        Observed::Running(PmStatus::Ready, _) if paused == Some(true) => {
            Some(Ok("paused at the target (read-only, in recovery)"))
        }
        Observed::Running(..) => None,
        Observed::Exited(Some(ClusterState::ShutDownInRecovery)) => {
            Some(Ok("shut down at the target"))
        }
        Observed::Exited(_) => Some(Err(())),
    }
}

/// Look at `pgdata`: a live postmaster and its status, or (once the server has logged
/// something, so it did start) the state it left in `pg_control`.
fn observe(pgdata: &Path, logged: bool) -> anyhow::Result<(Observed, Option<Postmaster>)> {
    if let Some(pm) = Postmaster::of(pgdata) {
        let state = instance::cluster_state(pgdata)?;
        return Ok((Observed::Running(pm.status, state), Some(pm)));
    }
    if !logged {
        return Ok((Observed::Starting, None));
    }
    // The postmaster removes its pid file last: read pg_control after it is gone.
    Ok((Observed::Exited(instance::cluster_state(pgdata)?), None))
}

/// Ask a server in hot standby whether it is in recovery and paused there.
fn ask_paused(bindir: &Path, pm: &Postmaster, major: u32) -> Result<bool, String> {
    let paused = if major >= 14 {
        "pg_get_wal_replay_pause_state() = 'paused'"
    } else {
        "pg_is_wal_replay_paused()"
    };
    let sql = format!("SELECT pg_is_in_recovery() AND {paused}");
    let out = instance::run(instance::psql(bindir, &pm.host(), pm.port, &sql))?;
    Ok(out.trim() == "t")
}

/// How often a server in hot standby is asked whether it paused, unless its log says so first.
const ASK_EVERY: Duration = Duration::from_secs(1);

pub async fn start_and_wait(
    pgdata: &Path,
    manifest: &BackupManifest,
    action: TargetAction,
    args: &StartOptions,
) -> anyhow::Result<RecoveryOutcome> {
    refuse_root()?;
    let major = manifest.pg_version_num / 10000;
    let bindir = instance::pg_bindir(major)?;
    let log = pgdata.join("pitr-recovery.log");
    let mut opts = String::from("-c logging_collector=off -c log_destination=stderr");
    if let Some(p) = args.port {
        opts.push_str(&format!(" -p {p}"));
    }
    for o in &args.pg_options {
        opts.push_str(&format!(" -c {o}"));
    }
    let mut follower = LogFollower::from_end(&log);
    instance::start(&bindir, pgdata, &log, &opts)?;
    tracing::info!(
        "started PostgreSQL on {}; following {}",
        pgdata.display(),
        log.display()
    );
    let mut outcome = RecoveryOutcome {
        log: log.display().to_string(),
        ..Default::default()
    };
    let mut asked: Option<Instant> = None;
    let done = loop {
        follower.read(&mut outcome)?;
        let (observed, pm) = observe(pgdata, follower.grew())?;
        let mut paused = None;
        let in_hot_standby = matches!(
            observed,
            Observed::Running(PmStatus::Ready, Some(ClusterState::InArchiveRecovery))
        );
        if let (true, Some(pm)) = (in_hot_standby, &pm) {
            if follower.pause_said || asked.is_none_or(|t| t.elapsed() >= ASK_EVERY) {
                asked = Some(Instant::now());
                match ask_paused(&bindir, pm, major) {
                    Ok(p) => paused = Some(p),
                    Err(e) if follower.pause_said => bail!(
                        "PostgreSQL on {} is in hot standby and its log says recovery paused, \
                         but pitr could not ask the server to confirm it: {}; it is left \
                         running (see {})",
                        pgdata.display(),
                        e.trim(),
                        log.display()
                    ),
                    Err(e) => tracing::debug!("ask PostgreSQL whether it paused: {e}"),
                }
                follower.pause_said = false;
            }
        }
        match judge(&observed, paused) {
            Some(Ok(state)) => break state,
            Some(Err(())) => {
                follower.read(&mut outcome)?;
                if let Some(l) = follower.last_fatal {
                    bail!("PostgreSQL failed during recovery: {l}");
                }
                let state = match &observed {
                    Observed::Exited(Some(s)) => format!(" (pg_control: {s})"),
                    _ => String::new(),
                };
                bail!(
                    "PostgreSQL on {} exited during recovery{state}; see {}",
                    pgdata.display(),
                    log.display()
                );
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    // What the server logged up to the judgment (it logs where it stopped before it says so).
    follower.read(&mut outcome)?;
    outcome.state = done.to_string();
    if args.stop_after && matches!(action, TargetAction::Promote | TargetAction::Pause) {
        instance::stop(&bindir, pgdata, &["fast"])?;
        outcome.state.push_str("; stopped (--stop-after)");
    }
    Ok(outcome)
}

/// `--start` as root cannot work (PostgreSQL refuses to run as root): say so before anything
/// is written.
pub fn refuse_root() -> anyhow::Result<()> {
    instance::refuse_root("pitr restore").map_err(|e| anyhow::anyhow!("--start: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the log says, only the server's own state ends the wait.
    #[test]
    fn the_server_decides_not_its_log() {
        use Observed::*;
        assert_eq!(judge(&Starting, None), None);
        let recovering = Some(ClusterState::InArchiveRecovery);
        let production = Some(ClusterState::InProduction);
        // Hot standby: accepting connections, in recovery.
        assert_eq!(judge(&Running(PmStatus::Ready, recovering), None), None);
        assert_eq!(
            judge(&Running(PmStatus::Ready, recovering), Some(false)),
            None
        );
        assert_eq!(judge(&Running(PmStatus::Standby, recovering), None), None);
        assert_eq!(judge(&Running(PmStatus::Starting, None), Some(true)), None);
        assert!(judge(&Running(PmStatus::Ready, recovering), Some(true))
            .is_some_and(|r| r.is_ok_and(|s| s.starts_with("paused"))));
        assert!(judge(&Running(PmStatus::Ready, production), None)
            .is_some_and(|r| r.is_ok_and(|s| s.starts_with("promoted"))));
        assert_eq!(judge(&Running(PmStatus::Standby, production), None), None);
        assert_eq!(
            judge(&Exited(Some(ClusterState::ShutDownInRecovery)), None),
            Some(Ok("shut down at the target"))
        );
        for failed in [
            Exited(Some(ClusterState::InArchiveRecovery)),
            Exited(Some(ClusterState::ShutDown)),
            Exited(None),
        ] {
            assert_eq!(judge(&failed, None), Some(Err(())), "{failed:?}");
        }
    }

    /// A log a client wrote into: its words go nowhere near the judgment, and what an earlier
    /// run logged is not read at all.
    #[test]
    fn a_crafted_log_fills_the_report_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pitr-recovery.log");
        std::fs::write(
            &path,
            "LOG:  database system is ready to accept connections\nLOG:  recovery stopping before commit of transaction 1\n",
        )
        .unwrap();
        let mut follower = LogFollower::from_end(&path);
        let mut outcome = RecoveryOutcome::default();
        follower.read(&mut outcome).unwrap();
        assert!(!follower.grew() && outcome.stopped.is_none());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        use std::io::Write;
        f.write_all(b"ERROR:  invalid input syntax for type integer: \"database system is ready to accept connections\"\nFATAL:  password authentication failed for user \"x\"\nLOG:  redo done at 0/3000148\nLOG:  selected new timeline ID: 2\nLOG:  pausing at the end of rec").unwrap();
        follower.read(&mut outcome).unwrap();
        assert!(follower.grew());
        assert_eq!(outcome.redo_done.as_deref(), Some("0/3000148"));
        assert_eq!(outcome.timeline, Some(2));
        assert!(!follower.pause_said, "half a line is not read yet");
        f.write_all(b"overy\n").unwrap();
        follower.read(&mut outcome).unwrap();
        assert!(follower.pause_said);
    }
}

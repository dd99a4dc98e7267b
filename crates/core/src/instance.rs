//! A local PostgreSQL instance, the one place pitr runs one: the restored server of
//! `restore --start` and the scratch instance of `verify --restore-test`. Finding its programs
//! (the search order of [`pitr_pg::programs`]), refusing to run as root, quoting for the shell
//! pg_ctl starts postgres with, starting and stopping it with pg_ctl, and asking the server
//! what it is doing: `postmaster.pid` and `pg_control`, which only the server writes, and a
//! query with psql over its socket. Never the server log, which clients can write into.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use pitr_pg::ClusterState;

/// PostgreSQL `major`'s programs: the first directory of
/// [`pitr_pg::programs::bindir_candidates`] that holds pg_ctl.
pub fn pg_bindir(major: u32) -> anyhow::Result<PathBuf> {
    pitr_pg::programs::bindir_candidates(Some(major))
        .into_iter()
        .find(|d| d.join("pg_ctl").is_file())
        .with_context(|| {
            format!("no PostgreSQL {major} binaries (pg_ctl) found: set PITR_PG_BINDIR")
        })
}

/// The programs of the data directory's major version (from `PG_VERSION`).
pub fn bindir_of(pgdata: &Path) -> Option<PathBuf> {
    let major: u32 = std::fs::read_to_string(pgdata.join("PG_VERSION"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    pg_bindir(major).ok()
}

/// Whether this process runs as root.
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// PostgreSQL refuses to run as root: say so before anything is written. `command` is what
/// to run as the database owner instead.
pub fn refuse_root(command: &str) -> anyhow::Result<()> {
    if running_as_root() {
        bail!("PostgreSQL refuses to run as root; run {command} as the database owner (e.g. runuser -u postgres --)");
    }
    Ok(())
}

/// One shell word: `s` as it is when it needs no quoting, else single-quoted.
pub fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_.:=@%+-,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A TCP port on 127.0.0.1 that is free when asked.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .context("find a free port for the scratch instance")?;
    Ok(listener.local_addr()?.port())
}

/// `pg_ctl start` without waiting: postgres with the server options `opts` (a shell text),
/// its output appended to `log`.
pub fn start(bindir: &Path, pgdata: &Path, log: &Path, opts: &str) -> anyhow::Result<()> {
    let status = Command::new(bindir.join("pg_ctl"))
        .arg("-D")
        .arg(pgdata)
        .arg("-l")
        .arg(log)
        .arg("-o")
        .arg(opts)
        .arg("-W")
        .arg("start")
        .stdout(Stdio::null())
        .status()
        .context("run pg_ctl start")?;
    if !status.success() {
        bail!(
            "pg_ctl start on {} failed ({status}); see {}",
            pgdata.display(),
            log.display()
        );
    }
    Ok(())
}

/// Stop the server on `pgdata` if a postmaster.pid says one runs: `pg_ctl stop` in each of
/// `modes` in turn (`fast`, then `immediate` if that did not work, …) until one succeeds.
pub fn stop(bindir: &Path, pgdata: &Path, modes: &[&str]) -> anyhow::Result<()> {
    let mut failed = None;
    for mode in modes {
        if !pgdata.join("postmaster.pid").exists() {
            return Ok(());
        }
        let stopped = Command::new(bindir.join("pg_ctl"))
            .arg("-D")
            .arg(pgdata)
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let error = match stopped {
            Ok(s) if s.success() => return Ok(()),
            Ok(s) => anyhow::anyhow!("pg_ctl stop -m {mode} on {} failed ({s})", pgdata.display()),
            Err(e) => anyhow::Error::new(e).context("run pg_ctl stop"),
        };
        tracing::warn!("{error:#}");
        failed = Some(error);
    }
    failed.map_or(Ok(()), Err)
}

/// The server is reached by its socket only, as this user: none of the caller's libpq
/// settings.
pub fn clear_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}

/// psql running `sql` on the server at `host` (a socket directory) and `port`, database
/// `postgres`: unaligned, tuples only, never prompting for a password.
pub fn psql(bindir: &Path, host: &Path, port: u16, sql: &str) -> Command {
    let mut cmd = Command::new(bindir.join("psql"));
    clear_pg_env(&mut cmd);
    cmd.args(["-X", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(host)
        .args(["-p", &port.to_string(), "-d", "postgres", "-c", sql]);
    cmd
}

/// Run a command: its stdout on success, its status, stdout and stderr on failure.
pub fn run(mut cmd: Command) -> Result<String, String> {
    match cmd.output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(format!(
            "{}; {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => Err(format!("run {:?}: {e}", cmd.get_program())),
    }
}

/// What the postmaster says of itself in `postmaster.pid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Postmaster {
    pub pid: i32,
    pub port: u16,
    /// The first socket directory (none when it listens on TCP only).
    pub socket_dir: Option<PathBuf>,
    pub status: PmStatus,
}

/// The postmaster's status line (PostgreSQL 10 and later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmStatus {
    Starting,
    /// Accepting connections: out of recovery, or read-only in hot standby (`pg_control`
    /// tells which).
    Ready,
    /// In recovery, not accepting connections (no hot standby, or not consistent yet).
    Standby,
    Stopping,
    /// A line this version of pitr does not know (or none yet).
    Unknown,
}

impl Postmaster {
    /// Parse the contents of `postmaster.pid`.
    pub fn parse(text: &str) -> Option<Postmaster> {
        let lines: Vec<&str> = text.lines().collect();
        let pid = lines.first()?.trim().parse().ok()?;
        let port = lines.get(3)?.trim().parse().ok()?;
        let socket_dir = lines
            .get(4)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let status = match lines.get(7).map(|s| s.trim()) {
            Some("starting") => PmStatus::Starting,
            Some("ready") => PmStatus::Ready,
            Some("standby") => PmStatus::Standby,
            Some("stopping") => PmStatus::Stopping,
            _ => PmStatus::Unknown,
        };
        Some(Postmaster {
            pid,
            port,
            socket_dir,
            status,
        })
    }

    /// The running postmaster of `pgdata`: none when there is no postmaster.pid or its
    /// process is gone.
    pub fn of(pgdata: &Path) -> Option<Postmaster> {
        let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
        let pm = Postmaster::parse(&text)?;
        let alive = rustix::process::Pid::from_raw(pm.pid).is_some_and(|pid| {
            matches!(
                rustix::process::test_kill_process(pid),
                Ok(()) | Err(rustix::io::Errno::PERM)
            )
        });
        alive.then_some(pm)
    }

    /// Where psql reaches it: its socket directory, else the local host.
    pub fn host(&self) -> PathBuf {
        self.socket_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("localhost"))
    }
}

/// What `pg_control` says of the data directory, as a result (an unreadable one is an error).
pub fn cluster_state(pgdata: &Path) -> anyhow::Result<Option<ClusterState>> {
    Ok(pitr_pg::read_cluster_state(pgdata)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postmaster_pid_lines() {
        let text =
            "4242\n/var/lib/postgresql/15/main\n1765000000\n5433\n/tmp/s\n*\n  1234 5\nstandby \n";
        assert_eq!(
            Postmaster::parse(text),
            Some(Postmaster {
                pid: 4242,
                port: 5433,
                socket_dir: Some("/tmp/s".into()),
                status: PmStatus::Standby,
            })
        );
        let ready = text
            .replace("standby ", "ready   ")
            .replace("/tmp/s\n", "\n");
        let pm = Postmaster::parse(&ready).unwrap();
        assert_eq!((pm.status, pm.socket_dir), (PmStatus::Ready, None));
        assert_eq!(Postmaster::parse("4242\n/d\n").map(|p| p.pid), None);
        // Written but the status line not yet there.
        let early = "4242\n/d\n1\n5432\n/tmp\n";
        assert_eq!(
            Postmaster::parse(early).map(|p| p.status),
            Some(PmStatus::Unknown)
        );
    }

    #[test]
    fn shell_words() {
        assert_eq!(shell_word("/tmp/a-b_c.d"), "/tmp/a-b_c.d");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }
}

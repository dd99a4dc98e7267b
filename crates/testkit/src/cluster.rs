//! Real PostgreSQL clusters: initdb into a short temp dir (the Unix socket, the server log and
//! any certificates live there too), a free port, `pg_ctl stop -m immediate` on drop with the
//! server log tail shown when the test is failing. One builder covers what every test binary
//! needs: pg_hba lines, TLS, the authentication test roles, data checksums, extra settings,
//! an archive_command, and another PostgreSQL version's server programs.

use std::fmt::{Debug, Display, Write as _};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::cmd::{describe, output, run, stdout_of};
use crate::dirs::{append, list_dir, tail, temp_dir};
use crate::programs::{pg_bindir, pg_command, pg_program};
use crate::user::{give_to_pg, mkdir_for_pg, unprivileged};
use crate::{certs, free_port};

/// A role with an md5 password and REPLICATION (see [`PgClusterBuilder::auth_roles`]; the
/// password of every role is [`password_of`] its name).
pub const MD5_USER: &str = "md5user";
/// A role with a SCRAM password and REPLICATION.
pub const SCRAM_USER: &str = "scramuser";
/// Has a pg_hba replication line but no REPLICATION attribute.
pub const NOREPL_USER: &str = "norepl";
/// Exists, but no pg_hba line allows it a replication connection.
pub const NOHBA_USER: &str = "nohba";
/// Allowed only over TLS (hostssl).
pub const TLS_USER: &str = "tlsuser";

/// The password of an authentication test role.
pub fn password_of(user: &str) -> String {
    format!("{user}-pw")
}

/// How many lines of the server log a failure message shows.
const LOG_TAIL: usize = 40;

/// TLS for a cluster about to be created (see [`certs::test_chain`]).
#[derive(Clone, Debug)]
enum Tls {
    CaSigned,
    SelfSigned(String),
}

/// Settings for a cluster about to be created or started.
#[derive(Default, Clone)]
pub struct PgClusterBuilder {
    conf: Vec<String>,
    initdb_args: Vec<String>,
    bindir: Option<PathBuf>,
    hba: Option<String>,
    tls: Option<Tls>,
    auth_roles: bool,
}

impl PgClusterBuilder {
    /// Appends a line to postgresql.conf (later lines win).
    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.conf.push(line.into());
        self
    }

    /// An extra initdb argument.
    pub fn initdb_arg(mut self, arg: impl Into<String>) -> Self {
        self.initdb_args.push(arg.into());
        self
    }

    /// initdb --data-checksums.
    pub fn data_checksums(self) -> Self {
        self.initdb_arg("--data-checksums")
    }

    /// Run initdb, pg_ctl and postgres from `dir` instead of [`pg_bindir`] (another major
    /// version, say). psql and pgbench still come from the common search order: libpq clients
    /// talk to newer servers.
    pub fn bindir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bindir = Some(dir.into());
        self
    }

    /// Replaces pg_hba.conf with `lines` before the server starts (keep a `local ... postgres
    /// trust` line: [`PgCluster::psql`] connects over the socket as `postgres`).
    pub fn hba(mut self, lines: &str) -> Self {
        self.hba = Some(lines.to_owned());
        self
    }

    /// archive_mode = on with `command` as archive_command.
    pub fn archive_command(self, command: &str) -> Self {
        self.conf("archive_mode = on")
            .conf(format!("archive_command = '{command}'"))
    }

    /// ssl = on with the test certificate chain of [`certs::test_chain`] in
    /// [`PgCluster::base_dir`]: `server.crt` for `localhost`, signed by `ca.crt`; `other-ca.crt`
    /// does not lead to it.
    pub fn tls(mut self) -> Self {
        self.tls = Some(Tls::CaSigned);
        self
    }

    /// Like [`tls`](Self::tls), but `server.crt` is self-signed for `CN=localhost` and
    /// subjectAltName `san` (e.g. `DNS:localhost,IP:127.0.0.1`); `ca.crt` and `other-ca.crt`
    /// are still made, and do not lead to it.
    pub fn tls_self_signed(mut self, san: &str) -> Self {
        self.tls = Some(Tls::SelfSigned(san.to_owned()));
        self
    }

    /// The authentication test roles ([`MD5_USER`], [`SCRAM_USER`], [`NOREPL_USER`],
    /// [`NOHBA_USER`], [`TLS_USER`]), created after initdb, and a pg_hba.conf with one
    /// replication line for each case (replacing any [`hba`](Self::hba)): trust over the
    /// socket, md5, scram-sha-256, hostssl for [`TLS_USER`], none for [`NOHBA_USER`], and
    /// trust for `postgres` over TCP.
    pub fn auth_roles(mut self) -> Self {
        self.auth_roles = true;
        self.hba(&format!(
            "local all postgres trust\n\
             local replication all trust\n\
             host replication {MD5_USER} 127.0.0.1/32 md5\n\
             host replication {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n\
             host replication {NOREPL_USER} 127.0.0.1/32 scram-sha-256\n\
             hostssl replication {TLS_USER} 127.0.0.1/32 scram-sha-256\n\
             host replication postgres 127.0.0.1/32 trust\n"
        ))
    }

    /// initdb a new cluster in its own temp dir and start it.
    #[track_caller]
    pub fn init(self) -> PgCluster {
        let base = temp_dir("cluster dir");
        let data_dir = base.path().join("data");
        let bindir = self.server_bindir();
        let mut cmd = unprivileged(bindir.join("initdb"));
        cmd.arg("-D")
            .arg(&data_dir)
            .args([
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .args(&self.initdb_args);
        run(&mut cmd);
        let auth_roles = self.auth_roles;
        let cluster = self.start(base, data_dir);
        if auth_roles {
            cluster.create_auth_roles();
        }
        cluster
    }

    /// Start a server on an existing data directory (a restored one, say). It must be owned by
    /// the PostgreSQL user with mode 0700 or 0750. Socket and log live in a new temp dir.
    #[track_caller]
    pub fn start_existing(self, data_dir: &Path) -> PgCluster {
        self.start(temp_dir("cluster dir"), data_dir.to_owned())
    }

    fn server_bindir(&self) -> PathBuf {
        self.bindir
            .clone()
            .unwrap_or_else(|| pg_bindir().to_owned())
    }

    fn start(self, base: tempfile::TempDir, data_dir: PathBuf) -> PgCluster {
        let sock_dir = base.path().join("s");
        mkdir_for_pg(&sock_dir);
        let mut conf = String::from("\n# added by the pitr test harness\nfsync = off\n");
        if let Some(tls) = &self.tls {
            let san = match tls {
                Tls::CaSigned => None,
                Tls::SelfSigned(san) => Some(san.as_str()),
            };
            certs::test_chain(base.path(), san);
            writeln!(
                conf,
                "ssl = on\nssl_cert_file = '{0}/server.crt'\nssl_key_file = '{0}/server.key'",
                base.path().display()
            )
            .expect("write to a String");
        }
        for line in &self.conf {
            writeln!(conf, "{line}").expect("write to a String");
        }
        append(&data_dir.join("postgresql.conf"), &conf);
        if let Some(hba) = &self.hba {
            let path = data_dir.join("pg_hba.conf");
            // Rewriting an existing file keeps its owner (the PostgreSQL user).
            fs::write(&path, hba).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        let mut cluster = PgCluster {
            bindir: self.server_bindir(),
            log_file: base.path().join("server.log"),
            base,
            data_dir,
            sock_dir,
            port: 0,
            running: false,
        };
        cluster.start_server();
        cluster
    }
}

/// The arguments of `psql` running `sql` over the socket in `sock_dir` on `port`, as
/// `postgres`, unaligned and tuples only, stopping at the first error.
pub fn psql_command(sock_dir: &Path, port: u16, sql: &str) -> Command {
    let mut cmd = pg_command("psql");
    cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(sock_dir)
        .args([
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ]);
    cmd
}

/// Stops the server on `data_dir` (immediate) with `bindir`'s pg_ctl if a postmaster.pid says
/// one runs; a failure is reported on stderr, not raised (this runs on drop).
pub fn stop_immediately(bindir: &Path, data_dir: &Path) {
    if !data_dir.join("postmaster.pid").exists() {
        return;
    }
    let mut cmd = unprivileged(bindir.join("pg_ctl"));
    cmd.arg("stop")
        .arg("-D")
        .arg(data_dir)
        .args(["-m", "immediate", "-w", "-t", "60"]);
    let out = output(&mut cmd);
    if !out.status.success() {
        eprintln!("could not stop PostgreSQL\n{}", describe(&cmd, &out));
    }
}

/// A running PostgreSQL server. Stopped (immediate) on drop; when the test is failing, the
/// tail of the server log goes to stderr.
pub struct PgCluster {
    base: tempfile::TempDir,
    data_dir: PathBuf,
    sock_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    running: bool,
    /// Where this cluster's initdb, pg_ctl and postgres come from.
    bindir: PathBuf,
}

impl PgCluster {
    pub fn builder() -> PgClusterBuilder {
        PgClusterBuilder::default()
    }

    /// initdb + start with default settings.
    pub fn init() -> PgCluster {
        PgClusterBuilder::default().init()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory this cluster's server programs (initdb, pg_ctl, postgres) come from.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The base temp dir holding the socket dir, the log, the certificates (with TLS) and (for
    /// `init`) the data directory.
    pub fn base_dir(&self) -> &Path {
        self.base.path()
    }

    pub fn socket_dir(&self) -> &Path {
        &self.sock_dir
    }

    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Path of a file in pg_wal.
    pub fn wal_path(&self, name: &str) -> PathBuf {
        self.data_dir.join("pg_wal").join(name)
    }

    /// A program for this cluster: its own directory's when that has it (pg_controldata must
    /// match the server's version), else from the common search order.
    fn program(&self, name: &str) -> Command {
        let own = self.bindir.join(name);
        unprivileged(if own.is_file() { own } else { pg_program(name) })
    }

    fn pg_ctl(&self) -> Command {
        unprivileged(self.bindir.join("pg_ctl"))
    }

    /// A libpq key=value connection string over the unix socket, as superuser `postgres`
    /// (what `pitr backup -d` takes).
    pub fn socket_connstr(&self) -> String {
        self.socket_conn("")
    }

    /// `host=<socket dir> port=… user=postgres` plus `extra`.
    pub fn socket_conn(&self, extra: &str) -> String {
        format!(
            "host={} port={} user=postgres {extra}",
            self.sock_dir.display(),
            self.port
        )
        .trim_end()
        .to_owned()
    }

    /// `host=127.0.0.1 port=…` plus `extra`.
    pub fn tcp_conn(&self, extra: &str) -> String {
        format!("host=127.0.0.1 port={} {extra}", self.port)
            .trim_end()
            .to_owned()
    }

    /// A libpq connection string over TCP, as superuser `postgres`.
    pub fn connstr(&self) -> String {
        self.tcp_conn("user=postgres dbname=postgres")
    }

    /// Starts the server (again); retries on a new port if the chosen one was taken.
    #[track_caller]
    pub fn start_server(&mut self) {
        assert!(!self.running, "server already running");
        for attempt in 1..=5 {
            self.port = free_port();
            let opts = format!(
                "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
                self.port,
                self.sock_dir.display()
            );
            let log_len = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
            let mut cmd = self.pg_ctl();
            cmd.arg("start")
                .arg("-w")
                .args(["-t", "120"])
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&self.log_file)
                .arg("-o")
                .arg(&opts);
            let out = output(&mut cmd);
            if out.status.success() {
                self.running = true;
                return;
            }
            let log = fs::read(&self.log_file).unwrap_or_default();
            let new_log = String::from_utf8_lossy(&log[(log_len as usize).min(log.len())..]);
            if attempt < 5 && new_log.contains("could not bind") {
                continue; // port taken between free_port() and the server's bind
            }
            panic!(
                "could not start PostgreSQL\n{}\n--- server log ---\n{}",
                describe(&cmd, &out),
                self.log_tail(60)
            );
        }
    }

    /// Stops the server with `mode` (`fast`, `immediate`, `smart`).
    #[track_caller]
    pub fn stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let mut cmd = self.pg_ctl();
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w", "-t", "120"]);
        run(&mut cmd);
        self.running = false;
    }

    /// Stops the server, starts it again as a standby of nothing (standby.signal, local WAL
    /// only) and promotes it: the cluster continues on the next timeline.
    #[track_caller]
    pub fn promote_to_next_timeline(&mut self) {
        self.stop("fast");
        let signal = self.data_dir.join("standby.signal");
        fs::write(&signal, "").unwrap_or_else(|e| panic!("write {}: {e}", signal.display()));
        give_to_pg(&signal);
        self.start_server();
        let mut cmd = self.pg_ctl();
        cmd.arg("promote")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", "120"]);
        self.run_explained(&mut cmd, "could not promote PostgreSQL", LOG_TAIL);
    }

    /// Runs `cmd` (a client of this server) and panics unless it exits 0, with `what`, the
    /// command, its output and the last `log_lines` lines of the server log.
    #[track_caller]
    pub fn run_explained(&self, cmd: &mut Command, what: &str, log_lines: usize) -> Output {
        let out = output(cmd);
        if !out.status.success() {
            panic!(
                "{what}\n{}\n--- server log ---\n{}",
                describe(cmd, &out),
                self.log_tail(log_lines)
            );
        }
        out
    }

    /// The last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_file, n)
    }

    /// Runs SQL with psql (unaligned, tuples only) and returns stdout without the final
    /// newline. Panics, with the server log tail, on error.
    #[track_caller]
    pub fn psql(&self, sql: &str) -> String {
        let out = self.run_explained(
            &mut psql_command(&self.sock_dir, self.port, sql),
            "psql failed",
            30,
        );
        stdout_of(&out).trim_end_matches('\n').to_owned()
    }

    /// "Database system identifier" from pg_controldata.
    #[track_caller]
    pub fn controldata_system_identifier(&self) -> u64 {
        let mut cmd = self.program("pg_controldata");
        cmd.arg(&self.data_dir);
        let out = run(&mut cmd);
        let text = stdout_of(&out);
        text.lines()
            .find_map(|l| l.strip_prefix("Database system identifier:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no system identifier in pg_controldata output\n{}",
                    describe(&cmd, &out)
                )
            })
    }

    /// `server_version_num` of the running server (150018, 180004, ...).
    #[track_caller]
    pub fn server_version_num(&self) -> u32 {
        let v = self.psql("show server_version_num");
        v.parse()
            .unwrap_or_else(|e| panic!("server_version_num {v:?}: {e}"))
    }

    /// Unwraps `result`, or panics saying what failed, with the server log tail.
    #[track_caller]
    pub fn ok<T, E: Debug + Display>(&self, result: Result<T, E>, what: &str) -> T {
        match result {
            Ok(v) => v,
            Err(e) => panic!(
                "{what}: {e}\n({e:?})\n--- server log ---\n{}",
                self.log_tail(LOG_TAIL)
            ),
        }
    }

    /// Unwraps the error of `result`, or panics saying what unexpectedly succeeded.
    #[track_caller]
    pub fn err<T, E>(&self, result: Result<T, E>, what: &str) -> E {
        match result {
            Ok(_) => panic!(
                "{what}: succeeded but should have failed\n--- server log ---\n{}",
                self.log_tail(LOG_TAIL)
            ),
            Err(e) => e,
        }
    }

    /// Waits until the server has left recovery (promoted) and accepts writes. Panics, with
    /// the server log tail, after `timeout`.
    #[track_caller]
    pub fn wait_promoted(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.psql("select pg_is_in_recovery()") == "f" {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "server still in recovery after {timeout:?}\n--- server log ---\n{}",
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs pgbench against database `postgres` with `args` (e.g. `["-i", "-s", "5"]`).
    #[track_caller]
    pub fn pgbench(&self, args: &[&str]) -> Output {
        let mut cmd = pg_command("pgbench");
        cmd.arg("-h")
            .arg(&self.sock_dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres"])
            .args(args)
            .arg("postgres");
        run(&mut cmd)
    }

    /// Writes a little WAL, switches to a new segment and returns the name of the segment
    /// just completed.
    #[track_caller]
    pub fn switch_wal(&self) -> String {
        let out = self.psql(
            "create table if not exists pitr_switch (i int); \
             insert into pitr_switch values (1); \
             select pg_walfile_name(pg_switch_wal())",
        );
        out.lines().last().unwrap_or_default().to_owned()
    }

    /// Name of the segment WAL is currently written to.
    pub fn current_segment(&self) -> String {
        self.psql("select pg_walfile_name(pg_current_wal_insert_lsn())")
    }

    /// Names waiting in pg_wal/archive_status (`.ready`), sorted.
    pub fn ready_to_archive(&self) -> Vec<String> {
        let mut ready: Vec<String> = list_dir(&self.data_dir.join("pg_wal/archive_status"))
            .iter()
            .filter_map(|p| {
                p.file_name()?
                    .to_str()?
                    .strip_suffix(".ready")
                    .map(str::to_owned)
            })
            .collect();
        ready.sort();
        ready
    }

    /// Waits until the archiver has archived `name` (or a later file) and nothing waits to be
    /// archived. Panics at once if an archive attempt failed, or after `timeout`.
    #[track_caller]
    pub fn wait_archived(&self, name: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let row = self.psql(
                "select coalesce(last_archived_wal, ''), failed_count, \
                 coalesce(last_failed_wal, '') from pg_stat_archiver",
            );
            let fields: Vec<&str> = row.split('|').collect();
            let (last, failed, last_failed) = (fields[0], fields[1], fields[2]);
            if failed != "0" {
                panic!(
                    "archive_command failed {failed} time(s), last on {last_failed} \
                     (pg_stat_archiver: {row})\n--- server log ---\n{}",
                    self.log_tail(60)
                );
            }
            let ready = self.ready_to_archive();
            if last >= name && ready.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{name} not archived after {timeout:?}: last_archived_wal={last}, \
                     waiting: {ready:?}\n--- server log ---\n{}",
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until an archive attempt has failed and returns pg_stat_archiver.last_failed_wal.
    /// Panics after `timeout`.
    #[track_caller]
    pub fn wait_archive_failure(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let row = self
                .psql("select failed_count, coalesce(last_failed_wal, '') from pg_stat_archiver");
            if let Some((failed, last_failed)) = row.split_once('|') {
                if failed != "0" {
                    return last_failed.to_owned();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "no archive attempt failed within {timeout:?} (pg_stat_archiver: {row})\n\
                     --- server log ---\n{}",
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// (archived_count, failed_count, last_archived_wal) from pg_stat_archiver.
    pub fn archiver_stats(&self) -> (u64, u64, String) {
        let row = self.psql(
            "select archived_count, failed_count, coalesce(last_archived_wal, '') \
             from pg_stat_archiver",
        );
        let f: Vec<&str> = row.split('|').collect();
        let num = |s: &str| -> u64 {
            s.parse()
                .unwrap_or_else(|e| panic!("pg_stat_archiver row {row:?}: {e}"))
        };
        (num(f[0]), num(f[1]), f[2].to_owned())
    }

    fn create_auth_roles(&self) {
        self.psql(&format!(
            "SET password_encryption = 'md5';
             CREATE ROLE {MD5_USER} LOGIN REPLICATION PASSWORD '{}';
             SET password_encryption = 'scram-sha-256';
             CREATE ROLE {SCRAM_USER} LOGIN REPLICATION PASSWORD '{}';
             CREATE ROLE {TLS_USER} LOGIN REPLICATION PASSWORD '{}';
             CREATE ROLE {NOREPL_USER} LOGIN PASSWORD '{}';
             CREATE ROLE {NOHBA_USER} LOGIN REPLICATION PASSWORD '{}';",
            password_of(MD5_USER),
            password_of(SCRAM_USER),
            password_of(TLS_USER),
            password_of(NOREPL_USER),
            password_of(NOHBA_USER),
        ));
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- server log {} (last 60 lines) ---\n{}\n--- end of server log ---",
                self.log_file.display(),
                self.log_tail(60)
            );
        }
        if self.running {
            stop_immediately(&self.bindir, &self.data_dir);
        }
    }
}

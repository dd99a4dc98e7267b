//! A real PostgreSQL cluster per test: initdb into a short `/tmp/pp-XXXXXX` directory (the
//! Unix socket lives there too), pg_hba.conf with one line per authentication case, an
//! optional TLS certificate chain, and `pg_ctl -m immediate stop` on drop. As root, every
//! PostgreSQL program runs as the `postgres` user.

#![allow(dead_code)] // not every test uses every helper

use std::ffi::CString;
use std::fmt::Debug;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// Roles every cluster gets (password = role name + "-pw").
pub const MD5_USER: &str = "md5user";
pub const SCRAM_USER: &str = "scramuser";
/// Has a pg_hba replication line but no REPLICATION attribute.
pub const NOREPL_USER: &str = "norepl";
/// Exists, but no pg_hba line allows it a replication connection.
pub const NOHBA_USER: &str = "nohba";
/// Allowed only over TLS (hostssl).
pub const TLS_USER: &str = "tlsuser";

pub fn password_of(user: &str) -> String {
    format!("{user}-pw")
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// ssl=on with a server certificate for `localhost` signed by a test CA.
    pub ssl: bool,
    /// initdb --data-checksums.
    pub checksums: bool,
    /// Appended to postgresql.conf.
    pub extra_conf: &'static str,
    /// With `ssl`: the server certificate is instead self-signed, as PostgreSQL's
    /// documentation makes it (`openssl req -x509`, hence `CA:TRUE`), for `CN=localhost`
    /// and this subjectAltName (e.g. `DNS:localhost,IP:127.0.0.1`). `ca.crt` and
    /// `other-ca.crt` are still made, and do not lead to it.
    pub self_signed_san: Option<&'static str>,
}

/// uid/gid of `postgres` when running as root, `None` otherwise.
fn pg_ids() -> Option<(u32, u32)> {
    static IDS: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *IDS.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let name = CString::new("postgres").expect("no NUL in a literal");
        // SAFETY: valid C string; the record is read at once, under the OnceLock.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        assert!(
            !pw.is_null(),
            "running as root, PostgreSQL needs a `postgres` user to run as"
        );
        // SAFETY: pw is non-null and points to getpwnam's static record.
        Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
    })
}

fn give_to_pg(path: &Path) {
    if let Some((uid, gid)) = pg_ids() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
    }
}

/// Directories that may hold PostgreSQL programs, the one under test first: PITR_PG_BINDIR,
/// `pg_config --bindir`, then /usr/lib/postgresql/*/bin, newest first.
fn bindirs() -> &'static [PathBuf] {
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DIRS.get_or_init(|| {
        let mut dirs = Vec::new();
        if let Some(dir) = std::env::var_os("PITR_PG_BINDIR") {
            dirs.push(PathBuf::from(dir));
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            if out.status.success() {
                dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
            }
        }
        let mut system: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let major = e.file_name().to_str()?.parse().ok()?;
                Some((major, e.path().join("bin")))
            })
            .collect();
        system.sort();
        dirs.extend(system.into_iter().rev().map(|(_, d)| d));
        dirs.retain(|d| d.join("initdb").exists() || d.join("psql").exists());
        assert!(
            !dirs.is_empty(),
            "PostgreSQL binaries not found: set PITR_PG_BINDIR"
        );
        dirs
    })
}

/// The server under test comes from the first directory; client tools (psql, pg_controldata)
/// from the first that has them, since some builds ship only initdb, pg_ctl and postgres.
fn program_path(program: &str) -> PathBuf {
    let dirs = bindirs();
    let server_side = matches!(program, "initdb" | "pg_ctl" | "postgres");
    let candidates = if server_side { &dirs[..1] } else { dirs };
    candidates
        .iter()
        .map(|d| d.join(program))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{program} not found in {candidates:?}"))
}

/// A PostgreSQL program, run as `postgres` when we are root.
pub fn pg_command(program: &str) -> Command {
    let mut cmd = Command::new(program_path(program));
    cmd.current_dir("/").stdin(Stdio::null());
    if let Some((uid, gid)) = pg_ids() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Run `cmd`; panic with the command line, status and output unless it succeeds.
#[track_caller]
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "command failed: {cmd:?}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

pub struct PgServer {
    dir: tempfile::TempDir,
    pub data: PathBuf,
    pub port: u16,
    log: PathBuf,
    running: bool,
}

impl PgServer {
    pub fn start(options: Options) -> PgServer {
        let mut dir = tempfile::Builder::new()
            .prefix("pp-")
            .tempdir_in("/tmp")
            .expect("create a temp dir under /tmp");
        if std::env::var_os("PITR_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping test dir {}", dir.path().display());
        }
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod test dir");
        give_to_pg(dir.path());
        let data = dir.path().join("data");
        let mut initdb = pg_command("initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        if options.checksums {
            initdb.arg("--data-checksums");
        }
        run(&mut initdb);

        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("find a free port")
            .port();
        let mut conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\n\
             unix_socket_directories = '{}'\nwal_level = replica\nmax_wal_senders = 10\n\
             fsync = off\nlog_connections = on\nlog_replication_commands = on\n",
            dir.path().display()
        );
        if options.ssl {
            make_certificates(dir.path(), options.self_signed_san);
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{0}/server.crt'\nssl_key_file = '{0}/server.key'\n",
                dir.path().display()
            ));
        }
        conf.push_str(options.extra_conf);
        conf.push('\n');
        append(&data.join("postgresql.conf"), &conf);
        fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all postgres trust\n\
                 local replication all trust\n\
                 host replication {MD5_USER} 127.0.0.1/32 md5\n\
                 host replication {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n\
                 host replication {NOREPL_USER} 127.0.0.1/32 scram-sha-256\n\
                 hostssl replication {TLS_USER} 127.0.0.1/32 scram-sha-256\n\
                 host replication postgres 127.0.0.1/32 trust\n"
            ),
        )
        .expect("write pg_hba.conf");

        let log = dir.path().join("server.log");
        let mut server = PgServer {
            dir,
            data,
            port,
            log,
            running: false,
        };
        server.pg_ctl(&["-l", &server.log.display().to_string(), "-t", "60", "start"]);
        server.running = true;
        server.psql(&format!(
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
        server
    }

    /// Run `pg_ctl -D <data> -w <args>`; panic with its output and the server log on failure.
    #[track_caller]
    pub fn pg_ctl(&self, args: &[&str]) {
        let out = pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-w")
            .args(args)
            .output()
            .expect("run pg_ctl");
        if !out.status.success() {
            panic!(
                "pg_ctl {args:?} failed ({})\n{}\n--- server log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
    }

    /// Stop the server, start it again as a standby of nothing (standby.signal, local WAL
    /// only) and promote it: the cluster continues on the next timeline.
    pub fn promote_to_next_timeline(&self) {
        self.pg_ctl(&["-m", "fast", "stop"]);
        let signal = self.data.join("standby.signal");
        fs::write(&signal, "").expect("write standby.signal");
        give_to_pg(&signal);
        self.pg_ctl(&["-l", &self.log.display().to_string(), "start"]);
        self.pg_ctl(&["promote"]);
    }

    /// The directory holding the socket, certificates and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `host=<socket dir> port=… user=postgres` plus `extra`.
    pub fn socket_conn(&self, extra: &str) -> String {
        format!(
            "host={} port={} user=postgres {extra}",
            self.dir().display(),
            self.port
        )
    }

    /// `host=127.0.0.1 port=…` plus `extra`.
    pub fn tcp_conn(&self, extra: &str) -> String {
        format!("host=127.0.0.1 port={} {extra}", self.port)
    }

    /// Run SQL as the superuser over the socket; returns unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        let out = pg_command("psql")
            .arg("-h")
            .arg(self.dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("run psql");
        if !out.status.success() {
            panic!(
                "psql failed: {sql}\n{}\n--- server log ---\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// "Database system identifier" from pg_controldata.
    pub fn controldata_system_identifier(&self) -> u64 {
        let out = run(pg_command("pg_controldata").arg(&self.data));
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("Database system identifier:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no system identifier in pg_controldata output:\n{text}"))
    }

    /// The last lines of the server log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Unwrap `result`, or panic saying what failed, with the server log tail.
    #[track_caller]
    pub fn ok<T, E: Debug + std::fmt::Display>(&self, result: Result<T, E>, what: &str) -> T {
        match result {
            Ok(v) => v,
            Err(e) => panic!(
                "{what}: {e}\n({e:?})\n--- server log ---\n{}",
                self.log_tail()
            ),
        }
    }

    /// Unwrap the error of `result`, or panic saying what unexpectedly succeeded.
    #[track_caller]
    pub fn err<T, E>(&self, result: Result<T, E>, what: &str) -> E {
        match result {
            Ok(_) => panic!(
                "{what}: succeeded but should have failed\n--- server log ---\n{}",
                self.log_tail()
            ),
            Err(e) => e,
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let _ = pg_command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
}

/// `ca.crt` (test CA), `server.crt`/`server.key` (for DNS name `localhost` only, signed by the
/// CA, or self-signed for `self_signed_san`) and `other-ca.crt` (an unrelated self-signed
/// certificate) in `dir`.
fn make_certificates(dir: &Path, self_signed_san: Option<&str>) {
    let openssl = |args: &[&str]| {
        run(Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null()))
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=pitr-test-ca",
        "-days",
        "1",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    fs::write(
        dir.join("server.ext"),
        "subjectAltName = DNS:localhost\nbasicConstraints = CA:FALSE\n",
    )
    .expect("write server.ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=other",
        "-days",
        "1",
        "-keyout",
        "other-ca.key",
        "-out",
        "other-ca.crt",
    ]);
    if let Some(san) = self_signed_san {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            &format!("subjectAltName={san}"),
            "-keyout",
            "server.key",
            "-out",
            "server.crt",
        ]);
    }
    let key = dir.join("server.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod server.key");
    give_to_pg(&key);
    give_to_pg(&dir.join("server.crt"));
}

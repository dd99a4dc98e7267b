//! A moto S3 server for tests: started on a free loopback port, killed (with its process
//! group) on drop. Used by the store's `s3` test and the integration tests.
//!
//! moto is found as `$PITR_MOTO_SERVER` or `moto_server` on PATH. Without it tests say they
//! skipped and pass, unless `PITR_REQUIRE_S3=1` (as CI sets), where they fail.
//! Install: `pip install 'moto[server]==5.2.1'` (see `.ci/s3-server-deps`).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

pub const INSTALL: &str = "pip install 'moto[server]==5.2.1'";
/// How long moto may take to answer its first request (it imports every AWS service model).
const STARTUP: Duration = Duration::from_secs(60);

/// A moto server on 127.0.0.1, killed on drop (with its whole process group).
pub struct S3Server {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl S3Server {
    pub fn start(program: &OsString) -> S3Server {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("create the moto log file");
        let reopen = || log.reopen().expect("reopen the moto log file");
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(reopen())
            .stderr(reopen())
            // Its own process group, so that drop ends any wrapper's children too.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program:?}: {e}"));
        let mut server = S3Server { child, port, log };
        server.wait_ready();
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Poll `GET /` until the server answers 200; fail early if it exits.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + STARTUP;
        loop {
            let exited = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("wait for the moto server: {e}"));
            if let Some(status) = exited {
                panic!(
                    "moto server exited before it was ready ({status}); its output:\n{}",
                    self.log()
                );
            }
            let last_error = match http(self.port, "GET", "/") {
                Ok(200) => return,
                Ok(status) => format!("GET / answered {status}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                panic!(
                    "moto server on port {} not ready after {STARTUP:?} (last: {last_error}); \
                     its output:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Create a bucket. moto checks no signature on bucket creation, so a bare request does.
    pub fn create_bucket(&self, bucket: &str) {
        let status = http(self.port, "PUT", &format!("/{bucket}"))
            .unwrap_or_else(|e| panic!("creating bucket {bucket}: {e}"));
        assert_eq!(
            status,
            200,
            "creating bucket {bucket}; server output:\n{}",
            self.log()
        );
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One bodiless HTTP/1.1 request to 127.0.0.1:`port`; returns the response status.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response)?;
    let head = String::from_utf8_lossy(&response);
    // "HTTP/1.1 200 OK"
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP response: {:?}", head.lines().next()),
            )
        })
}

/// The moto server program, if one is installed and runs.
pub fn find_moto() -> Option<OsString> {
    if let Some(program) = std::env::var_os("PITR_MOTO_SERVER") {
        // Named explicitly: it must work.
        assert!(
            runs(&program),
            "PITR_MOTO_SERVER={program:?} does not run (`{program:?} --help` failed)"
        );
        return Some(program);
    }
    let program = OsString::from("moto_server");
    // `--help` rather than a PATH lookup alone: a pyenv shim is on PATH even where the
    // current Python has no moto.
    runs(&program).then_some(program)
}

fn runs(program: &OsString) -> bool {
    Command::new(program)
        .arg("--help")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn require_s3() -> bool {
    std::env::var("PITR_REQUIRE_S3").is_ok_and(|v| v == "1")
}

/// Say so where it is seen even when the test harness captures output (it captures only
/// `print!`/`eprint!`, not writes to the stderr handle itself).
pub fn shout(msg: &str) {
    let bar = "!".repeat(78);
    let _ = writeln!(std::io::stderr().lock(), "\n{bar}\n{msg}\n{bar}\n");
}

/// The AWS_* settings that point the store's S3 client at `endpoint` (test credentials,
/// path-style requests, plain HTTP).
pub fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT", endpoint.to_string()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "pitr-test-key".into()),
        ("AWS_SECRET_ACCESS_KEY", "pitr-test-secret".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".into()),
    ]
}

/// The moto server, or `None` after saying the test `name` skipped; panics instead of
/// skipping when `PITR_REQUIRE_S3=1` (as CI sets).
pub fn start_or_skip(name: &str) -> Option<S3Server> {
    let Some(program) = find_moto() else {
        let msg = format!(
            "{name}: no S3 server: moto_server is not installed (install with: {INSTALL}, \
             or set PITR_MOTO_SERVER to its path)"
        );
        if require_s3() {
            panic!("{msg}; PITR_REQUIRE_S3=1 requires it");
        }
        shout(&format!("skipped: {msg}"));
        return None;
    };
    Some(S3Server::start(&program))
}

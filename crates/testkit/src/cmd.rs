//! Running commands so that a failing test explains itself: the command line, the user it ran
//! as, its status, stdout and stderr.

use std::io::ErrorKind;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};

use crate::user::pg_user;

/// Runs `cmd` (stdin closed) and returns its output whatever its status.
pub fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"))
}

/// Starts `cmd` (stdin closed) in the background, with stdout and stderr as the caller set
/// them; panics, naming it, if it cannot start.
pub fn spawn(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"))
}

/// Runs `cmd` and panics, showing the command line, status, stdout and stderr, unless it
/// exits 0.
#[track_caller]
pub fn run(cmd: &mut Command) -> Output {
    let out = output(cmd);
    if !out.status.success() {
        panic!("command failed\n{}", describe(cmd, &out));
    }
    out
}

/// Runs `cmd` and panics, explaining itself, unless it exits with exactly `code`.
#[track_caller]
pub fn run_expect_code(cmd: &mut Command, code: i32) -> Output {
    let out = output(cmd);
    if out.status.code() != Some(code) {
        panic!("expected exit status {code}\n{}", describe(cmd, &out));
    }
    out
}

/// The command line, exit status, stdout and stderr of a finished command, for failure messages.
pub fn describe(cmd: &Command, out: &Output) -> String {
    format!(
        "command: {cmd:?}{}\nstatus:  {}\n--- stdout ---\n{}\n--- stderr ---\n{}--- end ---",
        if pg_user().is_some() {
            " (as user postgres)"
        } else {
            ""
        },
        status_text(out.status),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    )
}

/// "exit 1", "killed by signal 9", ...
pub fn status_text(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{status}"),
    }
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` (stdin closed) like [`output`] and also returns the child's peak resident set
/// size in KiB, from the kernel's accounting when it is reaped (`wait4` rusage, `ru_maxrss`).
pub fn output_with_max_rss(cmd: &mut Command) -> (Output, u64) {
    use std::io::Read;
    let mut child = spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of a plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own unreaped child; status and usage are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        assert!(
            err.kind() == ErrorKind::Interrupted,
            "wait4 {pid} ({cmd:?}): {err}"
        );
    }
    // `child` is reaped already: never wait on it again (dropping a Child does not wait).
    drop(child);
    let out = Output {
        status: ExitStatus::from_raw(status),
        stdout: stdout.join().expect("stdout reader thread"),
        stderr: stderr.join().expect("stderr reader thread"),
    };
    // ru_maxrss is in KiB on Linux.
    (out, u64::try_from(usage.ru_maxrss).unwrap_or(0))
}

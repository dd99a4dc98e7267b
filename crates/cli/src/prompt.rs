//! Asking for a new passphrase on the terminal (`pitr init --encryption`, `pitr key add`) when
//! no file or variable gives one, as restic and borg do: read from `/dev/tty` with echo off,
//! twice. Only when stdin and stderr are both terminals, so that scripts, units and
//! PostgreSQL's commands never block on a prompt.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;

use anyhow::{bail, Context};
use pitr_store::Secret;
use zeroize::Zeroizing;

/// A new passphrase typed twice at the terminal, or `None` when there is no terminal to ask.
pub fn new_passphrase(what: &str) -> anyhow::Result<Option<Secret>> {
    // SAFETY: isatty only looks at the descriptors.
    let interactive = unsafe { libc::isatty(0) == 1 && libc::isatty(2) == 1 };
    if !interactive {
        return Ok(None);
    }
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("open /dev/tty to ask for the passphrase")?;
    let first = read_hidden(&tty, &format!("New passphrase for {what}: "))?;
    if first.is_empty() {
        bail!("the passphrase is empty");
    }
    let again = read_hidden(&tty, "The same passphrase again: ")?;
    if *first != *again {
        bail!("the two passphrases differ; nothing was changed");
    }
    Ok(Some(Secret::new(first.as_str(), "the terminal")))
}

/// Echo off while a line is read; the terminal's settings come back whatever happens.
struct EchoOff<'a> {
    tty: &'a File,
    saved: libc::termios,
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        // SAFETY: restores settings read from the same descriptor.
        unsafe { libc::tcsetattr(self.tty.as_raw_fd(), libc::TCSANOW, &self.saved) };
    }
}

fn read_hidden(tty: &File, prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data that tcgetattr fills in.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is an open terminal; saved is valid for writing.
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return Err(std::io::Error::last_os_error()).context("read the terminal's settings");
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: as above; quiet is a copy of valid settings with echo off.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) } != 0 {
        return Err(std::io::Error::last_os_error()).context("turn the terminal's echo off");
    }
    let _restore = EchoOff { tty, saved };
    let mut out = tty;
    out.write_all(prompt.as_bytes())?;
    out.flush()?;
    let mut line = Zeroizing::new(String::new());
    BufReader::new(tty)
        .read_line(&mut line)
        .context("read the passphrase from the terminal")?;
    while line.ends_with(['\n', '\r']) {
        line.pop();
    }
    Ok(line)
}

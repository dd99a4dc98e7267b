//! Log setup: human or JSON lines on stderr; stdout is kept for machine-readable results.
//!
//! Logging must never change an exit status: stderr may be `/dev/full`, a full log
//! filesystem or a closed pipe, and restore_command's status decides whether PostgreSQL stops
//! or promotes. So every log line is written with its error ignored ([`Stderr`]), and
//! tracing's own "could not write" report (which would print to the same broken stderr and
//! panic) is off.

use std::io::{IsTerminal, Write};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use pitr_settings::cli::Global;
use pitr_settings::options::LogFormat;

pub fn init(global: &Global, format: LogFormat) {
    crate::progress::set_quiet(global.quiet);
    let level = if global.quiet {
        "error"
    } else {
        match global.verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        }
    };
    let filter = EnvFilter::try_from_env("PITR_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,pitr={level},pitr_store={level}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr)
        .log_internal_errors(false)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.without_time().init(),
    }
}

/// stderr, best effort: a line that cannot be written is dropped, never an error or a panic.
#[derive(Clone, Copy, Debug)]
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().lock().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Stderr {
        Stderr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer reports success whatever stderr does: nothing above it can see a failure.
    #[test]
    fn stderr_writer_never_fails() {
        let mut w = Stderr.make_writer();
        assert_eq!(w.write(b"").unwrap(), 0);
        assert_eq!(w.write(b"x\n").unwrap(), 2);
        assert!(w.flush().is_ok());
    }
}

//! Log setup: human or JSON lines on stderr; stdout is kept for machine-readable results.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::Global;
use crate::options::LogFormat;

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
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.without_time().init(),
    }
}

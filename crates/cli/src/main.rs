//! `pitr`: WAL archiving and point-in-time recovery for PostgreSQL. This file is the one place
//! where errors become exit statuses; each command lives in its own module.

mod archive;
mod backup;
mod cli;
mod info;
mod logging;
mod progress;
mod restore;
mod restore_wal;
mod verify;
mod walref;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

/// restore_command: any status above 125 makes PostgreSQL stop recovery instead of treating
/// the file as missing and ending recovery early at the wrong point.
const EXIT_RECOVERY_FATAL: u8 = 255;
/// restore_command: "not in the archive".
const EXIT_NOT_FOUND: u8 = 1;

fn main() -> ExitCode {
    keep_freed_memory();
    let restore_wal = std::env::args().any(|a| a == "restore-wal");
    let failure = if restore_wal { EXIT_RECOVERY_FATAL } else { 1 };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(if restore_wal { failure } else { 2 }),
            };
        }
    };
    logging::init(&cli.global);
    // A panic must not exit 101: for restore_command that would read as "not found".
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli)));
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(err)) => {
            if restore_wal && err.downcast_ref::<restore_wal::NotArchived>().is_some() {
                tracing::info!("{err:#}");
                return ExitCode::from(EXIT_NOT_FOUND);
            }
            tracing::error!("{err:#}");
            ExitCode::from(failure)
        }
        Err(_) => {
            tracing::error!("internal error (panic); see the message above");
            ExitCode::from(failure)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let repo_url = cli::repo_url(&cli.global)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Init(args) => archive::init(&repo_url, args).await,
            Command::ArchiveWal(args) => archive::archive_wal(&repo_url, args).await,
            Command::RestoreWal(args) => restore_wal::restore_wal(&repo_url, args).await,
            Command::Info(args) => info::info(&repo_url, args).await,
            Command::Backup(args) => backup::backup(&repo_url, args).await,
            Command::List(args) => backup::list(&repo_url, args).await,
            Command::Restore(args) => restore::restore(&repo_url, args).await,
            Command::Verify(args) => verify::verify(&repo_url, args).await,
            Command::SpoolClean(args) => restore_wal::clean_spool(&args.pg_wal),
        }
    })
}

/// Chunk buffers are 1 MiB: above glibc's default mmap threshold, each one would be a fresh
/// mapping, page-faulted in and unmapped again (measured: ~10% of archive-wal's CPU time).
/// Keeping them in the heap lets freed buffers be reused.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tuning parameters; called before any threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

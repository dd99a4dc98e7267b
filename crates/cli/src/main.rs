//! `pitr`: WAL archiving and point-in-time recovery for PostgreSQL. The binary parses
//! arguments, sets up logging and progress, runs one command from `commands/`, and is the one
//! place where errors become exit statuses ([`exit_status`]).

mod cli;
mod commands;
mod logging;
mod progress;

use std::process::ExitCode;

use clap::Parser;
use pitr_core::Failure;

use cli::{Cli, Command};

/// Exit statuses: the one table (the README's command table mirrors it).
mod exit {
    /// Any failure of a command other than restore-wal.
    pub const FAILURE: u8 = 1;
    /// Bad arguments (clap's usage errors), except for restore-wal.
    pub const USAGE: u8 = 2;
    /// restore_command: "not in the archive".
    pub const NOT_ARCHIVED: u8 = 1;
    /// restore_command: any status above 125 makes PostgreSQL stop recovery instead of
    /// treating the file as missing and ending recovery early at the wrong point.
    pub const RECOVERY_FATAL: u8 = 255;
}

/// The exit status for a failure of a command (`restore_wal`: the restore_command contract).
fn exit_status(failure: Failure, restore_wal: bool) -> u8 {
    match (failure, restore_wal) {
        (Failure::NotArchived, true) => exit::NOT_ARCHIVED,
        (_, true) => exit::RECOVERY_FATAL,
        (_, false) => exit::FAILURE,
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    let restore_wal = std::env::args().any(|a| a == "restore-wal");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ if restore_wal => ExitCode::from(exit::RECOVERY_FATAL),
                _ => ExitCode::from(exit::USAGE),
            };
        }
    };
    logging::init(&cli.global);
    // A panic must not exit 101: for restore_command that would read as "not found".
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli)));
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(err)) => {
            let failure = Failure::of(&err);
            if restore_wal && failure == Failure::NotArchived {
                tracing::info!("{err:#}");
            } else {
                tracing::error!("{err:#}");
            }
            ExitCode::from(exit_status(failure, restore_wal))
        }
        Err(_) => {
            tracing::error!("internal error (panic); see the message above");
            ExitCode::from(exit_status(Failure::Fatal, restore_wal))
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
            Command::Init(args) => commands::init::run(&repo_url, args).await,
            Command::ArchiveWal(args) => commands::archive_wal::run(&repo_url, args).await,
            Command::RestoreWal(args) => commands::restore_wal::run(&repo_url, args).await,
            Command::Info(args) => commands::info::run(&repo_url, args).await,
            Command::Backup(args) => commands::backup::run(&repo_url, args).await,
            Command::List(args) => commands::list::run(&repo_url, args).await,
            Command::Restore(args) => commands::restore::run(&repo_url, args).await,
            Command::Verify(args) => commands::verify::run(&repo_url, args).await,
            Command::SpoolClean(args) => commands::spool_clean::run(args),
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

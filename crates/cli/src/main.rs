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

/// The exit status for arguments clap refused: restore-wal's usage errors must stop recovery
/// too (a typo in restore_command must not read as "end of archive").
fn usage_status(restore_wal: bool) -> u8 {
    if restore_wal {
        exit::RECOVERY_FATAL
    } else {
        exit::USAGE
    }
}

/// Which subcommand arguments clap refused were meant for: clap parses them again, leniently,
/// so that `--repo /x/restore-wal info` is `info`. Only when even that finds no subcommand
/// (`pitr --repo restore-wal`) is the word looked for in the arguments, as before.
fn refused_subcommand_is_restore_wal(args: &[std::ffi::OsString]) -> bool {
    use clap::CommandFactory;
    let lenient = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(args);
    match lenient.as_ref().ok().and_then(|m| m.subcommand_name()) {
        Some(name) => name == "restore-wal",
        None => args.iter().any(|a| a == "restore-wal"),
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(usage_status(refused_subcommand_is_restore_wal(&args))),
            };
        }
    };
    let restore_wal = matches!(cli.command, Command::RestoreWal(_));
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
            Command::Expire(args) => commands::expire::run(&repo_url, args).await,
            Command::Pin(args) => commands::pin::pin(&repo_url, args).await,
            Command::Unpin(args) => commands::pin::unpin(&repo_url, args).await,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(args: &[&str]) -> bool {
        let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        assert!(Cli::try_parse_from(&args).is_err(), "{args:?} parsed");
        refused_subcommand_is_restore_wal(&args)
    }

    /// The exit status of a refused command line comes from the subcommand clap finds, not
    /// from the word `restore-wal` appearing anywhere.
    #[test]
    fn usage_errors_are_judged_by_the_parsed_subcommand() {
        assert!(refused(&["pitr", "restore-wal", "--bogus-flag", "X", "Y"]));
        assert!(refused(&["pitr", "--repo", "/r", "restore-wal", "X"]));
        assert!(refused(&["pitr", "restore-wal"]));
        assert!(refused(&["pitr", "--bogus", "restore-wal", "X", "Y"]));
        assert!(!refused(&[
            "pitr",
            "--repo",
            "/x/restore-wal",
            "info",
            "--bogus"
        ]));
        assert!(!refused(&["pitr", "archive-wal", "restore-wal"]));
        assert!(!refused(&[
            "pitr",
            "--repo",
            "restore-wal",
            "list",
            "--nope"
        ]));
        // nothing to go by: as before
        assert!(refused(&["pitr", "--repo", "restore-wal"]));
        assert!(!refused(&["pitr", "--bogus"]));
        assert_eq!(usage_status(true), exit::RECOVERY_FATAL);
        assert_eq!(usage_status(false), exit::USAGE);
    }
}

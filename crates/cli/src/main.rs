//! `pitr`: WAL archiving and point-in-time recovery for PostgreSQL. The binary parses
//! arguments, sets up logging and progress, runs one command from `commands/`, and is the one
//! place where errors become exit statuses ([`exit_status`]).

/// `println!` for results on stdout, as an error instead of a panic when stdout cannot be
/// written (a closed pipe: `pitr list | head`; a full disk): the enclosing function returns
/// the error, so the command exits non-zero with one line naming it.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*).map_err(crate::stdout_failed)?;
    }};
}

mod commands;
mod logging;
mod progress;
mod prompt;

use std::process::ExitCode;

use clap::Parser;
use pitr_core::Failure;

use pitr_settings::cli::{Cli, Command};
use pitr_settings::config::{self, Env, Settings};
use pitr_settings::options;

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
    /// check (Nagios): a warning.
    pub const CHECK_WARNING: u8 = 1;
    /// check (Nagios): critical, and any error of the check itself (an unreachable
    /// repository): a probe that cannot look must not read as "only a warning".
    pub const CHECK_CRITICAL: u8 = 2;
}

/// Commands whose exit statuses follow another program's contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contract {
    /// restore_command's.
    RestoreWal,
    /// Nagios': 1 warning, 2 critical.
    Check,
    Other,
}

/// The exit status for a failure of a command.
fn exit_status(failure: Failure, contract: Contract) -> u8 {
    match (failure, contract) {
        (Failure::NotArchived, Contract::RestoreWal) => exit::NOT_ARCHIVED,
        (_, Contract::RestoreWal) => exit::RECOVERY_FATAL,
        (Failure::Warning, Contract::Check) => exit::CHECK_WARNING,
        (_, Contract::Check) => exit::CHECK_CRITICAL,
        (Failure::Usage, Contract::Other) => exit::USAGE,
        (_, Contract::Other) => exit::FAILURE,
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
    // Generated from the command line alone: no configuration, repository or logging.
    let generated = match &cli.command {
        Command::Completions(args) => Some(commands::completions::completions(args.shell)),
        Command::Man => Some(commands::completions::man()),
        _ => None,
    };
    if let Some(done) = generated {
        return match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pitr: {e:#}");
                ExitCode::from(exit::FAILURE)
            }
        };
    }
    let contract = match cli.command {
        Command::RestoreWal(_) => Contract::RestoreWal,
        Command::Check(_) => Contract::Check,
        _ => Contract::Other,
    };
    // One panic guard around everything that follows, logging included: a panic must not
    // exit 101 (for restore_command that would read as "not archived").
    let guarded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| execute(cli, contract)));
    ExitCode::from(guarded.unwrap_or_else(|_| exit_status(Failure::Fatal, contract)))
}

/// Runs the parsed command and returns its exit status. The status is decided before
/// anything is logged, and the logging runs under its own guard: nothing that happens while
/// writing to stderr (a full disk, a closed pipe, a panic in the logger) can change it.
fn execute(cli: Cli, contract: Contract) -> u8 {
    let restore_wal = contract == Contract::RestoreWal;
    let env = Env::process();
    // A broken configuration file is reported once logging is up.
    let settings = Settings::load(cli.global.config.as_deref(), &env);
    let format = match &settings {
        Ok(s) => config::log_format(&config::global(&cli, s, &env)),
        Err(_) => cli
            .global
            .options
            .log_format
            .unwrap_or(options::LogFormat::Text),
    };
    logging::init(&cli.global, format);
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli, settings?, &env)));
    let (status, report): (u8, Box<dyn FnOnce()>) = match outcome {
        Ok(Ok(())) => (0, Box::new(|| {})),
        Ok(Err(err)) => {
            let failure = Failure::of(&err);
            (
                exit_status(failure, contract),
                Box::new(move || match failure {
                    Failure::NotArchived if restore_wal => tracing::info!("{err:#}"),
                    Failure::Warning => tracing::warn!("{err:#}"),
                    _ => tracing::error!("{err:#}"),
                }),
            )
        }
        Err(_) => (
            exit_status(Failure::Fatal, contract),
            Box::new(|| tracing::error!("internal error (panic); see the message above")),
        ),
    };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(report));
    status
}

fn run(mut cli: Cli, settings: Settings, env: &Env) -> anyhow::Result<()> {
    let global = config::global(&cli, &settings, env);
    let repo_url = settings.repo_url(global.repo.as_deref())?;
    config::merge(&settings, &mut cli.command);
    let given = config::resolve(&settings, &cli, &global, &repo_url, env)?;
    let (url, options, secret) = (&repo_url, &given.repo, given.repo.secret.clone());
    let allow_root = cli.global.allow_root;
    if let Some(command) = writes_repository(&cli.command) {
        pitr_core::repo_owner::refuse_root_write(url, command, allow_root)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Init(args) => {
                commands::init::run(url, options, args, secret, allow_root).await
            }
            Command::ArchiveWal(args) => commands::archive_wal::run(url, options, args).await,
            Command::RestoreWal(args) => {
                commands::restore_wal::run(url, options, args, given.handed_on).await
            }
            Command::Info(args) => commands::info::run(url, options, args).await,
            Command::Backup(args) => {
                commands::backup::run(url, options, args, given.pg_password).await
            }
            Command::List(args) => commands::list::run(url, options, args).await,
            Command::Restore(args) => {
                let reach = commands::restore::SecretReach {
                    secret: secret.as_ref(),
                    written: cli.global.options.passphrase_file.is_some()
                        || settings.file.global.passphrase_file.is_some(),
                    in_environment: env.get("PITR_PASSPHRASE").is_some(),
                };
                commands::restore::run(url, options, args, reach, given.handed_on).await
            }
            Command::Verify(args) => {
                commands::verify::run(url, options, args, given.handed_on).await
            }
            Command::Check(args) => {
                commands::check::run(url, options, args, given.pg_password).await
            }
            Command::SpoolClean(args) => commands::spool_clean::run(args),
            Command::Expire(args) => commands::expire::run(url, options, args).await,
            Command::Pin(args) => commands::pin::pin(url, options, args).await,
            Command::Unpin(args) => commands::pin::unpin(url, options, args).await,
            Command::Key(command) => commands::key::run(url, options, command, env).await,
            Command::Completions(args) => commands::completions::completions(args.shell),
            Command::Man => commands::completions::man(),
        }
    })
}

/// The name of a command that writes to the repository (refused as root on a local one
/// another user owns, unless --allow-root); `None` for one that only reads it. `init` has its
/// own, stricter rule (as root it creates nothing without --allow-root).
fn writes_repository(command: &Command) -> Option<&'static str> {
    use pitr_settings::cli::KeyCommand;
    match command {
        Command::ArchiveWal(_) => Some("archive-wal"),
        Command::Backup(_) => Some("backup"),
        Command::Expire(args) if !args.dry_run => Some("expire"),
        Command::Pin(_) => Some("pin"),
        Command::Unpin(_) => Some("unpin"),
        Command::Key(KeyCommand::Add(_)) => Some("key add"),
        Command::Key(KeyCommand::Remove { .. }) => Some("key remove"),
        Command::Init(_)
        | Command::RestoreWal(_)
        | Command::Info(_)
        | Command::List(_)
        | Command::Restore(_)
        | Command::Verify(_)
        | Command::Check(_)
        | Command::SpoolClean(_)
        | Command::Completions(_)
        | Command::Man
        | Command::Expire(_)
        | Command::Key(KeyCommand::List { .. } | KeyCommand::Export { .. }) => None,
    }
}

/// The error for a result line stdout would not take.
fn stdout_failed(e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!("cannot write the result to stdout: {e}")
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

    /// check follows Nagios; its own errors are critical, never a mere warning or OK.
    #[test]
    fn check_statuses() {
        assert_eq!(exit_status(Failure::Warning, Contract::Check), 1);
        assert_eq!(exit_status(Failure::Critical, Contract::Check), 2);
        assert_eq!(exit_status(Failure::Fatal, Contract::Check), 2);
        assert_eq!(exit_status(Failure::Fatal, Contract::Other), 1);
        assert_eq!(exit_status(Failure::NotArchived, Contract::RestoreWal), 1);
        assert_eq!(exit_status(Failure::Fatal, Contract::RestoreWal), 255);
        // A usage error found after parsing is 2, as clap's are; restore-wal's stops recovery.
        assert_eq!(exit_status(Failure::Usage, Contract::Other), 2);
        assert_eq!(exit_status(Failure::Usage, Contract::RestoreWal), 255);
        assert_eq!(exit_status(Failure::Usage, Contract::Check), 2);
    }
}

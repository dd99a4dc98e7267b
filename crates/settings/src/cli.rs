//! Command-line interface: global options and each command's flags. A setting the
//! configuration file can also give is defined in `options.rs` and flattened in here (its
//! struct is also its table in the file); `config::merge` fills what the flags left open. Its
//! default is the `DEFAULT_…` constant below.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use pitr_core::restore::TargetAction;

use crate::options::{
    ArchiveWalOptions, BackupOptions, ExpireOptions, GlobalOptions, InitOptions, RestoreWalOptions,
    VerifyOptions,
};

#[derive(Parser, Debug)]
#[command(
    name = "pitr",
    version,
    about = "WAL archiving and point-in-time recovery for PostgreSQL",
    long_about = "WAL archiving and point-in-time recovery for PostgreSQL.\n\n\
        postgresql.conf:\n  archive_mode = on\n  archive_command = 'pitr archive-wal %p %f'\n\
        and for recovery:\n  restore_command = 'pitr restore-wal %f %p'\n\n\
        The repository comes from --repo, PITR_REPO, or `repo = \"...\"` in the config file\n\
        (--config, PITR_CONFIG, default /etc/pitr/pitr.toml), which can hold every setting."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct Global {
    #[command(flatten)]
    pub options: GlobalOptions,
    /// Configuration file (TOML; default /etc/pitr/pitr.toml when it exists)
    #[arg(long, env = "PITR_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// More log output (-v debug, -vv trace)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Write a local repository even when running as root. Without it, a command that writes
    /// (init, backup, archive-wal, expire, pin, unpin, key add/remove) refuses to run as root
    /// on a local repository another user owns (and init to create one): root-owned objects
    /// would lock that user (PostgreSQL's archive_command) out. Run it as the repository's owner
    #[arg(long, global = true)]
    pub allow_root: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the repository
    Init(InitArgs),
    /// Archive one WAL file (archive_command = 'pitr archive-wal %p %f')
    ArchiveWal(ArchiveWalArgs),
    /// Fetch one archived WAL file (restore_command = 'pitr restore-wal %f %p')
    ///
    /// DEST appears only once the file is checked to be NAME: the ref's name and size, the
    /// first page's address, timeline and system identifier (the repository's), a history
    /// file's syntax. Exit 0 restored; 1 NAME is not archived (end of recovery); 255 for
    /// anything else (corruption, a file that is not NAME, a hole in an archived timeline, an
    /// unreachable repository, bad arguments), so PostgreSQL stops instead of promoting early.
    RestoreWal(RestoreWalArgs),
    /// Repository summary: archived WAL per timeline, gaps, sizes
    Info(InfoArgs),
    /// Take a base backup over the replication protocol; prints the backup ID
    Backup(BackupArgs),
    /// List backups, oldest first
    List(ListArgs),
    /// Build a data directory that recovers to a point in time (or the end of the archive)
    Restore(RestoreArgs),
    /// Re-read and re-hash every chunk the backups and archived WAL name; check WAL continuity
    ///
    /// Exit 0 when there is no problem; 1 naming each (a missing or corrupt object, a missing
    /// segment on a backup's way forward, no backup at all, a newest backup older than
    /// --max-age, a failed --restore-test).
    Verify(VerifyArgs),
    /// Check that the server archives into this repository, or (with --max-*-age) probe its age
    ///
    /// Without an age limit: connects like `pitr backup` (a replication=database connection,
    /// so pg_hba.conf must allow the database, and pg_switch_wal() needs superuser or EXECUTE),
    /// checks archive_mode, wal_level and archive_command, switches WAL and waits until the
    /// segment is in the repository, and compares system identifiers. With --max-archive-age
    /// or --max-backup-age: looks at the repository only, connecting to no server.
    /// Exit 0 OK, 1 warning, 2 critical (Nagios); see docs/monitoring.md.
    Check(CheckArgs),
    /// Remove restore-wal's prefetch spool (recovery_end_command)
    SpoolClean(SpoolCleanArgs),
    /// Apply retention: remove old backups, the WAL only they needed, unreferenced chunks
    ///
    /// Keeps the newest --retain-full N backups and/or what restores to any moment of the
    /// last --retain-days D, plus pinned backups; without either flag nothing is deleted.
    /// Backup manifests go first, then WAL no kept backup needs, then chunks no remaining
    /// document names and older than --gc-grace. Safe while backup, archive-wal and restore
    /// run: no chunk is collected while a backup is running (its marker is younger than
    /// --marker-stale). Exit 0 done (or nothing to do); 1 when a document cannot be read (then
    /// nothing is deleted), a flag is missing, or the repository failed.
    Expire(ExpireArgs),
    /// Keep a backup whatever the retention says
    Pin(PinArgs),
    /// Let the retention decide about a pinned backup again
    Unpin(PinArgs),
    /// Key slots of an encrypted repository: list, add, remove, export
    ///
    /// Each slot wraps the repository's master key under a passphrase (Argon2id) or a
    /// generated key file. Rotate a passphrase by adding a new slot and removing the old one;
    /// nothing is re-encrypted. The secret that opens the repository comes from
    /// --passphrase-file, PITR_PASSPHRASE, the config file or the systemd credential
    /// pitr-passphrase.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Print a shell completion script (bash, zsh or fish) for pitr on stdout
    ///
    /// contrib/install.sh installs them; by hand: `pitr completions bash >
    /// /usr/share/bash-completion/completions/pitr`.
    Completions(CompletionsArgs),
    /// Print the manual page pitr(1), in roff, on stdout (`pitr man | man -l -`)
    Man,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: CompletionShell,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// List the key slots (the one this secret opened is marked)
    List {
        /// JSON on stdout
        #[arg(long)]
        json: bool,
    },
    /// Add a key slot: a new passphrase (--new-passphrase-file or PITR_NEW_PASSPHRASE), or
    /// a new key file (--key-file) for archive_command and restore_command, which opens the
    /// repository without a passphrase's deliberately slow derivation. Prints the slot ID.
    Add(KeyAddArgs),
    /// Remove a key slot (never the last one)
    Remove {
        /// Slot ID (see `pitr key list`)
        id: String,
    },
    /// Write the unwrapped master key, for a safe: it opens the repository even when every
    /// slot is lost, and whoever holds it can read everything
    Export {
        /// Write it to this new file (mode 0600) instead of stdout
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct KeyAddArgs {
    /// File holding the new passphrase (or set PITR_NEW_PASSPHRASE)
    #[arg(long, value_name = "FILE", conflicts_with = "key_file")]
    pub new_passphrase_file: Option<PathBuf>,
    /// Generate a key file at FILE (created, mode 0600) and add a slot it opens
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Text to tell the slot apart in `pitr key list`
    #[arg(long, default_value = "")]
    pub label: String,
    #[command(flatten)]
    pub kdf: KdfArgs,
}

/// The cost of a passphrase slot's Argon2id.
#[derive(Args, Debug, Clone, Copy)]
pub struct KdfArgs {
    /// Argon2id memory for a passphrase slot, in MiB (8..=1024; memory × passes at most 4096)
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub kdf_memory: u32,
    /// Argon2id passes for a passphrase slot (1..=16)
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub kdf_iterations: u32,
}

impl KdfArgs {
    pub fn cost(&self) -> pitr_store::KdfCost {
        pitr_store::KdfCost {
            memory_kib: self.kdf_memory.saturating_mul(1024),
            iterations: self.kdf_iterations,
        }
    }
}

#[derive(Args, Debug)]
pub struct ExpireArgs {
    #[command(flatten)]
    pub options: ExpireOptions,
    /// Print what would go (backups, WAL files, chunks) and the bytes freed; delete nothing
    #[arg(long)]
    pub dry_run: bool,
    /// JSON on stdout
    #[arg(long)]
    pub json: bool,
    /// Unreferenced chunks younger than this stay (a writer may be about to name them):
    /// 90s, 30m, 1h, 2d
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub gc_grace: std::time::Duration,
    /// A backup marker older than this belongs to a killed backup: reported and ignored
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub marker_stale: std::time::Duration,
    /// Also remove the history file and WAL of this stray timeline (one no kept backup uses
    /// or can reach, as `pitr check` warns); repeatable; never done without it
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..))]
    pub retire_timeline: Vec<u32>,
}

#[derive(Args, Debug)]
pub struct PinArgs {
    /// Backup ID (see `pitr list`)
    pub id: String,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Only this backup (and the archived WAL from its start on); with --restore-test, the
    /// backup to restore (default: the newest)
    #[arg(long)]
    pub backup: Option<String>,
    /// Fail when the newest backup finished longer ago than this (30m, 26h, 7d, 1h30m)
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub max_age: Option<std::time::Duration>,
    /// Also restore a backup into a scratch directory with archive_mode=off, start it on a
    /// socket in that directory, run the checks, stop it and remove the directory. Run it as
    /// the database owner (PostgreSQL refuses root)
    #[arg(long)]
    pub restore_test: bool,
    /// Port of the scratch instance (default: a free one)
    #[arg(long, requires = "restore_test")]
    pub port: Option<u16>,
    #[command(flatten)]
    pub options: VerifyOptions,
    /// Stop recovery as soon as the backup is consistent (default: the end of archived WAL)
    #[arg(long, requires = "restore_test")]
    pub target_immediate: bool,
    /// Timeline the restore test follows: latest (the newest containing the backup),
    /// current, or a number
    #[arg(long, requires = "restore_test", default_value = "latest")]
    pub target_timeline: String,
    /// One JSON object on stdout: counts, problems, ok, and the restore test
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Connection, as for `pitr backup` (libpq key=value string or postgres:// URL; PG*
    /// environment). The database is dbname= or PGDATABASE, default the user's name
    #[arg(long, short = 'd')]
    pub dbname: Option<String>,
    /// How long to wait for the switched WAL segment to reach the repository
    #[arg(long, value_parser = parse_duration, default_value = "60s", value_name = "DURATION")]
    pub archive_timeout: std::time::Duration,
    /// Probe: critical when the newest archived segment was stored longer ago than this
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub max_archive_age: Option<std::time::Duration>,
    /// Probe: critical when the newest backup finished longer ago than this
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub max_backup_age: Option<std::time::Duration>,
    /// With --max-*-age: run the server checks too, and the age limits after them (without
    /// it an age limit makes check a probe of the repository alone)
    #[arg(long)]
    pub server: bool,
    /// One JSON object on stdout: the overall status and each check's status and message
    #[arg(long)]
    pub json: bool,
}

pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    pitr_core::verify::parse_duration(s)
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Data directory to create (empty or absent unless --delta)
    #[arg(long, short = 'D')]
    pub pgdata: PathBuf,
    /// Recover to this time, with its zone: RFC 3339 or '2026-11-25 14:02:59+00' (the form
    /// `list` and `info` print); a time without a zone is refused, showing both readings
    #[arg(long)]
    pub target_time: Option<String>,
    /// Recover to this LSN (X/X)
    #[arg(long)]
    pub target_lsn: Option<String>,
    /// Recover to this transaction ID
    #[arg(long)]
    pub target_xid: Option<u64>,
    /// Recover to this restore point (pg_create_restore_point)
    #[arg(long)]
    pub target_name: Option<String>,
    /// Stop as soon as the backup is consistent
    #[arg(long)]
    pub target_immediate: bool,
    /// Stop just before the target instead of just after it
    #[arg(long)]
    pub target_exclusive: bool,
    /// Timeline to follow: latest, current, or a number
    #[arg(long, default_value = "latest")]
    pub target_timeline: String,
    /// What the server does at the target
    #[arg(long, value_enum, default_value_t = TargetAction::Promote)]
    pub target_action: TargetAction,
    /// Backup to restore (default: the newest that finished before the target)
    #[arg(long)]
    pub backup: Option<String>,
    /// Reuse files already in the data directory when their content matches, and remove
    /// what the backup does not have; a non-empty tablespace directory is changed only if it
    /// holds the backup's PG_<major>_<catversion> directory with none but its databases
    #[arg(long)]
    pub delta: bool,
    /// Put tablespace OID in DIR (repeatable). A backup with tablespaces needs this for each
    /// one, or --tablespaces-as-recorded: restore never writes to a location it only read
    /// from the repository
    #[arg(long, value_name = "OID=DIR")]
    pub tablespace_map: Vec<String>,
    /// Lay each tablespace not given with --tablespace-map down at the location the backup
    /// recorded (each is printed first; --dry-run shows them); they must be absolute, empty
    /// or absent, and outside the data directory
    #[arg(long)]
    pub tablespaces_as_recorded: bool,
    /// Show the plan (backup, timeline, WAL needed, tablespace directories) and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// JSON on stdout
    #[arg(long)]
    pub json: bool,
    /// Start PostgreSQL and wait until recovery reached the target
    #[arg(long)]
    pub start: bool,
    /// With --start: stop the server once recovery is done
    #[arg(long, requires = "start")]
    pub stop_after: bool,
    /// With --start: port to run the server on (default: the restored configuration's)
    #[arg(long, requires = "start")]
    pub port: Option<u16>,
    /// With --start: extra server setting NAME=VALUE (repeatable)
    #[arg(long, requires = "start")]
    pub pg_option: Vec<String>,
    /// archive_mode of the restored server: preserve the backup's, or off (for a clone that
    /// must never archive into this repository, or anywhere)
    #[arg(long, value_enum, default_value_t = ArchiveMode::Preserve)]
    pub archive_mode: ArchiveMode,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ArchiveMode {
    Preserve,
    Off,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    pub options: BackupOptions,
    /// Backup label (default "pitr <id>")
    #[arg(long)]
    pub label: Option<String>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// A JSON array on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Encrypt and authenticate everything in the repository (AES-256-GCM, keyed chunk
    /// IDs). The first key slot's passphrase comes from --passphrase-file, PITR_PASSPHRASE,
    /// the config file or the systemd credential pitr-passphrase
    #[arg(long)]
    pub encryption: bool,
    /// Label of the first key slot
    #[arg(long, default_value = "", requires = "encryption")]
    pub key_label: String,
    #[command(flatten)]
    pub kdf: KdfArgs,
    #[command(flatten)]
    pub options: InitOptions,
}

#[derive(Args, Debug)]
pub struct ArchiveWalArgs {
    /// Path of the WAL file (%p), relative to the data directory
    pub path: PathBuf,
    /// Name of the WAL file (%f)
    pub name: String,
    #[command(flatten)]
    pub options: ArchiveWalOptions,
}

#[derive(Args, Debug)]
pub struct RestoreWalArgs {
    /// Name of the WAL file wanted (%f)
    pub name: String,
    /// Where to write it (%p)
    pub dest: PathBuf,
    #[command(flatten)]
    pub options: RestoreWalOptions,
    /// Internal: run as the prefetch worker (NAME is the segment just served, DEST the spool)
    #[arg(long, hide = true)]
    pub prefetch_worker: bool,
    /// Serve WAL only from the encrypted repository with this ID, refusing (exit 255) an
    /// unencrypted or other one; `pitr restore` writes it into restore_command
    #[arg(long, value_name = "ID")]
    pub repository_id: Option<String>,
}

#[derive(Args, Debug)]
pub struct SpoolCleanArgs {
    /// The pg_wal directory (recovery_end_command runs in the data directory)
    #[arg(default_value = "pg_wal")]
    pub pg_wal: PathBuf,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// One JSON object on stdout
    #[arg(long)]
    pub json: bool,
}

pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
pub const DEFAULT_WAL_CHUNK_SIZE: u32 = 4 << 20;
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 1;
pub const DEFAULT_LOOKAHEAD: usize = 8;
pub const DEFAULT_PREFETCH: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// Options that cannot work are refused by the parser, before anything runs.
    #[test]
    fn options_that_cannot_work_are_refused() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["pitr", "--repo", "/r"], args].concat());
        for start_only in [
            &["--port", "5433"][..],
            &["--stop-after"],
            &["--pg-option", "a=b"],
        ] {
            let args = [&["restore", "-D", "/d"], start_only].concat();
            let e = parse(&args).expect_err("a --start option without --start");
            assert!(e.to_string().contains("--start"), "{e}");
            assert!(parse(&[&args[..], &["--start"]].concat()).is_ok());
        }
        for rate in ["31", "1048577"] {
            assert!(parse(&["backup", "--max-rate", rate]).is_err(), "{rate}");
        }
        assert!(parse(&["backup", "--max-rate", "32"]).is_ok());
    }

    #[test]
    fn durations_take_units() {
        use std::time::Duration;
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "h", "-1h", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}

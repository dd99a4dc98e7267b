//! pitr's domain: the repository's documents (`repofile`), the archive's shape (`index`), and
//! what each command does — archive, restore-wal, backup, restore (plan, lay-down, recovery
//! settings, start), verify, check, info. Requests come in as plain types; nothing here knows clap or
//! prints to stdout: the binary formats what these functions return.

pub mod commands;
pub mod config;
pub mod error;
pub mod index;
pub mod instance;
pub mod progress;
pub mod repo_owner;
pub mod repofile;
pub mod time;

// The commands by their old paths (`pitr_core::restore`, …), which the binary uses.
pub use commands::{backup, check, expire, info, init, restore, restore_wal, verify};

/// `pitr_core::archive`, the old path of archive-wal, and of `init` (now `commands::init`).
pub mod archive {
    pub use crate::commands::archive::*;
    pub use crate::commands::init::init;
}

#[cfg(test)]
mod testutil;

pub use error::{CheckFailed, Failure, NotArchived, UsageError};
pub use index::ArchiveIndex;
pub use progress::{Progress, Reporter};

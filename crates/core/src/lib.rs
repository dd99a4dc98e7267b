//! pitr's domain: the repository's documents (`repofile`), the archive's shape (`index`), and
//! what each command does — archive, restore-wal, backup, restore (plan, lay-down, recovery
//! settings, start), verify, check, info. Requests come in as plain types; nothing here knows clap or
//! prints to stdout: the binary formats what these functions return.

pub mod archive;
pub mod backup;
pub mod check;
pub mod config;
pub mod error;
pub mod expire;
pub mod index;
pub mod info;
pub mod progress;
pub mod repofile;
pub mod restore;
pub mod restore_wal;
pub mod time;
pub mod verify;
pub mod window;

#[cfg(test)]
mod testutil;

pub use error::{CheckFailed, Failure, NotArchived};
pub use index::ArchiveIndex;
pub use progress::{Progress, Reporter};

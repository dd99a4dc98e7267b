//! One module per subcommand: each turns its clap arguments into a request of `pitr-core`,
//! runs it, and prints the result (stdout is for results, logs go to stderr).

pub mod archive_wal;
pub mod backup;
pub mod check;
pub mod completions;
pub mod expire;
pub mod info;
pub mod init;
pub mod key;
pub mod list;
pub mod pin;
pub mod restore;
pub mod restore_wal;
pub mod spool_clean;
pub mod verify;

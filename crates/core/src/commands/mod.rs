//! What each command does, one module per command (group): `init`, `archive` (archive-wal),
//! `restore_wal`, `backup`, `restore` (plan, window, lay-down, recovery settings, start),
//! `verify` (integrity checks and `--restore-test`), `check`, `info`, `expire`. Each takes a plain
//! request type and returns a plain result; what they share lives beside this folder
//! (`repofile/`, `index`, `instance`, `time`, `progress`).

pub mod archive;
pub mod backup;
pub mod check;
pub mod expire;
pub mod info;
pub mod init;
pub mod restore;
pub mod restore_wal;
pub mod verify;

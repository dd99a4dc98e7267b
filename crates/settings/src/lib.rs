//! pitr's settings, apart from the binary that runs the commands: every setting defined once
//! ([`options`]: one struct per command group that is both its flags and its table in
//! `pitr.toml`), the command line ([`cli`]: clap's definitions, the options flattened in), and
//! the configuration file ([`config`]: loading it, the secrets' sources, the one place where a
//! flag beats a variable beats the file, and what each command is given besides its
//! arguments). It prints nothing and runs no command: the `pitr` binary (`crates/cli`) parses
//! with [`cli::Cli`], calls [`config`] and hands the result to its `commands/`.

pub mod cli;
pub mod config;
pub mod options;

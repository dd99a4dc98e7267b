//! Integration tests: the `pitr` binary against real PostgreSQL servers that the tests start
//! themselves (the clusters, commands and S3 server come from `pitr-testkit`; `harness` adds
//! the `pitr` binary). Run with `cargo test --test integration`; as root, PostgreSQL and `pitr`
//! run as the `postgres` user. `PITR_PG_BINDIR` picks the PostgreSQL binaries,
//! `PITR_TEST_KEEP=1` keeps the temp dirs for a post-mortem.

mod archive;
mod backup;
mod check;
mod config;
mod encryption;
mod exit_status;
mod expire;
mod gc_rules;
mod hardening_restore;
mod hardening_wal;
mod harness;
mod quickstart;
mod restore;
mod restored;
mod units;
mod verify;

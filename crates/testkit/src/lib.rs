//! The one test harness of the workspace (like cargo's `cargo-test-support`): real PostgreSQL
//! clusters ([`cluster`]), where their programs come from ([`programs`]), test certificates
//! ([`certs`]), the S3 test server ([`s3`]), commands that explain their failures ([`cmd`]),
//! short temp dirs ([`dirs`]), a scripted hostile replication server ([`fakepg`]) and, as root, running PostgreSQL as the `postgres` user
//! ([`user`]). `PITR_TEST_KEEP=1` keeps every temp dir for a post-mortem.

pub mod certs;
pub mod cluster;
pub mod cmd;
pub mod dirs;
pub mod fakepg;
pub mod programs;
pub mod require;
pub mod s3;
pub mod user;
pub mod wal;

pub use cluster::{PgCluster, PgClusterBuilder};
pub use dirs::TestDir;

use std::net::{Ipv4Addr, TcpListener};

/// A TCP port on 127.0.0.1 that is free when asked (a server that then fails to bind it
/// should retry with another).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

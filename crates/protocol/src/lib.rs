//! A PostgreSQL physical-replication client on tokio and `postgres-protocol`'s message codecs:
//! startup over TCP or a Unix socket, TLS per `sslmode` (rustls), trust/password/MD5/SCRAM
//! authentication, and the replication commands `pitr backup` needs — IDENTIFY_SYSTEM,
//! CREATE_REPLICATION_SLOT, TIMELINE_HISTORY, START_REPLICATION and BASE_BACKUP (PostgreSQL 15+).
//!
//! Every [`ReplicationClient`] is an independent connection, so a backup runs BASE_BACKUP on one
//! and streams its WAL on another concurrently. COPY payloads are handed out as [`bytes::Bytes`]
//! slices of the receive buffer, one message at a time: memory stays bounded by what the caller
//! holds on to.

mod backup;
mod client;
mod config;
mod conn;
mod error;
mod tls;
mod wal;

pub use backup::{
    BackupEvent, BaseBackupOptions, BaseBackupStream, CheckpointMode, Tablespace,
    MIN_SERVER_VERSION_NUM,
};
pub use client::{ReplicationClient, ResultSet, SystemInfo, MAX_NOTICES_KEPT};
pub use config::{AuthMethod, ChannelBinding, ConnConfig, RequireAuth, SslMode};
pub use error::{Error, ServerMessage, MAX_SERVER_FIELD};
pub use wal::{WalEvent, WalStream, STATUS_INTERVAL};

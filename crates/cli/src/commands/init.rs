//! `pitr init`: create the repository.

use pitr_store::{RepoConfig, FORMAT_VERSION};

use crate::cli::{InitArgs, DEFAULT_CHUNK_SIZE, DEFAULT_COMPRESSION_LEVEL, DEFAULT_WAL_CHUNK_SIZE};

pub async fn run(url: &str, args: InitArgs) -> anyhow::Result<()> {
    let config = RepoConfig {
        format_version: FORMAT_VERSION,
        chunk_size: args.chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE),
        wal_chunk_size: args.wal_chunk_size.unwrap_or(DEFAULT_WAL_CHUNK_SIZE),
        compression_level: args.compression_level.unwrap_or(DEFAULT_COMPRESSION_LEVEL),
    };
    pitr_core::archive::init(url, config, args.allow_root).await
}

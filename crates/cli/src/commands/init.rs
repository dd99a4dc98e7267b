//! `pitr init`: create the repository.

use pitr_store::{RepoConfig, FORMAT_VERSION};

use crate::cli::InitArgs;

pub async fn run(url: &str, args: InitArgs) -> anyhow::Result<()> {
    let config = RepoConfig {
        format_version: FORMAT_VERSION,
        chunk_size: args.chunk_size,
        wal_chunk_size: args.wal_chunk_size,
        compression_level: args.compression_level,
    };
    pitr_core::archive::init(url, config, args.allow_root).await
}

//! `pitr init`: create the repository, encrypted with `--encryption`.

use anyhow::bail;
use pitr_store::{RepoConfig, Secret, FORMAT_VERSION};

use pitr_settings::cli::{
    InitArgs, DEFAULT_CHUNK_SIZE, DEFAULT_COMPRESSION_LEVEL, DEFAULT_WAL_CHUNK_SIZE,
};

pub async fn run(
    url: &str,
    options: &pitr_store::RepoOptions,
    args: InitArgs,
    secret: Option<Secret>,
    allow_root: bool,
) -> anyhow::Result<()> {
    let config = RepoConfig {
        format_version: FORMAT_VERSION,
        chunk_size: args.options.chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE),
        wal_chunk_size: args
            .options
            .wal_chunk_size
            .unwrap_or(DEFAULT_WAL_CHUNK_SIZE),
        compression_level: args
            .options
            .compression_level
            .unwrap_or(DEFAULT_COMPRESSION_LEVEL),
        encryption: None,
    };
    let secret = match (args.encryption, secret) {
        (true, None) => crate::prompt::new_passphrase("the first key slot")?,
        (_, secret) => secret,
    };
    let encryption = match (args.encryption, secret) {
        (true, Some(s)) => Some((s, args.key_label.as_str(), args.kdf.cost())),
        (true, None) => bail!(
            "--encryption needs the first key slot's passphrase: --passphrase-file FILE, \
             PITR_PASSPHRASE, passphrase_file in the config file, the systemd credential \
             pitr-passphrase, or run it at a terminal to be asked"
        ),
        (false, Some(s)) => bail!(
            "a passphrase is given ({}) but --encryption is not: pass --encryption to create an \
             encrypted repository, or remove the passphrase setting",
            s.origin()
        ),
        (false, None) => None,
    };
    pitr_core::archive::init(url, options, config, encryption, allow_root).await
}

//! `config.json`: the repository's versioned settings ([`RepoConfig`]), checked on every open.

use serde::{Deserialize, Serialize};

use crate::{crypto, layout, Result, StoreError};

/// The format of an unencrypted repository (unchanged since the first release).
pub const FORMAT_VERSION: u32 = 1;
/// The format of an encrypted repository: a pitr that reads only version 1 refuses it by its
/// version instead of misreading sealed objects.
pub const ENCRYPTED_FORMAT_VERSION: u32 = 2;

/// `config.json`, written once by `pitr init`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepoConfig {
    pub format_version: u32,
    /// Bytes per chunk when files are split (a multiple of PostgreSQL's 8 KiB page).
    pub chunk_size: u32,
    /// Bytes per chunk for archived WAL files: WAL never dedups against itself, so fewer,
    /// larger chunks mean fewer objects and syncs, while a 16 MiB segment still splits into
    /// enough pieces to hash and compress on every core.
    #[serde(default = "default_wal_chunk_size")]
    pub wal_chunk_size: u32,
    /// zstd level for new chunks.
    pub compression_level: i32,
    /// Present in an encrypted repository (format version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
}

/// `config.json`'s `encryption` object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// [`crypto::CIPHER`].
    pub cipher: String,
    /// [`crypto::CHUNK_ID`].
    pub chunk_id: String,
    /// 32 random hex digits, bound into every key slot.
    pub repository_id: String,
    /// HMAC-SHA256 (hex) of the whole configuration with this field empty, under a key derived
    /// from the master key: no field can be changed without the key.
    pub mac: String,
}

impl RepoConfig {
    /// The bytes the configuration's tag covers: itself with an empty tag.
    pub(super) fn canonical(&self) -> Vec<u8> {
        let mut c = self.clone();
        if let Some(e) = &mut c.encryption {
            e.mac.clear();
        }
        serde_json::to_vec(&c).expect("config serializes")
    }

    /// The same settings, encryption aside.
    pub(super) fn same_settings(&self, other: &RepoConfig) -> bool {
        (self.chunk_size, self.wal_chunk_size, self.compression_level)
            == (
                other.chunk_size,
                other.wal_chunk_size,
                other.compression_level,
            )
    }
}

fn default_wal_chunk_size() -> u32 {
    4 << 20
}

impl Default for RepoConfig {
    fn default() -> Self {
        RepoConfig {
            format_version: FORMAT_VERSION,
            chunk_size: 1 << 20,
            wal_chunk_size: default_wal_chunk_size(),
            compression_level: 1,
            encryption: None,
        }
    }
}

impl RepoConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        match (self.format_version, &self.encryption) {
            (FORMAT_VERSION, None) => {}
            (ENCRYPTED_FORMAT_VERSION, Some(e)) => {
                if (e.cipher.as_str(), e.chunk_id.as_str()) != (crypto::CIPHER, crypto::CHUNK_ID) {
                    return Err(format!(
                        "cipher {:?} with chunk IDs {:?} (this pitr knows {:?} with {:?})",
                        e.cipher,
                        e.chunk_id,
                        crypto::CIPHER,
                        crypto::CHUNK_ID
                    ));
                }
                if e.repository_id.len() != 32
                    || !e.repository_id.bytes().all(|b| b.is_ascii_hexdigit())
                    || e.mac.len() != 64
                    || hex::decode(&e.mac).is_err()
                {
                    return Err("encryption settings of the wrong form".into());
                }
            }
            (v, e) if v == FORMAT_VERSION || v == ENCRYPTED_FORMAT_VERSION => {
                return Err(format!(
                    "format version {v} {} encryption settings",
                    if e.is_some() { "with" } else { "without" }
                ))
            }
            (v, _) => {
                return Err(format!(
                    "format version {v} (this pitr reads versions {FORMAT_VERSION} and \
                     {ENCRYPTED_FORMAT_VERSION})"
                ))
            }
        }
        for (what, size) in [
            ("chunk size", self.chunk_size),
            ("WAL chunk size", self.wal_chunk_size),
        ] {
            if !(8192..=(64 << 20)).contains(&size) || !size.is_multiple_of(8192) {
                return Err(format!(
                    "{what} {size} is not a multiple of 8 KiB between 8 KiB and 64 MiB"
                ));
            }
        }
        if !(-7..=22).contains(&self.compression_level) {
            return Err(format!(
                "compression level {} is outside zstd's -7..=22",
                self.compression_level
            ));
        }
        Ok(())
    }
}

/// `config.json`'s bytes as a configuration this pitr can use.
pub(super) fn parse_config(url: &str, body: &[u8]) -> Result<RepoConfig> {
    let config: RepoConfig = serde_json::from_slice(body).map_err(|e| StoreError::Corrupt {
        key: layout::CONFIG.into(),
        detail: e.to_string(),
    })?;
    validate(url, &config)?;
    Ok(config)
}

pub(super) fn validate(url: &str, config: &RepoConfig) -> Result<()> {
    config
        .validate()
        .map_err(|detail| StoreError::ConfigMismatch {
            url: url.to_string(),
            detail,
        })
}

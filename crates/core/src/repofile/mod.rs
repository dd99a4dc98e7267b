//! The repository's documents (docs/format.md), one module each: what is stored, how it is
//! parsed back, and where it lives. Chunks and `config.json` belong to `pitr-store`.

pub mod cluster;
pub mod manifest;
pub mod marker;
pub mod pin;
pub mod relpath;
pub mod walref;

pub use cluster::{claim_cluster, repo_system_identifier};
pub use manifest::{chunks_hash, BackupManifest, FileEntry, FileKind, Tablespace};
pub use marker::{BackupMarker, MarkerGuard};
pub use pin::{load_pins, Pin};
pub use relpath::RelPath;
pub use walref::{check_first_page, load_wal_refs, SourceFingerprint, WalRef};

/// A document that is in the repository but cannot be used: its key and why. Commands that
/// read many documents report these and go on with the rest; nothing is deleted because of one.
#[derive(Clone, Debug, serde::Serialize, thiserror::Error)]
#[error("{key} is damaged: {error}")]
pub struct Damaged {
    pub key: String,
    pub error: String,
}

impl Damaged {
    pub fn new(key: &str, error: &anyhow::Error) -> Damaged {
        Damaged {
            key: key.to_string(),
            error: format!("{error:#}"),
        }
    }
}

/// A document's bytes, `None` when absent, and `Some(Err(..))` when it is there but the
/// store found it corrupt (in an encrypted repository: it fails authentication), so that
/// callers reading many documents name it and go on.
pub(crate) async fn read_doc(
    repo: &pitr_store::Repo,
    key: &str,
) -> anyhow::Result<Option<Result<bytes::Bytes, Damaged>>> {
    match repo.get_doc(key).await {
        Ok(body) => Ok(body.map(Ok)),
        Err(pitr_store::StoreError::Corrupt { detail, .. }) => Ok(Some(Err(Damaged {
            key: key.to_string(),
            error: detail,
        }))),
        Err(e) => Err(e.into()),
    }
}

/// Documents of one kind read back: the usable ones, and the damaged ones.
#[derive(Debug)]
pub struct Loaded<T> {
    pub docs: Vec<T>,
    pub damaged: Vec<Damaged>,
}

impl<T> Default for Loaded<T> {
    fn default() -> Self {
        Loaded {
            docs: Vec::new(),
            damaged: Vec::new(),
        }
    }
}

impl<T> Loaded<T> {
    /// The bytes of a document [`read_doc`] read: `None` when it is absent, or damaged (then
    /// recorded here).
    pub(crate) fn body(
        &mut self,
        read: Option<Result<bytes::Bytes, Damaged>>,
    ) -> Option<bytes::Bytes> {
        match read? {
            Ok(body) => Some(body),
            Err(damaged) => {
                self.damaged.push(damaged);
                None
            }
        }
    }

    /// The usable documents, each damaged one logged as a warning.
    pub fn warn_damaged(self) -> Vec<T> {
        for d in &self.damaged {
            tracing::warn!("{d}; skipped");
        }
        self.docs
    }
}

/// u64 system identifiers exceed JSON's safe integer range: documents keep them as strings.
pub(crate) mod u64_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }

    /// The same for an optional value.
    pub mod opt {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => s.collect_str(v),
                None => s.serialize_none(),
            }
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
            let s: Option<String> = Option::deserialize(d)?;
            s.map(|s| s.parse().map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

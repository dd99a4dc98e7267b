//! The documents that describe archived WAL: one JSON ref per archived file at
//! `wal/<timeline>/<name>.json`, and `cluster.json`, which ties the repository to one
//! PostgreSQL system identifier.

use anyhow::{bail, Context};
use pitr_pg::WalFileName;
use pitr_store::{ChunkRef, DocWrite, Repo};
use serde::{Deserialize, Serialize};

const CLUSTER_KEY: &str = "cluster.json";

/// Identity of the source file when it was archived. A later call for the same name whose
/// file still has this identity is the same file (PostgreSQL never changes a segment once it
/// is marked `.ready`), so it need not be re-read.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceFingerprint {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl SourceFingerprint {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        SourceFingerprint {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WalRef {
    pub name: String,
    pub size: u64,
    /// WAL segment size of the cluster, from the long page header (segments only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_size: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_u64_string"
    )]
    pub system_identifier: Option<u64>,
    /// When archive-wal stored it; bounds the commit times the file can hold.
    pub archived_at: chrono::DateTime<chrono::Utc>,
    /// Bytes of new chunks this file added to the repository.
    pub stored_bytes: u64,
    pub chunks: Vec<ChunkRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceFingerprint>,
}

impl WalRef {
    pub fn key(name: &WalFileName) -> String {
        format!("wal/{}/{}.json", &name.as_str()[..8], name)
    }

    pub fn same_content(&self, chunks: &[ChunkRef], size: u64) -> bool {
        self.size == size && self.chunks == chunks
    }

    pub async fn load(repo: &Repo, name: &WalFileName) -> anyhow::Result<Option<WalRef>> {
        let key = Self::key(name);
        let Some(body) = repo.get_doc(&key).await? else {
            return Ok(None);
        };
        let r = serde_json::from_slice(&body).with_context(|| format!("parse {key}"))?;
        Ok(Some(r))
    }
}

/// u64 system identifiers exceed JSON's safe integer range: keep them as strings.
mod opt_u64_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&v.to_string()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[derive(Serialize, Deserialize)]
struct ClusterDoc {
    #[serde(with = "opt_u64_string")]
    system_identifier: Option<u64>,
}

/// Check that `sysid` is the repository's cluster, recording it if the repository has none yet.
pub async fn claim_cluster(repo: &Repo, sysid: u64, what: &str) -> anyhow::Result<()> {
    let body = serde_json::to_vec_pretty(&ClusterDoc {
        system_identifier: Some(sysid),
    })
    .expect("serializes");
    let existing = match repo.get_doc(CLUSTER_KEY).await? {
        Some(b) => b,
        None => match repo.put_doc(CLUSTER_KEY, body.into()).await? {
            DocWrite::Created => return Ok(()),
            DocWrite::Exists(b) => b,
        },
    };
    let doc: ClusterDoc =
        serde_json::from_slice(&existing).with_context(|| format!("parse {CLUSTER_KEY}"))?;
    match doc.system_identifier {
        Some(theirs) if theirs != sysid => bail!(
            "{what} comes from database system {sysid}, but repository {} belongs to system {theirs}",
            repo.url()
        ),
        _ => Ok(()),
    }
}

/// The repository's cluster, if one has been recorded.
pub async fn repo_system_identifier(repo: &Repo) -> anyhow::Result<Option<u64>> {
    let Some(body) = repo.get_doc(CLUSTER_KEY).await? else {
        return Ok(None);
    };
    let doc: ClusterDoc =
        serde_json::from_slice(&body).with_context(|| format!("parse {CLUSTER_KEY}"))?;
    Ok(doc.system_identifier)
}

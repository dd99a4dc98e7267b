//! WAL refs, `wal/<timeline>/<name>.json`: one per archived file (segment, `.partial`,
//! `.history`, `.backup`), naming its chunks. Written by archive-wal once every chunk is
//! durable, create-only.

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};

use super::{Damaged, Loaded};
use pitr_pg::{LongPageHeader, WalFileKind, WalFileName};
use pitr_store::{layout, ChunkRef, Repo};
use serde::{Deserialize, Serialize};

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
    pub name: WalFileName,
    pub size: u64,
    /// WAL segment size of the cluster, from the long page header (segments only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_size: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::u64_string::opt"
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
        layout::wal_ref(&name.as_str()[..8], name.as_str())
    }

    /// The WAL file name a listed key of `wal/` stands for, if it is a ref's key.
    pub fn name_of_key(key: &str) -> Option<WalFileName> {
        key.rsplit('/').next()?.strip_suffix(".json")?.parse().ok()
    }

    /// What the ref must say before anything it names is fetched (restore-wal) or trusted
    /// (verify): it is `name`'s, its chunks add up to its size, and that size is one a file of
    /// that kind can have. A swapped, emptied or truncated ref stops here.
    pub fn check(&self, name: &WalFileName) -> anyhow::Result<()> {
        if self.name != *name {
            anyhow::bail!("the ref is {}'s, not {name}'s", self.name);
        }
        let chunked: u64 = self.chunks.iter().map(|c| u64::from(c.len)).sum();
        if chunked != self.size {
            anyhow::bail!(
                "its chunks add up to {chunked} bytes, the ref says {}",
                self.size
            );
        }
        let size = self.size;
        match name.kind() {
            WalFileKind::Segment | WalFileKind::Partial => {
                if !size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&size) {
                    anyhow::bail!("the ref says {size} bytes, which is no WAL segment size");
                }
                if let Some(seg) = self.segment_size {
                    if u64::from(seg) != size {
                        anyhow::bail!("the ref says {size} bytes but segments of {seg} bytes");
                    }
                }
            }
            WalFileKind::History | WalFileKind::BackupHistory => {
                if size > MAX_SMALL_FILE {
                    anyhow::bail!("the ref says {size} bytes, too big for a history file");
                }
            }
        }
        Ok(())
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

/// History and backup history files are small; a ref claiming more is damaged.
const MAX_SMALL_FILE: u64 = 1 << 20;

/// Check that `page`, the start of archived segment (or `.partial`) `name` of `size` bytes,
/// is that segment's first page: its long header's address, segment size and timeline fit the
/// name (a timeline's first segment starts as a copy of its parent's, so an older timeline
/// is let through for the caller to judge; a newer never), and, when the repository's system
/// identifier is known, it is that system's. Returns the header.
pub fn check_first_page(
    page: &[u8],
    name: &WalFileName,
    size: u64,
    sysid: Option<u64>,
) -> anyhow::Result<LongPageHeader> {
    let header = LongPageHeader::parse(page)?;
    header.check_belongs_to(name, size)?;
    if header.timeline > name.timeline().0 {
        anyhow::bail!("its first page is from timeline {}", header.timeline);
    }
    if let Some(ours) = sysid.filter(|&ours| ours != header.system_identifier) {
        anyhow::bail!(
            "its first page is from database system {}, the repository's is {ours}",
            header.system_identifier
        );
    }
    Ok(header)
}

/// Every WAL ref of the repository, in key order, and the refs that are damaged (do not
/// parse, or are stored under another file's key).
pub async fn load_wal_refs(repo: &Repo) -> anyhow::Result<Loaded<WalRef>> {
    let keys = repo.list(layout::WAL_PREFIX).await?;
    type Read = Option<Result<bytes::Bytes, Damaged>>;
    let loaded: Vec<(String, Read)> =
        futures::stream::iter(keys.into_iter().filter(|(k, _)| k.ends_with(".json")))
            .map(|(key, _)| {
                let repo = repo.clone();
                async move { anyhow::Ok((key.clone(), super::read_doc(&repo, &key).await?)) }
            })
            .buffered(32)
            .try_collect()
            .await?;
    let mut out = Loaded::default();
    for (key, body) in loaded {
        let Some(body) = out.body(body) else { continue };
        let parsed = serde_json::from_slice::<WalRef>(&body)
            .map_err(anyhow::Error::from)
            .and_then(|r| {
                if WalRef::key(&r.name) == key {
                    Ok(r)
                } else {
                    anyhow::bail!("it is the ref of {}, not of the file its key names", r.name)
                }
            });
        match parsed {
            Ok(r) => out.docs.push(r),
            Err(e) => out.damaged.push(Damaged::new(&key, &e)),
        }
    }
    Ok(out)
}

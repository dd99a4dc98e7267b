//! `pitr archive-wal`: store one WAL file durably, refuse anything that could
//! make the archive silently wrong, and push ready segments ahead so a backlog drains fast.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use pitr_pg::{LongPageHeader, WalFileKind, WalFileName, LONG_PAGE_HEADER_LEN};
use pitr_store::{DocWrite, Repo, RepoOptions};

use crate::repofile::{claim_cluster, SourceFingerprint, WalRef};

/// `pitr archive-wal PATH NAME`.
pub struct ArchiveWalRequest {
    /// The WAL file (`%p`), relative to the data directory, which is the working directory.
    pub path: PathBuf,
    /// Its name (`%f`).
    pub name: WalFileName,
    /// Also push up to this many upcoming ready segments in parallel.
    pub lookahead: usize,
}

/// History and backup history files are a few hundred bytes.
const MAX_HISTORY_FILE: u64 = 1 << 20;

fn describe(name: &WalFileName) -> &'static str {
    match name.kind() {
        WalFileKind::Segment | WalFileKind::Partial => "WAL segment",
        WalFileKind::History => "timeline history file",
        WalFileKind::BackupHistory => "backup history file",
    }
}

/// A WAL file opened and checked, ready to store.
struct WalFile {
    name: WalFileName,
    path: PathBuf,
    file: Arc<std::fs::File>,
    len: u64,
    fingerprint: SourceFingerprint,
    header: Option<LongPageHeader>,
}

impl WalFile {
    /// Open `path` and check that it is what `name` says: for segments, a long page header
    /// whose address matches the name and whose segment size matches the file length.
    fn open(path: &Path, name: WalFileName) -> anyhow::Result<WalFile> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("stat {}", path.display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file", path.display());
        }
        let len = meta.len();
        let header = match name.kind() {
            WalFileKind::Segment | WalFileKind::Partial => {
                let mut buf = [0u8; LONG_PAGE_HEADER_LEN];
                let n = file
                    .read_at(&mut buf, 0)
                    .with_context(|| format!("read {}", path.display()))?;
                let header = LongPageHeader::parse(&buf[..n])
                    .and_then(|h| h.check_belongs_to(&name, len).map(|()| h))
                    .with_context(|| format!("{} is not WAL segment {name}", path.display()))?;
                Some(header)
            }
            // The archive is create-only: an empty or garbled history file stored now would
            // block the real one forever, so these are parsed before anything is stored.
            WalFileKind::History | WalFileKind::BackupHistory => {
                if len > MAX_HISTORY_FILE {
                    bail!(
                        "{} is {len} bytes, too big for {}",
                        path.display(),
                        describe(&name)
                    );
                }
                let mut buf = vec![0u8; len as usize];
                file.read_exact_at(&mut buf, 0)
                    .with_context(|| format!("read {}", path.display()))?;
                let checked: anyhow::Result<()> = if name.kind() == WalFileKind::History {
                    pitr_pg::parse_history_file(name.timeline(), &buf)
                        .map(drop)
                        .map_err(Into::into)
                } else {
                    pitr_pg::parse_backup_history(&name, &buf)
                        .map(drop)
                        .map_err(Into::into)
                };
                checked.with_context(|| {
                    format!("{} is not {} {name}", path.display(), describe(&name))
                })?;
                None
            }
        };
        Ok(WalFile {
            name,
            path: path.to_path_buf(),
            file: Arc::new(file),
            len,
            fingerprint: SourceFingerprint::of(&meta),
            header,
        })
    }

    fn system_identifier(&self) -> Option<u64> {
        self.header.map(|h| h.system_identifier)
    }
}

enum Archived {
    Stored { stored_bytes: u64 },
    AlreadyThere,
}

/// The longest archive-wal may take from storing (or refreshing) a WAL file's first chunk to
/// writing its ref; well below `pitr expire`'s default grace period of an hour.
const MAX_STORE_TO_REF: std::time::Duration = std::time::Duration::from_secs(600);

/// Whether a ref may still follow chunks stored `elapsed` ago: after [`MAX_STORE_TO_REF`] an
/// expire may have taken them as unnamed (nothing is published; PostgreSQL retries).
fn within_store_to_ref(name: &WalFileName, elapsed: std::time::Duration) -> anyhow::Result<()> {
    if elapsed > MAX_STORE_TO_REF {
        bail!(
            "storing {name} took {} s, longer than the {} s a ref may follow its chunks; \
             nothing was published (PostgreSQL retries)",
            elapsed.as_secs(),
            MAX_STORE_TO_REF.as_secs()
        );
    }
    Ok(())
}

/// Store one WAL file and publish its ref. The ref is written create-only and only after
/// every chunk is durable; a name that already holds other content is an error.
async fn archive_one(repo: &Repo, wal: &WalFile) -> anyhow::Result<Archived> {
    let what = wal.path.display().to_string();
    if let Some(existing) = WalRef::load(repo, &wal.name).await? {
        if existing.source.as_ref() == Some(&wal.fingerprint) {
            return Ok(Archived::AlreadyThere);
        }
        // Cut the file the way the archived copy was cut, whatever the setting is now; a
        // file of another length is other content.
        let cut_len: u64 = existing.chunks.iter().map(|c| u64::from(c.len)).sum();
        if wal.len == existing.size && cut_len == wal.len {
            let chunks = repo
                .hash_file(Arc::clone(&wal.file), &existing.chunks, &what)
                .await?;
            if existing.same_content(&chunks, wal.len) {
                return Ok(Archived::AlreadyThere);
            }
        }
        bail!(
            "{} is already archived with different content; refusing to overwrite it \
             (the archived copy is kept; if this cluster was restored, check for two \
             clusters archiving into one repository)",
            wal.name
        );
    }
    let storing = Instant::now();
    let summary = repo.put_file(Arc::clone(&wal.file), wal.len, &what).await?;
    // `pitr expire` keeps an unnamed chunk only for its grace period after it was stored or
    // refreshed (docs/format.md, "Garbage collection"): a ref must follow its chunks soon.
    within_store_to_ref(&wal.name, storing.elapsed())?;
    let walref = WalRef {
        name: wal.name.clone(),
        size: wal.len,
        segment_size: wal.header.map(|h| h.segment_size),
        system_identifier: wal.system_identifier(),
        archived_at: chrono::Utc::now(),
        stored_bytes: summary.stored_bytes,
        chunks: summary.chunks,
        source: Some(wal.fingerprint.clone()),
    };
    let body = serde_json::to_vec(&walref).expect("ref serializes");
    match repo.put_doc(&WalRef::key(&wal.name), body.into()).await? {
        DocWrite::Created => Ok(Archived::Stored {
            stored_bytes: summary.stored_bytes,
        }),
        DocWrite::Exists(other) => {
            let other: WalRef = serde_json::from_slice(&other)
                .with_context(|| format!("parse {}", WalRef::key(&wal.name)))?;
            if other.same_content(&walref.chunks, walref.size) {
                Ok(Archived::AlreadyThere)
            } else {
                bail!(
                    "{} was archived concurrently with different content",
                    wal.name
                )
            }
        }
    }
}

pub async fn archive_wal(
    url: &str,
    options: &RepoOptions,
    req: ArchiveWalRequest,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let wal = WalFile::open(&req.path, req.name)?;
    // archive_command runs in the data directory: its pg_control names the cluster.
    let control = pitr_pg::read_system_identifier(Path::new("."))?;
    if let (Some(ours), Some(file)) = (control, wal.system_identifier()) {
        if ours != file {
            bail!(
                "{} comes from database system {file}, but this data directory is system {ours}",
                wal.name
            );
        }
    }
    let repo = Repo::open(url, options).await?;
    if let Some(sysid) = wal.system_identifier().or(control) {
        claim_cluster(&repo, sysid, &format!("WAL file {}", wal.name)).await?;
    }

    let ahead = ready_after(&req.path, &wal, req.lookahead);
    let pushers: Vec<_> = ahead
        .into_iter()
        .map(|(path, name)| {
            let repo = repo.clone();
            let sysid = wal.system_identifier();
            tokio::spawn(async move { push_ahead(&repo, &path, name, sysid).await })
        })
        .collect();

    let outcome = archive_one(&repo, &wal)
        .await
        .with_context(|| format!("archive {}", wal.name))?;
    let mut pushed = 0;
    for p in pushers {
        pushed += usize::from(p.await.unwrap_or(false));
    }
    let ms = started.elapsed().as_millis();
    match outcome {
        Archived::Stored { stored_bytes } => tracing::info!(
            "archived {} ({} bytes, {} new stored, {ms} ms{})",
            wal.name,
            wal.len,
            stored_bytes,
            if pushed > 0 {
                format!(", {pushed} upcoming pushed ahead")
            } else {
                String::new()
            }
        ),
        Archived::AlreadyThere => {
            tracing::debug!("{} already archived with identical content", wal.name)
        }
    }
    Ok(())
}

/// Segments marked ready in `archive_status` that PostgreSQL will ask for after `wal`, in the
/// order it will ask (oldest first), at most `limit`.
fn ready_after(path: &Path, wal: &WalFile, limit: usize) -> Vec<(PathBuf, WalFileName)> {
    if limit == 0 || wal.name.kind() != WalFileKind::Segment {
        return Vec::new();
    }
    let dir = path.parent().unwrap_or(Path::new(""));
    let status = dir.join("archive_status");
    let Ok(entries) = std::fs::read_dir(&status) else {
        return Vec::new();
    };
    let mut names: Vec<WalFileName> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let f = e.file_name();
            let stem = f.to_str()?.strip_suffix(".ready")?;
            let n: WalFileName = stem.parse().ok()?;
            (n.kind() == WalFileKind::Segment && n > wal.name).then_some(n)
        })
        .collect();
    names.sort();
    names.truncate(limit);
    names
        .into_iter()
        .map(|n| (dir.join(n.as_str()), n))
        .collect()
}

/// Archive an upcoming segment ahead of its call. Failures are left for that call to report.
async fn push_ahead(repo: &Repo, path: &Path, name: WalFileName, sysid: Option<u64>) -> bool {
    let result = async {
        let wal = WalFile::open(path, name)?;
        if wal.system_identifier() != sysid {
            bail!("{} is from another system", wal.name);
        }
        archive_one(repo, &wal).await
    }
    .await;
    match result {
        Ok(Archived::Stored { .. }) => true,
        Ok(Archived::AlreadyThere) => false,
        Err(e) => {
            tracing::debug!("push ahead {}: {e:#}", path.display());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/format.md rule 7: a ref follows its chunks within ten minutes, or is not written
    /// (expire's grace period, an hour by default, must cover the gap).
    #[test]
    fn a_ref_follows_its_chunks_within_the_bound_or_not_at_all() {
        use std::time::Duration;
        let name: WalFileName = "000000010000000000000002".parse().unwrap();
        within_store_to_ref(&name, Duration::from_secs(599)).unwrap();
        within_store_to_ref(&name, MAX_STORE_TO_REF).unwrap();
        let e = within_store_to_ref(&name, Duration::from_secs(601)).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("000000010000000000000002") && e.contains("600 s") && !e.contains("  "),
            "{e}"
        );
        assert!(
            MAX_STORE_TO_REF < Duration::from_secs(3600),
            "under the default grace"
        );
    }
}

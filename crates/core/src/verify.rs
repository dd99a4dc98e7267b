//! `pitr verify [--backup ID]`: re-read every chunk the backups and the archived WAL name
//! (each read decompresses and re-hashes, so a missing or corrupt chunk is reported with its
//! key), and check that the archived WAL of each timeline has no missing segment.
//!
//! Each problem is one line naming the object and who needs it. A chunk shared by many files
//! is read once and reported under the first file that names it.

use std::collections::HashMap;

use anyhow::bail;
use futures::StreamExt;
use pitr_store::{ChunkId, ChunkRef, Repo};

use crate::index::ArchiveIndex;
use crate::repofile::{load_wal_refs, BackupManifest};

/// `pitr verify`: everything, or one backup and the archived WAL that carries it forward.
#[derive(Default)]
pub struct VerifyRequest {
    pub backup: Option<String>,
}

pub struct VerifyReport {
    pub backups: usize,
    pub wal_files: usize,
    /// Bytes of the distinct chunks read.
    pub bytes: u64,
    /// One line per problem, sorted chunk problems first, then missing segments.
    pub problems: Vec<String>,
}

pub async fn verify(repo: &Repo, req: VerifyRequest) -> anyhow::Result<VerifyReport> {
    let mut backups = BackupManifest::list(repo).await?;
    let mut refs = load_wal_refs(repo).await?;
    if let Some(id) = &req.backup {
        backups.retain(|b| &b.id == id);
        let Some(b) = backups.first() else {
            bail!("no backup {id} in {}", repo.url());
        };
        // The archived WAL that can carry this backup forward: its timeline, from its start.
        let (tli, start) = (b.timeline, b.wal_start.clone());
        refs.retain(|r| r.name.timeline() == tli && r.name >= start);
    }

    let mut chunks: HashMap<ChunkId, (ChunkRef, String)> = HashMap::new();
    let mut name = |list: &[ChunkRef], owner: &dyn Fn() -> String| {
        for c in list {
            chunks.entry(c.id).or_insert_with(|| (*c, owner()));
        }
    };
    for b in &backups {
        for f in b.all_files() {
            name(&f.chunks, &|| format!("backup {} file {}", b.id, f.path));
        }
    }
    for r in &refs {
        name(&r.chunks, &|| format!("archived WAL {}", r.name));
    }
    let bytes: u64 = chunks.values().map(|(c, _)| u64::from(c.len)).sum();
    tracing::info!(
        "verifying {} backups, {} archived WAL files: {} chunks, {} MiB",
        backups.len(),
        refs.len(),
        chunks.len(),
        bytes >> 20
    );

    let mut problems: Vec<String> = futures::stream::iter(chunks.into_values())
        .map(|(chunk, owner)| {
            let repo = repo.clone();
            async move {
                let err = repo.get_chunk(&chunk).await.err()?;
                Some(format!("{owner}: {err}"))
            }
        })
        .buffer_unordered(repo.concurrency())
        .filter_map(|p| async move { p })
        .collect()
        .await;
    problems.sort();
    problems.extend(ArchiveIndex::of_refs(&refs).gaps().into_iter().map(|g| {
        let tli = g.timeline;
        if g.first == g.last {
            format!(
                "archived WAL on timeline {tli}: segment {} is missing",
                g.first
            )
        } else {
            format!(
                "archived WAL on timeline {tli}: segments {} to {} are missing",
                g.first, g.last
            )
        }
    }));
    Ok(VerifyReport {
        backups: backups.len(),
        wal_files: refs.len(),
        bytes,
        problems,
    })
}

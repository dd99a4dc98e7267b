//! `pitr verify [--backup ID]`: re-read every chunk the backups and the archived WAL name
//! (each read decompresses and re-hashes, so a missing or corrupt chunk is reported with its
//! key), and check that the archived WAL of each timeline has no missing segment.
//!
//! Each problem is one line on stdout, naming the object and who needs it; the exit status is
//! non-zero when there is any. A chunk shared by many files is read once and reported under
//! the first file that names it.

use std::collections::HashMap;

use anyhow::bail;
use futures::StreamExt;
use pitr_pg::WalFileName;
use pitr_store::{ChunkId, ChunkRef, Repo};

use crate::backup::BackupManifest;
use crate::cli::VerifyArgs;
use crate::info::{load_wal_refs, wal_gaps};
use crate::walref::WalRef;

pub async fn verify(url: &str, args: VerifyArgs) -> anyhow::Result<()> {
    let repo = Repo::open(url).await?;
    let mut backups = BackupManifest::list(&repo).await?;
    let mut refs = load_wal_refs(&repo).await?;
    if let Some(id) = &args.backup {
        backups.retain(|b| &b.id == id);
        let Some(b) = backups.first() else {
            bail!("no backup {id} in {}", repo.url());
        };
        // The archived WAL that can carry this backup forward: its timeline, from its start.
        let (tli, start) = (b.timeline, b.wal_start.clone());
        refs.retain(|r| {
            r.name
                .parse::<WalFileName>()
                .is_ok_and(|n| n.timeline().0 == tli)
                && r.name >= start
        });
    }

    let mut chunks: HashMap<ChunkId, (ChunkRef, String)> = HashMap::new();
    let mut name = |list: &[ChunkRef], owner: &dyn Fn() -> String| {
        for c in list {
            chunks.entry(c.id).or_insert_with(|| (*c, owner()));
        }
    };
    for b in &backups {
        for f in b.files.iter().chain(&b.wal).chain([&b.server_manifest]) {
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
    problems.extend(gap_problems(&refs));

    for p in &problems {
        println!("{p}");
    }
    if !problems.is_empty() {
        bail!(
            "verify found {} problem{} in {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            repo.url()
        );
    }
    println!(
        "verified {} backups and {} archived WAL files ({} MiB of chunks): no problems",
        backups.len(),
        refs.len(),
        bytes >> 20
    );
    Ok(())
}

fn gap_problems(refs: &[WalRef]) -> Vec<String> {
    wal_gaps(refs)
        .into_iter()
        .map(|(tli, first, last)| {
            if first == last {
                format!("archived WAL on timeline {tli}: segment {first} is missing")
            } else {
                format!("archived WAL on timeline {tli}: segments {first} to {last} are missing")
            }
        })
        .collect()
}

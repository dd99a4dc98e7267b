//! `pitr verify [--backup ID]`: re-read every chunk the backups and the archived WAL name
//! (each read decompresses and re-hashes, so a missing or corrupt chunk is reported with its
//! key), check that each document holds together (a manifest that parses and names its own
//! backup and that a restore would accept; a WAL ref under its own name, of a segment's size,
//! whose first page is that segment's, of this repository's cluster; a history file that
//! parses), and that the archived WAL of each timeline has no missing segment.
//!
//! Each problem is one line naming the object and who needs it. A chunk shared by many files
//! is read once and reported under the first file that names it.

use std::collections::HashMap;

use anyhow::bail;
use futures::StreamExt;
use pitr_pg::{LongPageHeader, WalFileKind, WalFileName, DEFAULT_WAL_SEGMENT_SIZE};
use pitr_store::{ChunkId, ChunkRef, Repo};

use crate::index::ArchiveIndex;
use crate::repofile::{load_wal_refs, repo_system_identifier, BackupManifest, WalRef};

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
    /// One line per problem: damaged documents, then chunks, then missing segments.
    pub problems: Vec<String>,
}

/// A chunk to read, who needs it (for the message), and the WAL segments whose first page it
/// holds (checked on the bytes read).
struct ToRead {
    chunk: ChunkRef,
    owner: String,
    first_page_of: Vec<(WalFileName, u64)>,
}

pub async fn verify(repo: &Repo, req: VerifyRequest) -> anyhow::Result<VerifyReport> {
    let backups = BackupManifest::list(repo).await?;
    let refs = load_wal_refs(repo).await?;
    let sysid = repo_system_identifier(repo).await?;
    let mut problems: Vec<String> = Vec::new();
    let (mut backups, mut refs) = match &req.backup {
        None => {
            let damaged = backups.damaged.iter().chain(&refs.damaged);
            problems.extend(damaged.map(|d| d.to_string()));
            (backups.docs, refs.docs)
        }
        Some(id) => {
            let key = BackupManifest::key(id);
            if let Some(d) = backups.damaged.iter().find(|d| d.key == key) {
                problems.push(d.to_string());
            }
            (backups.docs, refs.docs)
        }
    };
    if let Some(id) = &req.backup {
        backups.retain(|b| &b.id == id);
        match backups.first() {
            Some(b) => {
                // The archived WAL that can carry this backup forward: its timeline, from its
                // start.
                let (tli, start) = (b.timeline, b.wal_start.clone());
                refs.retain(|r| r.name.timeline() == tli && r.name >= start);
            }
            None if problems.is_empty() => bail!("no backup {id} in {}", repo.url()),
            None => refs.clear(),
        }
    }

    let mut chunks: HashMap<ChunkId, ToRead> = HashMap::new();
    let mut name = |list: &[ChunkRef], owner: &dyn Fn() -> String| {
        for c in list {
            chunks.entry(c.id).or_insert_with(|| ToRead {
                chunk: *c,
                owner: owner(),
                first_page_of: Vec::new(),
            });
        }
    };
    for b in &backups {
        // What a restore would refuse (an entry below a link, a foreign tablespace, …).
        if let Err(e) = b.check_restorable() {
            problems.push(format!(
                "{} cannot be restored: {e:#}",
                BackupManifest::key(&b.id)
            ));
        }
        for f in b.all_files() {
            name(&f.chunks, &|| format!("backup {} file {}", b.id, f.path));
        }
    }
    for r in &refs {
        name(&r.chunks, &|| format!("archived WAL {}", r.name));
    }
    for r in &refs {
        problems.extend(check_ref(r, sysid));
        if matches!(r.name.kind(), WalFileKind::Segment | WalFileKind::Partial) {
            if let Some(first) = r.chunks.first().and_then(|c| chunks.get_mut(&c.id)) {
                first.first_page_of.push((r.name.clone(), r.size));
            }
        }
    }
    let bytes: u64 = chunks.values().map(|c| u64::from(c.chunk.len)).sum();
    tracing::info!(
        "verifying {} backups, {} archived WAL files: {} chunks, {} MiB",
        backups.len(),
        refs.len(),
        chunks.len(),
        bytes >> 20
    );

    let mut chunk_problems: Vec<String> = futures::stream::iter(chunks.into_values())
        .map(|c| {
            let repo = repo.clone();
            async move {
                let data = match repo.get_chunk(&c.chunk).await {
                    Ok(data) => data,
                    Err(err) => return vec![format!("{}: {err}", c.owner)],
                };
                c.first_page_of
                    .iter()
                    .filter_map(|(name, size)| check_first_page(&data, name, *size, sysid))
                    .collect()
            }
        })
        .buffer_unordered(repo.concurrency())
        .flat_map(futures::stream::iter)
        .collect()
        .await;
    chunk_problems.sort();
    problems.extend(chunk_problems);
    problems.extend(history_problems(repo, &refs).await);
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

/// What a WAL ref says about itself that cannot be true.
fn check_ref(r: &WalRef, sysid: Option<u64>) -> Vec<String> {
    let key = WalRef::key(&r.name);
    let mut out = Vec::new();
    let chunked: u64 = r.chunks.iter().map(|c| u64::from(c.len)).sum();
    if chunked != r.size {
        out.push(format!(
            "archived WAL {} ({key}): its chunks add up to {chunked} bytes, the ref says {}",
            r.name, r.size
        ));
    }
    if r.name.kind() == WalFileKind::Segment {
        let seg = r.segment_size.unwrap_or(DEFAULT_WAL_SEGMENT_SIZE);
        if r.size != u64::from(seg) {
            out.push(format!(
                "archived WAL {} ({key}): {} bytes, not a whole segment of {seg}",
                r.name, r.size
            ));
        }
    }
    if let (Some(ours), Some(theirs)) = (sysid, r.system_identifier) {
        if ours != theirs {
            out.push(format!(
                "archived WAL {} ({key}): from database system {theirs}, the repository's is {ours}",
                r.name
            ));
        }
    }
    out
}

/// Whether `data`, the first chunk of archived segment `name` of `size` bytes, starts with
/// that segment's long page header.
fn check_first_page(
    data: &[u8],
    name: &WalFileName,
    size: u64,
    sysid: Option<u64>,
) -> Option<String> {
    let key = WalRef::key(name);
    let problem = |detail: String| Some(format!("archived WAL {name} ({key}): {detail}"));
    let header = match LongPageHeader::parse(data) {
        Ok(h) => h,
        Err(e) => return problem(e.to_string()),
    };
    let whole = if name.kind() == WalFileKind::Segment {
        size
    } else {
        u64::from(header.segment_size)
    };
    if let Err(e) = header.check_belongs_to(name, whole) {
        return problem(e.to_string());
    }
    // The first segment of a new timeline starts as a copy of its parent's: its first page
    // may carry an older timeline, never a newer one.
    if header.timeline > name.timeline().0 {
        return problem(format!(
            "its first page is from timeline {}",
            header.timeline
        ));
    }
    match sysid {
        Some(ours) if header.system_identifier != ours => problem(format!(
            "its first page is from database system {}, the repository's is {ours}",
            header.system_identifier
        )),
        _ => None,
    }
}

/// History files that do not parse (recovery would stop on them).
async fn history_problems(repo: &Repo, refs: &[WalRef]) -> Vec<String> {
    let mut out = Vec::new();
    for r in refs
        .iter()
        .filter(|r| r.name.kind() == WalFileKind::History)
    {
        // An unreadable chunk is reported by the chunk pass already.
        let Ok(bytes) = repo.get_bytes(&r.chunks).await else {
            continue;
        };
        let parsed = String::from_utf8(bytes)
            .map_err(|e| e.to_string())
            .and_then(|t| pitr_pg::parse_history(&t).map_err(|e| e.to_string()));
        if let Err(e) = parsed {
            out.push(format!(
                "archived WAL {} ({}): not a history file: {e}",
                r.name,
                WalRef::key(&r.name)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use pitr_store::RepoConfig;

    use super::*;
    use crate::repofile::claim_cluster;

    const SEG: u32 = DEFAULT_WAL_SEGMENT_SIZE;
    const SYSID: u64 = 7_312_000_000_000_000_001;

    fn manifest(id: &str, wal: serde_json::Value) -> serde_json::Value {
        let server = serde_json::json!({"path": "backup_manifest", "kind": "file", "mode": 384,
                                        "size": 0, "mtime": 0});
        serde_json::json!({
            "format_version": 1, "id": id, "label": id,
            "start_time": "2026-11-26T00:00:00Z", "stop_time": "2026-11-26T00:00:01Z",
            "start_lsn": "0/2000028", "stop_lsn": "0/2000100", "timeline": 1,
            "system_identifier": SYSID.to_string(), "pg_version": "15.18",
            "pg_version_num": 150018, "size_bytes": 0, "stored_bytes": 0,
            "wal_start": "000000010000000000000002", "wal_stop": "000000010000000000000002",
            "files": [], "tablespaces": [], "wal": wal, "server_manifest": server,
        })
    }

    async fn put(repo: &Repo, key: &str, doc: &serde_json::Value) {
        let body = serde_json::to_vec(doc).unwrap();
        repo.put_doc(key, body.into()).await.unwrap();
    }

    /// A segment of `seg` whose first page says it is `as_segno` of system `sysid`.
    fn segment(as_segno: u64, sysid: u64) -> Vec<u8> {
        let mut b = vec![0u8; SEG as usize];
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x0006u16.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..16].copy_from_slice(&(as_segno * u64::from(SEG)).to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&SEG.to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b[100..108].copy_from_slice(&as_segno.to_le_bytes()); // tell segments apart
        b
    }

    /// Archive `data` under `name` the way archive-wal would (no checks).
    async fn archive(repo: &Repo, name: &str, data: Vec<u8>, size: Option<u64>) -> WalRef {
        let (chunk, _) = repo.put_chunk(Bytes::from(data.clone())).await.unwrap();
        let r = WalRef {
            name: name.parse().unwrap(),
            size: size.unwrap_or(data.len() as u64),
            segment_size: (!name.ends_with(".history")).then_some(SEG),
            system_identifier: Some(SYSID),
            archived_at: "2026-11-26T00:00:02Z".parse().unwrap(),
            stored_bytes: 0,
            chunks: vec![chunk],
            source: None,
        };
        put(
            repo,
            &WalRef::key(&r.name),
            &serde_json::to_value(&r).unwrap(),
        )
        .await;
        r
    }

    /// A manifest that does not parse, names another backup, or has a zero-size WAL file is
    /// reported by its key and skipped; the others stay usable, and a restore asking for a
    /// damaged one is refused naming it.
    #[tokio::test]
    async fn damaged_documents_are_named_and_the_rest_stays_usable() {
        let (repo, _) = Repo::init("memory://verify-damaged", RepoConfig::default())
            .await
            .unwrap();
        claim_cluster(&repo, SYSID, "test").await.unwrap();
        put(
            &repo,
            &BackupManifest::key("good"),
            &manifest("good", serde_json::json!([])),
        )
        .await;
        put(
            &repo,
            &BackupManifest::key("swapped"),
            &manifest("good2", serde_json::json!([])),
        )
        .await;
        let zero = serde_json::json!([{"path": "pg_wal/000000010000000000000002", "kind": "file",
                                       "mode": 384, "size": 0, "mtime": 0}]);
        put(&repo, &BackupManifest::key("zero"), &manifest("zero", zero)).await;
        repo.put_doc(
            &BackupManifest::key("junk"),
            Bytes::from_static(b"{not json"),
        )
        .await
        .unwrap();

        let loaded = BackupManifest::list(&repo).await.unwrap();
        assert_eq!(loaded.docs.len(), 1);
        let mut damaged: Vec<&str> = loaded.damaged.iter().map(|d| d.key.as_str()).collect();
        damaged.sort();
        assert_eq!(
            damaged,
            [
                "backups/junk.json",
                "backups/swapped.json",
                "backups/zero.json"
            ]
        );
        let e = BackupManifest::list(&repo)
            .await
            .unwrap()
            .for_restore(Some("zero"))
            .unwrap_err();
        assert!(
            e.to_string().contains("backups/zero.json is damaged"),
            "{e}"
        );
        let usable = BackupManifest::list(&repo)
            .await
            .unwrap()
            .for_restore(None)
            .unwrap();
        assert_eq!(usable.len(), 1);

        let report = verify(&repo, VerifyRequest::default()).await.unwrap();
        assert_eq!(report.backups, 1);
        for key in damaged {
            assert!(
                report
                    .problems
                    .iter()
                    .any(|p| p.starts_with(&format!("{key} is damaged"))),
                "{key} not reported: {:?}",
                report.problems
            );
        }

        // One that parses but that a restore would refuse: an entry below a link.
        let mut linked = manifest("linked", serde_json::json!([]));
        linked["files"] = serde_json::json!([
            {"path": "base", "kind": "symlink", "mode": 511, "size": 0, "mtime": 0,
             "link": "/etc"},
            {"path": "base/x", "kind": "file", "mode": 384, "size": 0, "mtime": 0},
        ]);
        put(&repo, &BackupManifest::key("linked"), &linked).await;
        let report = verify(&repo, VerifyRequest::default()).await.unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.starts_with("backups/linked.json cannot be restored")
                    && p.contains("base/x is below base")),
            "{:?}",
            report.problems
        );
    }

    /// Refs under another segment's key, of the wrong size, whose first page belongs to
    /// another segment or cluster, and history files that do not parse are each named.
    #[tokio::test]
    async fn wal_refs_that_lie_are_named() {
        let (repo, _) = Repo::init("memory://verify-refs", RepoConfig::default())
            .await
            .unwrap();
        claim_cluster(&repo, SYSID, "test").await.unwrap();
        archive(&repo, "000000010000000000000002", segment(2, SYSID), None).await;
        // segment 3's ref lies about its size; 4 holds 5's bytes; 5 another cluster's
        archive(
            &repo,
            "000000010000000000000003",
            segment(3, SYSID),
            Some(8192),
        )
        .await;
        archive(&repo, "000000010000000000000004", segment(5, SYSID), None).await;
        archive(&repo, "000000010000000000000005", segment(5, 42), None).await;
        // 6's ref stored under 7's key
        let six = archive(&repo, "000000010000000000000006", segment(6, SYSID), None).await;
        let seven: WalFileName = "000000010000000000000007".parse().unwrap();
        put(
            &repo,
            &WalRef::key(&seven),
            &serde_json::to_value(&six).unwrap(),
        )
        .await;
        archive(&repo, "00000002.history", b"not a history\n".to_vec(), None).await;

        let report = verify(&repo, VerifyRequest::default()).await.unwrap();
        let has = |needle: &str| report.problems.iter().any(|p| p.contains(needle));
        assert!(
            has("000000010000000000000003 (wal/00000001/000000010000000000000003.json): its chunks add up to"),
            "{:?}",
            report.problems
        );
        assert!(has("000000010000000000000004 (wal/00000001/000000010000000000000004.json): page address"), "{:?}", report.problems);
        assert!(has("000000010000000000000005 (wal/00000001/000000010000000000000005.json): its first page is from database system 42"), "{:?}", report.problems);
        assert!(has("wal/00000001/000000010000000000000007.json is damaged: it is the ref of 000000010000000000000006"), "{:?}", report.problems);
        assert!(
            has("00000002.history (wal/00000002/00000002.history.json): not a history file"),
            "{:?}",
            report.problems
        );
        assert!(
            !has("000000010000000000000002"),
            "a good segment reported: {:?}",
            report.problems
        );
    }
}

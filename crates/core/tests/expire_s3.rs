//! `expire` on a real S3-compatible server (moto, started here; skipped without it unless
//! `PITR_REQUIRE_S3=1`): old backups, their WAL and unshared chunks go; a backup running
//! meanwhile (marker written, chunks stored and relied on, manifest after the expire) stays
//! whole; archive-wal storing a chunk that exists refreshes it so that the deletion keeps it.
//!
//! This is the only test binary of pitr-core that sets AWS_* variables.

use bytes::Bytes;
use pitr_core::expire::{expire, ExpireRequest, Retention};
use pitr_core::repofile::{BackupManifest, MarkerGuard, WalRef};
use pitr_store::{ChunkRef, ChunkRemoval, Repo, RepoConfig};
use pitr_testkit::s3::{aws_env, start_or_skip};

fn manifest(id: &str, stop: &str, first_seg: u64, chunks: &[ChunkRef]) -> BackupManifest {
    let seg = format!("00000001{:08X}{:08X}", first_seg >> 8, first_seg & 0xff);
    let lsn = format!("0/{:X}", (first_seg << 24) + 0x28);
    let server = serde_json::json!({"path": "backup_manifest", "kind": "file", "mode": 384,
                                    "size": 0, "mtime": 0});
    let file = serde_json::json!({"path": "base/1/1", "kind": "file", "mode": 384,
                                  "size": 0, "mtime": 0, "chunks": chunks});
    serde_json::from_value(serde_json::json!({
        "format_version": 1, "id": id, "label": id,
        "start_time": stop, "stop_time": stop,
        "start_lsn": lsn, "stop_lsn": lsn, "timeline": 1,
        "system_identifier": "1", "pg_version": "15.18", "pg_version_num": 150018,
        "size_bytes": 0, "stored_bytes": 0,
        "wal_start": seg, "wal_stop": seg,
        "files": [file], "tablespaces": [], "wal": [], "server_manifest": server,
    }))
    .unwrap()
}

async fn put_manifest(repo: &Repo, m: &BackupManifest) {
    let body = serde_json::to_vec(m).unwrap();
    repo.put_doc(&BackupManifest::key(&m.id), body.into())
        .await
        .unwrap();
}

async fn put_ref(repo: &Repo, seg: u64, chunks: &[ChunkRef]) {
    let r: WalRef = serde_json::from_value(serde_json::json!({
        "name": format!("00000001{:08X}{:08X}", seg >> 8, seg & 0xff),
        "size": chunks.iter().map(|c| u64::from(c.len)).sum::<u64>(),
        "segment_size": 16777216, "system_identifier": "1",
        "archived_at": "2026-11-01T00:00:00Z", "stored_bytes": 0, "chunks": chunks,
    }))
    .unwrap();
    let body = serde_json::to_vec(&r).unwrap();
    repo.put_doc(&WalRef::key(&r.name), body.into())
        .await
        .unwrap();
}

async fn chunk(repo: &Repo, what: &str) -> ChunkRef {
    repo.put_new_chunk(Bytes::from(what.repeat(400)))
        .await
        .unwrap()
        .0
}

fn request(full: usize) -> ExpireRequest {
    ExpireRequest {
        retention: Retention {
            full: Some(full),
            ..Default::default()
        },
        dry_run: false,
        gc_grace: std::time::Duration::ZERO,
        marker_stale: std::time::Duration::from_secs(3600),
        retire_timelines: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expire_on_s3() {
    let Some(server) = start_or_skip("expire_on_s3") else {
        return;
    };
    server.create_bucket("pitr-expire");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            std::env::remove_var(key);
        }
    }
    for (key, value) in aws_env(&server.endpoint()) {
        std::env::set_var(key, value);
    }
    let repo = Repo::init(
        "s3://pitr-expire/repo",
        RepoConfig::default(),
        &pitr_store::RepoOptions::default(),
    )
    .await
    .unwrap()
    .0;
    let shared = chunk(&repo, "shared ").await;
    let old = chunk(&repo, "old only ").await;
    let kept = chunk(&repo, "kept only ").await;
    let zeros = chunk(&repo, "\0").await; // named by nothing (yet)
    put_manifest(
        &repo,
        &manifest("b1", "2026-11-01T00:00:00Z", 2, &[old, shared]),
    )
    .await;
    put_manifest(
        &repo,
        &manifest("b2", "2026-11-08T00:00:00Z", 4, &[kept, shared]),
    )
    .await;
    let wal: Vec<ChunkRef> = futures::future::join_all((2..6u64).map(|s| {
        let repo = repo.clone();
        async move { chunk(&repo, &format!("wal {s} ")).await }
    }))
    .await;
    for (i, c) in wal.iter().enumerate() {
        put_ref(&repo, 2 + i as u64, &[*c]).await;
    }
    // S3 modification times have a resolution of a second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    // A backup starts (marker, a new chunk, reliance on b1's chunk), then expire runs.
    let marker = MarkerGuard::write(&repo).await.unwrap();
    let new = chunk(&repo, "new in b3 ").await;
    assert!(repo.has_chunk(&old.id).await.unwrap());
    let done = expire(&repo, &request(1)).await.unwrap();
    let gone: Vec<&str> = done.backups.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(gone, ["b1"]);
    assert_eq!(done.wal.len(), 2, "{done:?}");
    assert!(
        done.chunks.is_empty() && done.chunks_skipped.is_some(),
        "{done:?}"
    );
    put_manifest(
        &repo,
        &manifest("b3", "2026-11-15T00:00:00Z", 5, &[new, old]),
    )
    .await;
    marker.remove(&repo).await.unwrap();
    repo.get_chunk(&old).await.unwrap();
    repo.get_chunk(&new).await.unwrap();

    // archive-wal stores the all-zero chunk again: it exists, and is refreshed, so a
    // deletion judged against a cut-off before that keeps it.
    let cutoff = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (again, stored) = repo
        .put_new_chunk(Bytes::from("\0".repeat(400)))
        .await
        .unwrap();
    assert_eq!((again, stored), (zeros, 0));
    put_ref(&repo, 9, &[zeros]).await;
    assert_eq!(
        repo.remove_chunk_unless_fresh(&zeros.id, cutoff)
            .await
            .unwrap(),
        ChunkRemoval::Fresh
    );

    // With nothing running, the next expire keeps b2 and b3 and collects the expired WAL's
    // chunks; everything kept reads back.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let done = expire(&repo, &request(2)).await.unwrap();
    assert_eq!(done.kept, ["b2", "b3"]);
    let mut expected: Vec<String> = wal[..2].iter().map(|c| c.id.key()).collect();
    expected.sort();
    let collected: Vec<String> = done.chunks.iter().map(|c| c.key.clone()).collect();
    assert_eq!(collected, expected, "{done:?}");
    for c in [shared, old, kept, new, zeros].iter().chain(&wal[2..]) {
        repo.get_chunk(c).await.unwrap();
    }
    drop(server);
}

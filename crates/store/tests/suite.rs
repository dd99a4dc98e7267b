//! The shared suite (tests/common) on the memory and local-directory backends, plus checks
//! only a local directory allows. The same suite runs against a real S3 server in `s3.rs`.

mod common;

use bytes::Bytes;
use common::{concurrent_writers, file_round_trip, suite, walk};
use pitr_store::{Repo, RepoConfig, StoreError};

#[tokio::test]
async fn memory_backend() {
    let repo = suite("memory://").await;
    concurrent_writers(&repo).await;
    file_round_trip(&repo).await;
}

#[tokio::test]
async fn local_backend() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("repo").display().to_string();
    let repo = suite(&url).await;
    concurrent_writers(&repo).await;
    file_round_trip(&repo).await;
    // a fresh open sees the same configuration
    let reopened = Repo::open(&url).await.unwrap();
    assert_eq!(reopened.config(), repo.config());
    // no staging files left behind
    let leftovers = walk(dir.path())
        .into_iter()
        .filter(|p| p.contains('#'))
        .count();
    assert_eq!(leftovers, 0);
}

#[tokio::test]
async fn local_corruption_is_reported_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let (repo, _) = Repo::init(&url, RepoConfig::default()).await.unwrap();
    let data = Bytes::from(b"precious WAL bytes ".repeat(2000));
    let (r, _) = repo.put_chunk(data).await.unwrap();
    let path = dir.path().join(r.id.key());
    let mut body = std::fs::read(&path).unwrap();
    let mid = body.len() / 2;
    body[mid] ^= 0x55;
    std::fs::write(&path, body).unwrap();
    match repo.get_chunk(&r).await {
        Err(StoreError::Corrupt { key, .. }) => assert!(key.contains(&r.id.to_hex())),
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[tokio::test]
async fn open_without_init_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let err = Repo::open(dir.path().to_str().unwrap()).await.unwrap_err();
    assert!(matches!(err, StoreError::NotInitialized { .. }), "{err}");
    assert!(err.to_string().contains("pitr init"));
}

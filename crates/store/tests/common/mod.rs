//! The suite every backend must pass, shared by the per-backend test files (`suite.rs` for
//! memory and local directories, `s3.rs` for a real S3-compatible server).

// Each test binary uses only part of this module.
#![allow(dead_code)]

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use object_store::ObjectStoreExt;
use pitr_store::{
    ChunkId, ChunkRef, Chunker, DocWrite, Fingerprint, InitOutcome, KdfCost, KnownChunk, Repo,
    RepoConfig, RepoOptions, Secret, StoreError, Uploader,
};

/// Argon2id at its cheapest allowed cost: the tests open repositories many times.
pub const CHEAP: KdfCost = KdfCost {
    memory_kib: 8 << 10,
    iterations: 1,
};

/// The suite's encrypted half: an encrypted repository at `url` keeps its plaintext out of
/// every object and every name, reads back what it wrote, opens only with a secret one of
/// its slots takes, and runs the shared checks with keyed chunk IDs.
pub async fn encrypted_suite(url: &str) -> Repo {
    let pass = Secret::new("correct horse battery staple\n", "test passphrase");
    let (repo, outcome) = Repo::init_encrypted(
        url,
        RepoConfig::default(),
        &RepoOptions::default(),
        &pass,
        "dba",
        CHEAP,
    )
    .await
    .unwrap();
    assert_eq!(outcome, InitOutcome::Created);
    assert_eq!(repo.cipher(), Some(pitr_store::CIPHER));
    assert_eq!(
        repo.config().format_version,
        pitr_store::ENCRYPTED_FORMAT_VERSION
    );

    let secret = b"PITR-SECRET-ROW-".repeat(5000);
    let data = Bytes::from(secret.clone());
    let (c, stored) = repo.put_chunk(data.clone()).await.unwrap();
    assert!(stored > 0);
    assert_ne!(c.id, ChunkId::of(&data), "chunk names are keyed");
    assert_eq!(c.id, repo.chunk_id(&data));
    assert_eq!(repo.get_chunk(&c).await.unwrap(), data);
    assert_eq!(
        repo.put_doc("wal/s.json", Bytes::from_static(b"{\"PITR-SECRET-DOC\":1}"))
            .await
            .unwrap(),
        DocWrite::Created
    );
    // create-only compares plaintexts
    assert_eq!(
        repo.put_doc("wal/s.json", Bytes::from_static(b"{}"))
            .await
            .unwrap(),
        DocWrite::Exists(Bytes::from_static(b"{\"PITR-SECRET-DOC\":1}"))
    );
    // no object holds the plaintext
    let raw = Repo::open(url, &RepoOptions::with_secret(Some(pass.clone())))
        .await
        .unwrap();
    let everything = raw.list_objects("").await.unwrap();
    assert!(everything.len() >= 4, "{everything:?}");
    {
        for listed in everything {
            let backend = raw.location();
            let body = backend
                .store
                .get(&backend.path(&listed.key))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            for needle in [&b"PITR-SECRET"[..], b"correct horse"] {
                assert!(
                    !body.windows(needle.len()).any(|w| w == needle),
                    "{} holds plaintext",
                    listed.key
                );
            }
        }
    }

    // the same passphrase reopens it; a wrong one, none, or init again with other settings
    // do not
    let again = Repo::open(url, &RepoOptions::with_secret(Some(pass.clone())))
        .await
        .unwrap();
    assert_eq!(
        again.get_doc("wal/s.json").await.unwrap().unwrap().len(),
        21
    );
    let wrong = Secret::new("wrong", "PITR_PASSPHRASE");
    let e = Repo::open(url, &RepoOptions::with_secret(Some(wrong.clone())))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::WrongKey { .. }), "{e}");
    assert!(e.to_string().contains("PITR_PASSPHRASE"), "{e}");
    let e = Repo::open(url, &RepoOptions::default()).await.unwrap_err();
    assert!(matches!(e, StoreError::KeyRequired { .. }), "{e}");
    let (_, o) = Repo::init_encrypted(
        url,
        RepoConfig::default(),
        &RepoOptions::default(),
        &pass,
        "x",
        CHEAP,
    )
    .await
    .unwrap();
    assert_eq!(o, InitOutcome::AlreadyInitialized);
    assert!(matches!(
        Repo::init(url, RepoConfig::default(), &RepoOptions::default()).await,
        Err(StoreError::ConfigMismatch { .. })
    ));

    // rotation: a new passphrase, the old slot removed; a key file; an exported key
    let new = Secret::new("new passphrase", "new");
    let added = repo
        .key_add_passphrase(&new, "new dba", CHEAP)
        .await
        .unwrap();
    let slots = repo.key_slots().await.unwrap();
    assert_eq!(slots.len(), 2);
    let old = slots.iter().find(|s| s.in_use).unwrap().id.clone();
    repo.key_remove(&old).await.unwrap();
    let by_new = Repo::open(url, &RepoOptions::with_secret(Some(new.clone())))
        .await
        .unwrap();
    assert_eq!(by_new.get_chunk(&c).await.unwrap(), data);
    let e = by_new.key_remove(&added.id).await.unwrap_err();
    assert!(e.to_string().contains("last key slot"), "{e}");
    let (_, key_file) = by_new.key_add_key_file("archiver").await.unwrap();
    let kf = Repo::open(
        url,
        &RepoOptions::with_secret(Some(Secret::new(key_file.as_str(), "key file"))),
    )
    .await
    .unwrap();
    assert_eq!(kf.get_chunk(&c).await.unwrap(), data);
    let exported = kf.key_export().unwrap();
    let ex = Repo::open(
        url,
        &RepoOptions::with_secret(Some(Secret::new(exported.as_str(), "export"))),
    )
    .await
    .unwrap();
    assert_eq!(ex.get_chunk(&c).await.unwrap(), data);
    repo
}

pub async fn suite(url: &str) -> Repo {
    let (repo, outcome) = Repo::init(url, RepoConfig::default(), &RepoOptions::default())
        .await
        .unwrap();
    assert_eq!(outcome, InitOutcome::Created);

    // chunks: write, dedupe, read back
    let data = Bytes::from(b"0123456789abcdef".repeat(4096));
    let (r1, stored1) = repo.put_chunk(data.clone()).await.unwrap();
    assert_eq!(r1.id, ChunkId::of(&data));
    assert!(stored1 > 0 && stored1 < data.len() as u64);
    let (r2, stored2) = repo.put_chunk(data.clone()).await.unwrap();
    assert_eq!(
        (r2, stored2),
        (r1, 0),
        "second write of a chunk stores nothing"
    );
    assert_eq!(repo.get_chunk(&r1).await.unwrap(), data);
    assert!(repo.has_chunk(&r1.id).await.unwrap());
    known_chunks(&repo, r1).await;

    let missing = ChunkRef {
        id: ChunkId::of(b"never stored"),
        len: 12,
    };
    assert!(matches!(
        repo.get_chunk(&missing).await,
        Err(StoreError::NotFound { .. })
    ));

    // documents are create-only
    assert_eq!(
        repo.put_doc("wal/x.json", Bytes::from_static(b"{\"a\":1}"))
            .await
            .unwrap(),
        DocWrite::Created
    );
    assert_eq!(
        repo.put_doc("wal/x.json", Bytes::from_static(b"{\"a\":2}"))
            .await
            .unwrap(),
        DocWrite::Exists(Bytes::from_static(b"{\"a\":1}"))
    );
    assert_eq!(
        repo.get_doc("wal/x.json").await.unwrap().unwrap(),
        Bytes::from_static(b"{\"a\":1}")
    );
    assert_eq!(repo.get_doc("wal/none.json").await.unwrap(), None);
    let listed = repo.list("wal/").await.unwrap();
    assert_eq!(listed, vec![("wal/x.json".to_string(), 7)]);

    // init again: same settings fine, other settings refused
    let (_, again) = Repo::init(url, RepoConfig::default(), &RepoOptions::default())
        .await
        .unwrap();
    assert_eq!(again, InitOutcome::AlreadyInitialized);
    let other = RepoConfig {
        compression_level: 9,
        ..RepoConfig::default()
    };
    assert!(matches!(
        Repo::init(url, other, &RepoOptions::default()).await,
        Err(StoreError::ConfigMismatch { .. })
    ));
    repo
}

/// The checks after [`suite`] or [`encrypted_suite`] that every backend, encrypted or not, must
/// pass.
pub async fn shared_checks(repo: &Repo) {
    concurrent_writers(repo).await;
    file_round_trip(repo).await;
    gc_operations(repo).await;
}

pub async fn concurrent_writers(repo: &Repo) {
    // 16 writers of the same chunk at once: all succeed, exactly the same chunk results
    let data = Bytes::from(vec![7u8; 300_000]);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let repo = repo.clone();
            let data = data.clone();
            tokio::spawn(async move { repo.put_chunk(data).await })
        })
        .collect();
    let mut writers_that_stored = 0;
    for t in tasks {
        let (r, stored) = t.await.unwrap().unwrap();
        assert_eq!(r.id, repo.chunk_id(&data));
        writers_that_stored += usize::from(stored > 0);
    }
    assert!(writers_that_stored >= 1);
    assert_eq!(
        repo.get_chunk(&ChunkRef {
            id: repo.chunk_id(&data),
            len: data.len() as u32
        })
        .await
        .unwrap(),
        data
    );
}

pub async fn file_round_trip(repo: &Repo) {
    // 2.5 chunks of varied content, split and put back together
    let n = (repo.config().wal_chunk_size as usize) * 5 / 2;
    let content: Vec<u8> = (0..n).map(|i| (i / 1000 % 251) as u8).collect();
    let mut src = tempfile::tempfile().unwrap();
    src.write_all(&content).unwrap();
    let src = Arc::new(src);
    let summary = repo
        .put_file(Arc::clone(&src), n as u64, "test file")
        .await
        .unwrap();
    assert_eq!(summary.chunks.len(), 3);
    assert_eq!(summary.raw_bytes, n as u64);
    let dst = tempfile::NamedTempFile::new().unwrap();
    let written = repo
        .get_file(&summary.chunks, Arc::new(dst.reopen().unwrap()), "out")
        .await
        .unwrap();
    assert_eq!(written, n as u64);
    assert_eq!(std::fs::read(dst.path()).unwrap(), content);
    // hashing the file along its stored chunks gives them back
    let hashed = repo.hash_file(src, &summary.chunks, "test file").await;
    assert_eq!(hashed.unwrap(), summary.chunks);

    chunked_writer(repo).await;
}

/// The streaming writer cuts a file pushed in uneven pieces exactly as the file chunker cuts
/// it whole, recognises unchanged chunks by their known fingerprints and stores the rest.
pub async fn chunked_writer(repo: &Repo) {
    let up = Uploader::new(repo.clone());
    let chunker = Chunker::for_files(repo.config());
    assert_eq!(up.chunk_size(), chunker.max_len());
    let n = up.chunk_size() * 5 / 2;
    let content: Vec<u8> = (0..n).map(|i| (i / 3000 % 253) as u8 ^ 0x5a).collect();
    let push_all = |known: Option<Arc<[KnownChunk]>>, content: Vec<u8>| {
        let up = up.clone();
        async move {
            let mut f = up.file(known);
            for piece in content.chunks(100_003) {
                f.push(&up, piece).await;
            }
            assert_eq!(f.size, content.len() as u64);
            f.finish(&up).await.wait().await.unwrap()
        }
    };

    let (chunks, fingerprints) = push_all(None, content.clone()).await;
    let expected: Vec<ChunkRef> = chunker
        .ranges(n as u64)
        .map(|r| {
            let data = &content[r.start as usize..r.end as usize];
            ChunkRef {
                id: repo.chunk_id(data),
                len: data.len() as u32,
            }
        })
        .collect();
    assert_eq!(chunks, expected, "streamed and whole-file cuts agree");
    let expected_fps: Vec<Fingerprint> = chunker
        .ranges(n as u64)
        .map(|r| Fingerprint::of(&content[r.start as usize..r.end as usize]))
        .collect();
    assert_eq!(fingerprints, expected_fps);
    assert!(up.stored_bytes() > 0);
    assert_eq!(up.recognised_chunks(), 0);
    assert_eq!(repo.get_bytes(&chunks).await.unwrap(), content);

    // Again with the first pass known and the middle chunk changed: the other two are
    // recognised, only the middle one is new.
    let known: Arc<[KnownChunk]> = chunks
        .iter()
        .zip(&fingerprints)
        .map(|(&chunk, &fingerprint)| KnownChunk { chunk, fingerprint })
        .collect();
    let mut changed = content.clone();
    changed[up.chunk_size() + 7] ^= 0xff;
    let stored_before = up.stored_bytes();
    let (again, _) = push_all(Some(known), changed.clone()).await;
    assert_eq!(up.recognised_chunks(), 2);
    assert_eq!((again[0], again[2]), (chunks[0], chunks[2]));
    assert_ne!(again[1], chunks[1]);
    assert!(up.stored_bytes() > stored_before);
    assert_eq!(repo.get_bytes(&again).await.unwrap(), changed);

    // an empty file has no chunks
    let (none, _) = up.file(None).finish(&up).await.wait().await.unwrap();
    assert!(none.is_empty());
}

/// Every file below `dir`, recursively.
pub fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

/// `put_backup_chunk` takes a known chunk only when the fingerprint and length match and the
/// chunk is stored; otherwise the bytes are hashed and stored as usual. `stored` holds other
/// bytes than `decoy` so that taking the shortcut is visible in the returned ID.
pub async fn known_chunks(repo: &Repo, stored: ChunkRef) {
    let decoy = Bytes::from(vec![42u8; stored.len as usize]);
    let decoy_fp = Fingerprint::of(&decoy);
    let known = |chunk, fingerprint| Some(KnownChunk { chunk, fingerprint });

    // Same fingerprint and length, chunk present: the known chunk, nothing hashed or written.
    let b = repo
        .put_backup_chunk(decoy.clone(), known(stored, decoy_fp))
        .await
        .unwrap();
    assert_eq!(
        (b.chunk, b.fingerprint, b.stored, b.recognised),
        (stored, decoy_fp, 0, true),
        "known chunk taken"
    );

    // Different fingerprint: the bytes' own chunk.
    let other_fp = Fingerprint::of(b"something else");
    let b = repo
        .put_backup_chunk(decoy.clone(), known(stored, other_fp))
        .await
        .unwrap();
    assert_eq!(b.chunk.id, ChunkId::of(&decoy), "changed bytes are hashed");
    assert_eq!((b.fingerprint, b.recognised), (decoy_fp, false));
    assert!(b.stored > 0, "changed bytes are stored");

    // Same fingerprint, other length: not taken.
    let short = ChunkRef {
        len: stored.len - 1,
        ..stored
    };
    let b = repo
        .put_backup_chunk(decoy.clone(), known(short, decoy_fp))
        .await
        .unwrap();
    assert_eq!(
        (b.chunk.id, b.stored, b.recognised),
        (ChunkId::of(&decoy), 0, false)
    );

    // Same fingerprint but the known chunk is gone from the repository: stored again.
    let missing = Bytes::from(vec![43u8; 1000]);
    let gone = ChunkRef {
        id: ChunkId::of(b"never stored either"),
        len: 1000,
    };
    let b = repo
        .put_backup_chunk(missing.clone(), known(gone, Fingerprint::of(&missing)))
        .await
        .unwrap();
    assert_eq!(
        b.chunk.id,
        ChunkId::of(&missing),
        "a missing known chunk is not named"
    );
    assert!(b.stored > 0 && !b.recognised);
    assert_eq!(repo.get_chunk(&b.chunk).await.unwrap(), missing);
}

/// Garbage collection's operations: listing with modification times, deleting documents,
/// and deleting a chunk only when nobody refreshed it since the cut-off — a writer that
/// relies on an existing chunk (create-only write finding it) refreshes it.
pub async fn gc_operations(repo: &Repo) {
    use pitr_store::ChunkRemoval;
    let before = chrono::Utc::now() - chrono::Duration::seconds(2);
    let data = Bytes::from(b"garbage or not ".repeat(5000));
    let (c, stored) = repo.put_new_chunk(data.clone()).await.unwrap();
    assert!(stored > 0);
    let listed = repo.list_objects("chunks/").await.unwrap();
    let entry = listed
        .iter()
        .find(|l| l.key == c.id.key())
        .unwrap_or_else(|| panic!("{} not in {listed:?}", c.id.key()));
    assert!(!entry.staging && entry.size == stored, "{entry:?}");
    assert!(entry.modified >= before, "{entry:?}");
    assert!(listed.windows(2).all(|w| w[0].key < w[1].key), "key order");

    // written after the cut-off: kept
    assert_eq!(
        repo.remove_chunk_unless_fresh(&c.id, before).await.unwrap(),
        ChunkRemoval::Fresh
    );
    assert!(repo.has_chunk(&c.id).await.unwrap());

    // relying on it again refreshes it: its modification time moves past the first
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let first = entry.modified;
    let (again, n) = repo.put_new_chunk(data.clone()).await.unwrap();
    assert_eq!((again, n), (c, 0));
    let listed = repo.list_objects("chunks/").await.unwrap();
    let refreshed = listed.iter().find(|l| l.key == c.id.key()).unwrap();
    assert!(refreshed.modified > first, "{refreshed:?} after {first}");
    assert_eq!(repo.get_chunk(&c).await.unwrap(), data, "same bytes");

    // older than the cut-off: deleted, then absent
    let later = chrono::Utc::now() + chrono::Duration::seconds(5);
    assert_eq!(
        repo.remove_chunk_unless_fresh(&c.id, later).await.unwrap(),
        ChunkRemoval::Deleted(stored)
    );
    assert!(!repo.has_chunk(&c.id).await.unwrap());
    assert_eq!(
        repo.remove_chunk_unless_fresh(&c.id, later).await.unwrap(),
        ChunkRemoval::Absent
    );
    // a writer finding it gone writes it anew
    let (_, n) = repo.put_new_chunk(data.clone()).await.unwrap();
    assert!(n > 0);
    assert_eq!(repo.get_chunk(&c).await.unwrap(), data);

    // documents: listed with times below their prefix only, deleted durably
    repo.put_doc("pins/a.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    repo.put_doc("pins/b.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let pins: Vec<String> = repo
        .list_objects("pins/")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    assert_eq!(pins, ["pins/a.json", "pins/b.json"]);
    assert_eq!(
        repo.delete_docs(&["pins/a.json".to_string()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(repo.get_doc("pins/a.json").await.unwrap(), None);
    assert!(repo.get_doc("pins/b.json").await.unwrap().is_some());
    assert!(repo.list_objects("nothing-here/").await.unwrap().is_empty());
}

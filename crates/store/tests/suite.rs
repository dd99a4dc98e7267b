//! The shared suite (tests/common) on the memory and local-directory backends, plus checks
//! only a local directory allows. The same suite runs against a real S3 server in `s3.rs`.

mod common;

use bytes::Bytes;
use common::{encrypted_suite, shared_checks, suite, walk};
use pitr_store::{Repo, RepoConfig, RepoOptions, StoreError};

#[tokio::test]
async fn memory_backend() {
    let repo = suite("memory://").await;
    shared_checks(&repo).await;
}

#[tokio::test]
async fn local_backend() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("repo").display().to_string();
    let repo = suite(&url).await;
    shared_checks(&repo).await;
    // a fresh open sees the same configuration
    let reopened = Repo::open(&url, &RepoOptions::default()).await.unwrap();
    assert_eq!(reopened.config(), repo.config());
    // no staging files left behind
    let leftovers = walk(dir.path())
        .into_iter()
        .filter(|p| p.contains('#'))
        .count();
    assert_eq!(leftovers, 0);
}

#[tokio::test]
async fn memory_backend_encrypted() {
    let repo = encrypted_suite("memory://encrypted").await;
    shared_checks(&repo).await;
}

#[tokio::test]
async fn local_backend_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("repo").display().to_string();
    let repo = encrypted_suite(&url).await;
    shared_checks(&repo).await;
}

#[tokio::test]
async fn local_corruption_is_reported_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let (repo, _) = Repo::init(&url, RepoConfig::default(), &RepoOptions::default())
        .await
        .unwrap();
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
    let err = Repo::open(dir.path().to_str().unwrap(), &RepoOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotInitialized { .. }), "{err}");
    assert!(err.to_string().contains("pitr init"));
}

/// What killed processes leave in a local repository: a writer's staging file is listed as
/// staging and removed; a chunk a killed garbage collection had set aside goes back.
#[tokio::test]
async fn local_staging_files_are_listed_and_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().display().to_string();
    let (repo, _) = Repo::init(&url, RepoConfig::default(), &RepoOptions::default())
        .await
        .unwrap();
    let (c, _) = repo
        .put_new_chunk(Bytes::from(vec![9u8; 10_000]))
        .await
        .unwrap();
    let path = dir.path().join(c.id.key());
    let staging = format!("{}#3", path.display());
    std::fs::write(&staging, b"half a chunk").unwrap();
    let aside = format!("{}#gc4242", path.display());
    std::fs::rename(&path, &aside).unwrap();
    let listed = repo.list_objects("chunks/").await.unwrap();
    let flagged: Vec<&str> = listed
        .iter()
        .filter(|l| l.staging)
        .map(|l| l.key.as_str())
        .collect();
    assert_eq!(flagged.len(), 2, "{listed:?}");
    assert!(!repo.has_chunk(&c.id).await.unwrap());
    for key in flagged {
        let freed = repo.clear_staging(key).await.unwrap();
        assert_eq!(freed, if key.ends_with("#3") { 12 } else { 0 }, "{key}");
    }
    assert!(
        repo.has_chunk(&c.id).await.unwrap(),
        "set-aside chunk is back"
    );
    assert_eq!(repo.get_chunk(&c).await.unwrap().len(), 10_000);
    assert!(repo
        .list_objects("chunks/")
        .await
        .unwrap()
        .iter()
        .all(|l| !l.staging));
    // the old `list` never shows staging files
    assert!(repo
        .list("chunks/")
        .await
        .unwrap()
        .iter()
        .all(|(k, _)| !k.contains('#')));
}

/// What someone who can write an encrypted local repository can try: swap two chunks, move a
/// document under another name, change a configuration field, or add a key slot of their own.
/// Each is named as it is met.
#[tokio::test]
async fn encrypted_tampering_is_detected_and_named() {
    use pitr_store::{InitOutcome, Secret};
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().display().to_string();
    let pass = Secret::new("pw", "test");
    let (repo, o) = Repo::init_encrypted(
        &url,
        RepoConfig::default(),
        &RepoOptions::default(),
        &pass,
        "",
        common::CHEAP,
    )
    .await
    .unwrap();
    assert_eq!(o, InitOutcome::Created);
    let (a, _) = repo
        .put_chunk(Bytes::from(vec![1u8; 10_000]))
        .await
        .unwrap();
    let (b, _) = repo
        .put_chunk(Bytes::from(vec![2u8; 10_000]))
        .await
        .unwrap();
    let (pa, pb) = (dir.path().join(a.id.key()), dir.path().join(b.id.key()));
    let (ba, bb) = (std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap());
    std::fs::write(&pa, &bb).unwrap();
    std::fs::write(&pb, &ba).unwrap();
    for c in [a, b] {
        match repo.get_chunk(&c).await {
            Err(StoreError::Corrupt { key, detail }) => {
                assert_eq!(key, c.id.key());
                assert!(detail.contains("authentication"), "{detail}");
            }
            other => panic!("swapped chunk read as {other:?}"),
        }
    }
    // a document moved under another document's name
    repo.put_doc("wal/00000001/a.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let wal = dir.path().join("wal/00000001");
    std::fs::copy(wal.join("a.json"), wal.join("b.json")).unwrap();
    let e = repo.get_doc("wal/00000001/b.json").await.unwrap_err();
    match &e {
        StoreError::Corrupt { key, detail } => {
            assert_eq!(key, "wal/00000001/b.json", "{e}");
            assert!(detail.contains("authentication"), "{e}");
        }
        other => panic!("a moved document read as {other:?}"),
    }
    // the original, under its own name, still opens
    assert_eq!(
        repo.get_doc("wal/00000001/a.json")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"{}"[..])
    );

    // a slot of someone else's making (their own repository's, copied in) opens nothing
    let other_dir = tempfile::tempdir().unwrap();
    let theirs = Secret::new("attacker", "PITR_PASSPHRASE");
    Repo::init_encrypted(
        &other_dir.path().display().to_string(),
        RepoConfig::default(),
        &RepoOptions::default(),
        &theirs,
        "",
        common::CHEAP,
    )
    .await
    .unwrap();
    for e in std::fs::read_dir(other_dir.path().join("keys")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join("keys").join(e.file_name())).unwrap();
    }
    let e = Repo::open(&url, &RepoOptions::with_secret(Some(theirs.clone())))
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::WrongKey { .. } | StoreError::Corrupt { .. }),
        "{e}"
    );

    // a configuration field changed
    let config_path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config_path).unwrap();
    let changed = text.replace("\"compression_level\": 1", "\"compression_level\": 2");
    assert_ne!(changed, text);
    std::fs::write(&config_path, changed).unwrap();
    let e = Repo::open(&url, &RepoOptions::with_secret(Some(pass.clone())))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("config.json") && e.to_string().contains("authentication"),
        "{e}"
    );
    // and replaced by an unencrypted one: refused while a passphrase is given
    std::fs::remove_file(&config_path).unwrap();
    Repo::init(&url, RepoConfig::default(), &RepoOptions::default())
        .await
        .unwrap();
    let e = Repo::open(&url, &RepoOptions::with_secret(Some(pass.clone())))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotEncrypted { .. }), "{e}");
}

/// Hostile key slots cost bounded work: a slot asking for a dearer Argon2id than pitr
/// creates (here 64 passes, which the old bound allowed) is refused unrun, named in the
/// error; an unlock tries at most MAX_PASSPHRASE_SLOTS passphrase slots, and `pitr key add`
/// makes no more than that.
#[tokio::test]
async fn hostile_key_slots_cost_bounded_work() {
    use pitr_store::{Secret, MAX_PASSPHRASE_SLOTS};
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().display().to_string();
    let pass = Secret::new("pw", "test");
    let (repo, _) = Repo::init_encrypted(
        &url,
        RepoConfig::default(),
        &RepoOptions::default(),
        &pass,
        "",
        common::CHEAP,
    )
    .await
    .unwrap();
    let keys = dir.path().join("keys");
    let own = std::fs::read_dir(&keys).unwrap().next().unwrap().unwrap();
    let own: serde_json::Value =
        serde_json::from_slice(&std::fs::read(own.path()).unwrap()).unwrap();
    let write_slot = |id: &str, iterations: u32| {
        let mut v = own.clone();
        v["id"] = serde_json::json!(id);
        v["kdf"]["iterations"] = serde_json::json!(iterations);
        std::fs::write(
            keys.join(format!("{id}.json")),
            serde_json::to_vec(&v).unwrap(),
        )
        .unwrap();
    };
    let wrong = Secret::new("wrong", "PITR_PASSPHRASE");

    // 64 passes of 8 MiB: within the old bound, refused now, before any work, by name
    write_slot("0000000000000001", 64);
    let e = Repo::open(&url, &RepoOptions::with_secret(Some(wrong.clone())))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("refused keys/0000000000000001.json") && text.contains("iterations 64"),
        "{text}"
    );
    Repo::open(&url, &RepoOptions::with_secret(Some(pass.clone())))
        .await
        .unwrap();

    // more passphrase slots than an unlock tries: the rest are named as not tried
    for n in 0..MAX_PASSPHRASE_SLOTS + 1 {
        write_slot(&format!("00000000000001{n:02x}"), 1);
    }
    let e = Repo::open(&url, &RepoOptions::with_secret(Some(wrong.clone())))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("2 more passphrase slots not tried"), "{text}");
    assert_eq!(
        text.matches("keys/00000000000001").count(),
        MAX_PASSPHRASE_SLOTS,
        "{text}"
    );
    // and pitr adds no slot past the bound
    let e = repo
        .key_add_passphrase(&Secret::new("another", "new"), "", common::CHEAP)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("passphrase slots"), "{e}");
}

/// A local repository's objects are read only when they are regular files no longer than
/// what their reference allows: a FIFO in a document's place is refused at once, naming it
/// (it used to block the read forever).
#[tokio::test]
async fn local_fifo_in_a_documents_place_is_refused_promptly() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().display().to_string();
    let (repo, _) = Repo::init(&url, RepoConfig::default(), &RepoOptions::default())
        .await
        .unwrap();

    // a FIFO as a WAL ref (and as a manifest)
    for key in [
        "wal/00000001/000000010000000000000003.json",
        "backups/20261207T000000Z.json",
    ] {
        let path = dir.path().join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // The timeout only guards against a hang (the bug): on expiry, a writer opens the
        // FIFO, so a reader blocked in it gets its end and the test can fail cleanly.
        let got = match tokio::time::timeout(Duration::from_secs(30), repo.get_doc(key)).await {
            Ok(got) => got,
            Err(_) => {
                let _w = std::fs::OpenOptions::new().write(true).open(&path);
                panic!("reading {key}, a FIFO, did not return within 30 s");
            }
        };
        match got {
            Err(StoreError::Corrupt { key: k, detail }) => {
                assert_eq!(k, key);
                assert!(detail.contains("FIFO"), "{detail}");
            }
            other => panic!("{key}: a FIFO read as {other:?}"),
        }
    }
}

/// A chunk replaced by a link to /dev/zero, or by a file larger than it can be, is refused
/// before it is read (the link used to be read until memory ran out); so is a device in a
/// document's place.
#[tokio::test]
async fn local_chunk_linked_to_dev_zero_or_oversized_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().display().to_string();
    let (repo, _) = Repo::init(&url, RepoConfig::default(), &RepoOptions::default())
        .await
        .unwrap();
    let (r, _) = repo
        .put_chunk(Bytes::from(b"chunk bytes ".repeat(1000)))
        .await
        .unwrap();
    let path = dir.path().join(r.id.key());
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
    match repo.get_chunk(&r).await {
        Err(StoreError::Corrupt { key, detail }) => {
            assert_eq!(key, r.id.key());
            assert!(detail.contains("symbolic link"), "{detail}");
        }
        other => panic!("a chunk linked to /dev/zero read as {other:?}"),
    }
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    match repo.get_chunk(&r).await {
        Err(StoreError::Corrupt { key, detail }) => {
            assert_eq!(key, r.id.key());
            assert!(detail.contains("more than"), "{detail}");
        }
        other => panic!("an oversized chunk read as {other:?}"),
    }
    // a device in a document's place
    let key = "pins/x.json";
    std::fs::create_dir_all(dir.path().join("pins")).unwrap();
    let dev = dir.path().join(key);
    let c = std::ffi::CString::new(dev.to_str().unwrap()).unwrap();
    // /dev/zero's device number (1, 5)
    assert_eq!(
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 5)) },
        0
    );
    let e = repo.get_doc(key).await.unwrap_err();
    assert!(e.to_string().contains("character device"), "{e}");
    assert!(e.to_string().contains(key), "{e}");
}

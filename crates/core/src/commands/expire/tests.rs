//! Retention decisions (which backups, which WAL, which chunks) on documents built here, and
//! expire against in-memory and local repositories, including the interleavings with a
//! concurrent backup or archive-wal that garbage collection must survive.

use super::*;
use bytes::Bytes;
use pitr_pg::WalFileName;
use pitr_store::{ChunkRef, DocWrite, RepoConfig};

use crate::repofile::MarkerGuard;

const SEG: u32 = pitr_pg::DEFAULT_WAL_SEGMENT_SIZE;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn days(n: i64) -> chrono::Duration {
    chrono::Duration::days(n)
}

/// A backup on `tli` whose WAL begins at segment `first_seg`, finished at `stop`, whose data
/// files are `chunks`.
fn backup(id: &str, stop: &str, tli: u32, first_seg: u64, chunks: &[ChunkRef]) -> BackupManifest {
    let seg = WalFileName::segment(TimelineId(tli), first_seg, SEG);
    let lsn = format!("0/{:X}", first_seg * u64::from(SEG) + 0x28);
    let server = serde_json::json!({"path": "backup_manifest", "kind": "file", "mode": 384,
                                    "size": 0, "mtime": 0});
    let file = serde_json::json!({"path": "base/1/1", "kind": "file", "mode": 384,
                                  "size": 0, "mtime": 0, "chunks": chunks});
    serde_json::from_value(serde_json::json!({
        "format_version": 1, "id": id, "label": id,
        "start_time": stop, "stop_time": stop,
        "start_lsn": lsn, "stop_lsn": lsn, "timeline": tli,
        "system_identifier": "1", "pg_version": "15.18", "pg_version_num": 150018,
        "size_bytes": 0, "stored_bytes": 0,
        "wal_start": seg, "wal_stop": seg,
        "files": [file], "tablespaces": [], "wal": [], "server_manifest": server,
    }))
    .unwrap()
}

fn wal_ref(name: &str, archived: &str, chunks: &[ChunkRef]) -> WalRef {
    WalRef {
        name: name.parse().unwrap(),
        size: chunks.iter().map(|c| u64::from(c.len)).sum(),
        segment_size: Some(SEG),
        system_identifier: Some(1),
        archived_at: at(archived),
        stored_bytes: 0,
        chunks: chunks.to_vec(),
        source: None,
    }
}

fn ids(set: &BTreeSet<String>) -> Vec<&str> {
    set.iter().map(String::as_str).collect()
}

fn four_backups() -> Vec<BackupManifest> {
    vec![
        backup("b1", "2026-11-01T00:00:00Z", 1, 2, &[]),
        backup("b2", "2026-11-08T00:00:00Z", 1, 5, &[]),
        backup("b3", "2026-11-15T00:00:00Z", 1, 8, &[]),
        backup("b4", "2026-11-22T00:00:00Z", 1, 11, &[]),
    ]
}

#[test]
fn retention_keeps_the_newest_n_the_window_and_pins() {
    let backups = four_backups();
    let now = at("2026-11-25T00:00:00Z");
    let none = BTreeSet::new();
    let full = |n| Retention {
        full: Some(n),
        ..Default::default()
    };
    let keep = backups_to_keep(&backups, &none, &full(2), now).unwrap();
    assert_eq!(ids(&keep), ["b3", "b4"]);
    let keep = backups_to_keep(&backups, &none, &full(9), now).unwrap();
    assert_eq!(keep.len(), 4);

    // the last 9 days: b4 finished inside, b3 is the base for the window's first moment
    let window = Retention {
        days: Some(days(9)),
        ..Default::default()
    };
    let keep = backups_to_keep(&backups, &none, &window, now).unwrap();
    assert_eq!(ids(&keep), ["b3", "b4"]);
    // a window before every backup keeps them all; one after all of them keeps the newest
    let long = Retention {
        days: Some(days(100)),
        ..Default::default()
    };
    assert_eq!(
        backups_to_keep(&backups, &none, &long, now).unwrap().len(),
        4
    );
    let short = Retention {
        days: Some(days(1)),
        ..Default::default()
    };
    assert_eq!(
        ids(&backups_to_keep(&backups, &none, &short, now).unwrap()),
        ["b4"]
    );

    // pins are kept whatever the rest says; both rules together keep the union
    let pins: BTreeSet<String> = ["b1".to_string()].into();
    let keep = backups_to_keep(&backups, &pins, &full(1), now).unwrap();
    assert_eq!(ids(&keep), ["b1", "b4"]);
    let both = Retention {
        full: Some(1),
        days: Some(days(9)),
        wal_days: None,
    };
    assert_eq!(
        ids(&backups_to_keep(&backups, &none, &both, now).unwrap()),
        ["b3", "b4"]
    );
}

#[test]
fn no_retention_is_refused_naming_the_flags() {
    let e = backups_to_keep(
        &four_backups(),
        &BTreeSet::new(),
        &Retention::default(),
        Utc::now(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("--retain-full") && e.contains("--retain-days") && e.contains("nothing"),
        "{e}"
    );
    let zero = Retention {
        full: Some(0),
        ..Default::default()
    };
    assert!(zero.check().is_err());
}

#[test]
fn wal_before_the_oldest_kept_backup_goes_along_its_timelines() {
    let b3 = backup("b3", "2026-11-15T00:00:00Z", 1, 8, &[]);
    let t = "2026-11-10T00:00:00Z";
    let refs = vec![
        wal_ref("000000010000000000000007", t, &[]),
        wal_ref("000000010000000000000008", t, &[]),
        wal_ref("000000010000000000000008.00000028.backup", t, &[]),
        wal_ref("000000010000000000000009", t, &[]),
        wal_ref("00000002.history", t, &[]),
        wal_ref("000000020000000000000009", t, &[]),
        wal_ref("000000020000000000000006", t, &[]),
        wal_ref("000000030000000000000003", t, &[]),
        wal_ref("000000010000000000000003.partial", t, &[]),
    ];
    let ancestry: Ancestry = [(TimelineId(2), [TimelineId(1)].into())].into();
    let gone: Vec<&str> = wal_to_remove(&refs, &[&b3], &ancestry, None)
        .into_iter()
        .map(|r| r.name.as_str())
        .collect();
    // before b3 on timeline 1 and on timeline 2 (reachable from it) go; the history file
    // stays; timeline 3, whose ancestry is unknown, stays
    assert_eq!(
        gone,
        [
            "000000010000000000000007",
            "000000020000000000000006",
            "000000010000000000000003.partial"
        ]
    );

    // a kept backup on timeline 2 does not reach timeline 1: all of timeline 1 may go
    let on2 = backup("b5", "2026-11-20T00:00:00Z", 2, 9, &[]);
    let gone = wal_to_remove(&refs, &[&on2], &ancestry, None);
    assert!(gone
        .iter()
        .any(|r| r.name.as_str() == "000000010000000000000009"));
    assert!(!gone
        .iter()
        .any(|r| r.name.as_str() == "000000020000000000000009"));

    // --retain-wal-days keeps what was archived since, needed or not
    let gone = wal_to_remove(&refs, &[&b3], &ancestry, Some(at("2026-11-01T00:00:00Z")));
    assert!(gone.is_empty());
    // no kept backup: nothing goes
    assert!(wal_to_remove(&refs, &[], &ancestry, None).is_empty());
}

/// A fresh repository of its own in memory.
async fn memory_repo(name: &str) -> Repo {
    let url = format!("memory://expire-{name}");
    Repo::init(
        &url,
        RepoConfig::default(),
        &pitr_store::RepoOptions::default(),
    )
    .await
    .unwrap()
    .0
}

async fn chunk(repo: &Repo, what: &str) -> ChunkRef {
    let (c, _) = repo
        .put_new_chunk(Bytes::from(what.repeat(500)))
        .await
        .unwrap();
    c
}

async fn put_manifest(repo: &Repo, m: &BackupManifest) {
    let body = serde_json::to_vec(m).unwrap();
    let w = repo.put_doc(&BackupManifest::key(&m.id), body.into()).await;
    assert_eq!(w.unwrap(), DocWrite::Created);
}

async fn put_ref(repo: &Repo, r: &WalRef) {
    let body = serde_json::to_vec(r).unwrap();
    repo.put_doc(&WalRef::key(&r.name), body.into())
        .await
        .unwrap();
}

fn request(full: usize, dry_run: bool) -> ExpireRequest {
    ExpireRequest {
        retention: Retention {
            full: Some(full),
            ..Default::default()
        },
        dry_run,
        gc_grace: Duration::ZERO,
        marker_stale: Duration::from_secs(3600),
        retire_timelines: Vec::new(),
    }
}

/// Three backups, each with a chunk of its own and one shared, WAL from the first on.
struct Fixture {
    repo: Repo,
    own: Vec<ChunkRef>,
    shared: ChunkRef,
    wal: Vec<ChunkRef>,
}

async fn fixture(name: &str) -> Fixture {
    let repo = memory_repo(name).await;
    fixture_in(repo).await
}

async fn fixture_in(repo: Repo) -> Fixture {
    let shared = chunk(&repo, "shared ").await;
    let mut own = Vec::new();
    let mut wal = Vec::new();
    for (i, (id, stop, seg)) in [
        ("b1", "2026-11-01T00:00:00Z", 2),
        ("b2", "2026-11-08T00:00:00Z", 4),
        ("b3", "2026-11-15T00:00:00Z", 6),
    ]
    .into_iter()
    .enumerate()
    {
        let c = chunk(&repo, &format!("own {i} ")).await;
        own.push(c);
        put_manifest(&repo, &backup(id, stop, 1, seg, &[c, shared])).await;
    }
    for seg in 2..8u64 {
        let c = chunk(&repo, &format!("wal {seg} ")).await;
        wal.push(c);
        let name = WalFileName::segment(TimelineId(1), seg, SEG);
        put_ref(&repo, &wal_ref(name.as_str(), "2026-11-01T00:00:00Z", &[c])).await;
    }
    Fixture {
        repo,
        own,
        shared,
        wal,
    }
}

fn keys_of(removed: &[Removed]) -> Vec<String> {
    removed.iter().map(|r| r.key.clone()).collect()
}

#[tokio::test]
async fn expire_removes_old_backups_their_wal_and_unshared_chunks() {
    let f = fixture("basic").await;
    // the dry run says exactly what the real run then does, and deletes nothing
    let dry = expire(&f.repo, &request(1, true)).await.unwrap();
    assert_eq!(dry.kept, ["b3"]);
    let gone: Vec<&str> = dry.backups.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(gone, ["b1", "b2"]);
    assert_eq!(dry.wal.len(), 4, "segments 2..5 go: {:?}", dry.wal);
    let mut expected_chunks: Vec<String> = [f.own[0], f.own[1]]
        .iter()
        .chain(&f.wal[..4])
        .map(|c| c.id.key())
        .collect();
    expected_chunks.sort();
    assert_eq!(keys_of(&dry.chunks), expected_chunks);
    assert!(dry.bytes_freed > 0);
    assert_eq!(BackupManifest::list(&f.repo).await.unwrap().docs.len(), 3);
    assert!(f.repo.has_chunk(&f.own[0].id).await.unwrap());

    let done = expire(&f.repo, &request(1, false)).await.unwrap();
    assert_eq!(keys_of(&done.chunks), expected_chunks);
    assert_eq!(keys_of(&done.wal), keys_of(&dry.wal));
    assert_eq!(done.bytes_freed, dry.bytes_freed);
    let left = BackupManifest::list(&f.repo).await.unwrap().docs;
    assert_eq!(left.len(), 1);
    for c in [f.own[2], f.shared].iter().chain(&f.wal[4..]) {
        f.repo.get_chunk(c).await.unwrap();
    }
    for c in [f.own[0], f.own[1]].iter().chain(&f.wal[..4]) {
        assert!(!f.repo.has_chunk(&c.id).await.unwrap());
    }
    // a second run finds nothing more to do
    let again = expire(&f.repo, &request(1, false)).await.unwrap();
    assert!(again.backups.is_empty() && again.wal.is_empty() && again.chunks.is_empty());
    assert_eq!(again.bytes_freed, 0);
}

#[tokio::test]
async fn a_pinned_backup_keeps_its_chunks_and_wal() {
    let f = fixture("pins").await;
    assert!(crate::repofile::pin::pin(&f.repo, "b1").await.unwrap());
    assert!(!crate::repofile::pin::pin(&f.repo, "b1").await.unwrap());
    assert!(crate::repofile::pin::pin(&f.repo, "nope").await.is_err());
    let done = expire(&f.repo, &request(1, false)).await.unwrap();
    assert_eq!(done.kept, ["b1", "b3"]);
    assert_eq!(done.pinned, ["b1"]);
    assert_eq!(keys_of(&done.chunks), [f.own[1].id.key()]);
    assert!(done.wal.is_empty(), "b1 needs all the WAL from its start");
    // unpinned, it goes
    assert!(crate::repofile::pin::unpin(&f.repo, "b1").await.unwrap());
    assert!(!crate::repofile::pin::unpin(&f.repo, "b1").await.unwrap());
    let done = expire(&f.repo, &request(1, false)).await.unwrap();
    assert_eq!(done.kept, ["b3"]);
    assert!(!f.repo.has_chunk(&f.own[0].id).await.unwrap());
}

#[tokio::test]
async fn a_damaged_document_stops_expire_before_anything_is_deleted() {
    for (name, key) in [
        ("damaged-manifest", "backups/b9.json"),
        ("damaged-ref", "wal/00000001/000000010000000000000009.json"),
        ("damaged-pin", "pins/b1.json"),
    ] {
        let f = fixture(name).await;
        f.repo
            .put_doc(key, Bytes::from_static(b"{not json"))
            .await
            .unwrap();
        let e = expire(&f.repo, &request(1, false)).await.unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.contains(key) && text.contains("deletes nothing"),
            "{text}"
        );
        assert_eq!(BackupManifest::list(&f.repo).await.unwrap().docs.len(), 3);
        assert!(f.repo.has_chunk(&f.own[0].id).await.unwrap(), "{name}");
        assert!(f.repo.has_chunk(&f.wal[0].id).await.unwrap(), "{name}");
    }
}

#[tokio::test]
async fn without_a_retention_nothing_is_deleted() {
    let f = fixture("no-policy").await;
    let req = ExpireRequest {
        retention: Retention::default(),
        ..request(1, false)
    };
    assert!(expire(&f.repo, &req).await.is_err());
    assert_eq!(BackupManifest::list(&f.repo).await.unwrap().docs.len(), 3);
}

/// A backup's chunks are written, expire runs, then the backup's manifest: the backup is
/// whole, because its marker stopped the chunk collection (documents still expire). Without
/// a marker and with no grace period the same interleaving loses the chunks — which is what
/// the marker is for.
#[tokio::test]
async fn a_backup_running_during_expire_keeps_its_chunks() {
    for with_marker in [true, false] {
        let f = fixture(&format!("interleave-backup-{with_marker}")).await;
        let marker = if with_marker {
            Some(MarkerGuard::write(&f.repo).await.unwrap())
        } else {
            None
        };
        // the running backup stores a new chunk and relies on one only an expiring backup
        // names (recognised by its fingerprint)
        let new = chunk(&f.repo, "new in b4 ").await;
        let relied = f.own[0];
        assert!(f.repo.has_chunk(&relied.id).await.unwrap());

        let done = expire(&f.repo, &request(1, false)).await.unwrap();
        assert_eq!(done.backups.len(), 2);
        if with_marker {
            let why = done.chunks_skipped.as_deref().unwrap_or_default();
            assert!(why.contains("backup is running"), "{done:?}");
            assert!(done.chunks.is_empty());
        }

        put_manifest(
            &f.repo,
            &backup("b4", "2026-11-22T00:00:00Z", 1, 7, &[new, relied]),
        )
        .await;
        if let Some(m) = marker {
            m.remove(&f.repo).await.unwrap();
        }
        let survived =
            f.repo.get_chunk(&new).await.is_ok() && f.repo.get_chunk(&relied).await.is_ok();
        assert_eq!(survived, with_marker, "marker {with_marker}");
        if with_marker {
            // the next expire, with the backup committed, takes only what nothing names: b2's
            // own chunk and the WAL the first run expired
            let next = expire(&f.repo, &request(2, false)).await.unwrap();
            let mut expected: Vec<String> = [f.own[1]]
                .iter()
                .chain(&f.wal[..4])
                .map(|c| c.id.key())
                .collect();
            expected.sort();
            assert_eq!(keys_of(&next.chunks), expected);
            f.repo.get_chunk(&relied).await.unwrap();
        }
    }
}

/// Unreferenced chunks younger than the grace period stay (a writer that has not written
/// its document yet); older ones go.
#[tokio::test]
async fn the_grace_period_protects_young_unreferenced_chunks() {
    let f = fixture("grace").await;
    let young = chunk(&f.repo, "not named yet ").await;
    let req = ExpireRequest {
        gc_grace: Duration::from_secs(3600),
        ..request(1, false)
    };
    let done = expire(&f.repo, &req).await.unwrap();
    assert!(done.chunks.is_empty(), "{done:?}");
    assert!(done.chunks_in_grace >= 7);
    assert!(f.repo.has_chunk(&young.id).await.unwrap());
    let done = expire(&f.repo, &request(1, false)).await.unwrap();
    assert!(keys_of(&done.chunks).contains(&young.id.key()));
}

/// A marker older than the stale age (its backup was killed) is reported and ignored.
#[tokio::test]
async fn a_stale_marker_is_reported_and_ignored() {
    let f = fixture("stale").await;
    let marker = MarkerGuard::write(&f.repo).await.unwrap();
    let req = ExpireRequest {
        marker_stale: Duration::ZERO,
        ..request(1, false)
    };
    let done = expire(&f.repo, &req).await.unwrap();
    assert_eq!(done.stale_markers, [marker.key().to_string()]);
    assert!(done.chunks_skipped.is_none());
    assert!(!done.chunks.is_empty());
    marker.remove(&f.repo).await.unwrap();
}

/// archive-wal stores a chunk that already exists (old and unreferenced: expire has listed
/// it as garbage) and names it in a new ref. Storing it refreshed it, so the deletion that
/// follows expire's listing keeps it, and the new ref is whole — on a local directory,
/// where the check and the deletion are one step.
#[tokio::test]
async fn archive_wal_reusing_an_old_unreferenced_chunk_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().display().to_string();
    let repo = Repo::init(
        &url,
        RepoConfig::default(),
        &pitr_store::RepoOptions::default(),
    )
    .await
    .unwrap()
    .0;
    let zeros = Bytes::from(vec![0u8; 1 << 20]);
    let (old, _) = repo.put_new_chunk(zeros.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    // expire's view: started now, the chunk older and named by nothing
    let fresh_since = Utc::now();
    let listed = repo.list_objects("chunks/").await.unwrap();
    let seen = listed.iter().find(|l| l.key == old.id.key()).unwrap();
    assert!(seen.modified < fresh_since);
    tokio::time::sleep(Duration::from_millis(50)).await;

    // archive-wal: the chunk "already exists", and its ref is written
    let (again, stored) = repo.put_new_chunk(zeros.clone()).await.unwrap();
    assert_eq!((again, stored), (old, 0));
    let r = wal_ref("000000010000000000000009", "2026-11-30T00:00:00Z", &[old]);
    put_ref(&repo, &r).await;

    // expire's deletion of what it listed
    let removal = repo
        .remove_chunk_unless_fresh(&old.id, fresh_since)
        .await
        .unwrap();
    assert_eq!(removal, ChunkRemoval::Fresh);
    assert_eq!(repo.get_chunk(&old).await.unwrap(), zeros);

    // and a whole expire run keeps it because the ref now names it
    let m = backup("b1", "2026-11-30T00:00:00Z", 1, 9, &[]);
    put_manifest(&repo, &m).await;
    let done = expire(&repo, &request(1, false)).await.unwrap();
    assert!(!keys_of(&done.chunks).contains(&old.id.key()));
    repo.get_chunk(&old).await.unwrap();
}

/// The same decisions on a local directory, plus its staging files: a killed writer's is
/// collected once older than the grace period.
#[tokio::test]
async fn local_repository_expire_and_staging_files() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().display().to_string();
    let repo = Repo::init(
        &url,
        RepoConfig::default(),
        &pitr_store::RepoOptions::default(),
    )
    .await
    .unwrap()
    .0;
    let f = fixture_in(repo).await;
    let staging = dir.path().join(format!("{}#7", f.own[2].id.key()));
    std::fs::write(&staging, b"killed writer").unwrap();
    let done = expire(&f.repo, &request(1, false)).await.unwrap();
    assert_eq!(done.backups.len(), 2);
    assert_eq!(done.chunks.len(), 6);
    assert_eq!(keys_of(&done.staging).len(), 1);
    assert!(!staging.exists());
    for c in [f.own[2], f.shared].iter().chain(&f.wal[4..]) {
        f.repo.get_chunk(c).await.unwrap();
    }
}

/// A marker written on this host by a process that is gone (a killed backup) does not hold
/// the collection back: it is reported and removed.
#[tokio::test]
async fn a_dead_backups_marker_is_removed() {
    let f = fixture("dead-marker").await;
    let marker = MarkerGuard::write(&f.repo).await.unwrap();
    let mut doc: crate::repofile::BackupMarker =
        serde_json::from_slice(&f.repo.get_doc(marker.key()).await.unwrap().unwrap()).unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    doc.pid = child.id();
    let key = "markers/backup-dead.json".to_string();
    f.repo
        .put_doc(&key, serde_json::to_vec(&doc).unwrap().into())
        .await
        .unwrap();
    marker.remove(&f.repo).await.unwrap();
    let done = expire(&f.repo, &request(1, false)).await.unwrap();
    assert_eq!(done.stale_markers, std::slice::from_ref(&key));
    assert!(
        done.chunks_skipped.is_none() && !done.chunks.is_empty(),
        "{done:?}"
    );
    assert_eq!(f.repo.get_doc(&key).await.unwrap(), None);
}

/// A marker with this host's name, PID namespace and a gone PID, but written by a clone of
/// this machine (another boot ID) or by an older pitr (no machine or boot ID), is not judged
/// dead: it holds the collection back until it is stale.
#[tokio::test]
async fn a_clones_or_older_pitrs_marker_is_not_judged_dead() {
    let f = fixture("clone-marker").await;
    let marker = MarkerGuard::write(&f.repo).await.unwrap();
    let mut doc: serde_json::Value =
        serde_json::from_slice(&f.repo.get_doc(marker.key()).await.unwrap().unwrap()).unwrap();
    marker.remove(&f.repo).await.unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    doc["pid"] = serde_json::json!(child.id());
    let clone = {
        let mut d = doc.clone();
        d["boot_id"] = serde_json::json!("0f1e2d3c-another-boot");
        d
    };
    let older = {
        let mut d = doc.clone();
        let o = d.as_object_mut().unwrap();
        o.remove("machine_id");
        o.remove("boot_id");
        d
    };
    for (name, d) in [("clone", clone), ("older", older)] {
        let key = format!("markers/backup-{name}.json");
        f.repo
            .put_doc(&key, serde_json::to_vec(&d).unwrap().into())
            .await
            .unwrap();
        let done = expire(&f.repo, &request(1, true)).await.unwrap();
        assert!(done.stale_markers.is_empty(), "{name}: {done:?}");
        assert!(
            done.chunks_skipped.is_some() && done.chunks.is_empty(),
            "{name}: chunks collected beside a live marker: {done:?}"
        );
        assert!(f.repo.get_doc(&key).await.unwrap().is_some(), "{name}");
        f.repo.delete_docs(&[key]).await.unwrap();
    }
}

/// `--retire-timeline N` removes the history file and WAL of a stray timeline (one that
/// forked before the kept backup was consistent), `--dry-run` showing them first; a timeline
/// a kept backup uses or can reach is refused, and nothing is retired without the flag.
#[tokio::test]
async fn a_stray_timeline_is_retired_only_when_named() {
    let f = fixture("retire").await;
    let history = |tli: u32, text: &str| {
        let repo = &f.repo;
        let text = text.to_string();
        async move {
            let (c, _) = repo.put_new_chunk(Bytes::from(text)).await.unwrap();
            let mut r = wal_ref(&format!("{tli:08X}.history"), "2026-11-16T00:00:00Z", &[c]);
            r.segment_size = None;
            put_ref(repo, &r).await;
        }
    };
    // timeline 2 forked at segment 5, before b3 (segment 6) was consistent: a stray
    history(2, "1\t0/5000000\tno recovery target specified\n").await;
    let c = chunk(&f.repo, "tl2 ").await;
    put_ref(
        &f.repo,
        &wal_ref("000000020000000000000006", "2026-11-16T00:00:00Z", &[c]),
    )
    .await;
    // timeline 3 forked after it: restores follow it
    history(3, "1\t0/7000000\tno recovery target specified\n").await;
    let c = chunk(&f.repo, "tl3 ").await;
    put_ref(
        &f.repo,
        &wal_ref("000000030000000000000007", "2026-11-16T00:00:00Z", &[c]),
    )
    .await;
    let retire = |tli: u32, dry_run: bool| ExpireRequest {
        retire_timelines: vec![TimelineId(tli)],
        ..request(1, dry_run)
    };
    let tl2_keys = [
        "wal/00000002/00000002.history.json",
        "wal/00000002/000000020000000000000006.json",
    ];
    let plain = expire(&f.repo, &request(1, true)).await.unwrap();
    for k in tl2_keys {
        assert!(!keys_of(&plain.wal).iter().any(|w| w == k), "{plain:?}");
    }
    for (tli, why) in [
        (1, "kept backup b3 is on timeline 1"),
        (3, "a kept backup can restore onto timeline 3"),
        (4, "nothing is archived for timeline 4"),
    ] {
        let e = expire(&f.repo, &retire(tli, true)).await.unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
    }
    let dry = expire(&f.repo, &retire(2, true)).await.unwrap();
    assert_eq!(dry.retired_timelines, [TimelineId(2)]);
    for k in tl2_keys {
        assert!(keys_of(&dry.wal).iter().any(|w| w == k), "{k}: {dry:?}");
        assert!(f.repo.get_doc(k).await.unwrap().is_some(), "{k}");
    }
    let done = expire(&f.repo, &retire(2, false)).await.unwrap();
    assert_eq!(keys_of(&done.wal), keys_of(&dry.wal));
    for k in tl2_keys {
        assert!(
            f.repo.get_doc(k).await.unwrap().is_none(),
            "{k} is still there"
        );
    }
    assert!(f
        .repo
        .get_doc("wal/00000003/00000003.history.json")
        .await
        .unwrap()
        .is_some());
}

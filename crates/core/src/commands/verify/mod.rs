//! `pitr verify [--backup ID]`: re-read every chunk the backups and the archived WAL name
//! (each read decompresses and re-hashes, so a missing or corrupt chunk is reported with its
//! key), check that each document holds together (a manifest that parses and names its own
//! backup and that a restore would accept; a WAL ref under its own name, of a segment's size,
//! whose first page is that segment's, of this repository's cluster; a history file that
//! parses), and that the archived WAL has no missing segment: between archived segments of a
//! timeline, and from each backup's start to the newest segment archived on its timeline path
//! (following history files), as recovery from that backup would ask for them. A repository
//! without a backup, or whose newest backup is older than `max_age`, fails too.
//!
//! `--restore-test` also restores a backup into a scratch directory and starts it with
//! archiving off (see [`restore_test`]).
//!
//! Each problem is one line naming the object and who needs it. A chunk shared by many files
//! is read once per length it is named with, and reported under the first file that names it
//! so.

use std::time::Duration;

use anyhow::bail;
use pitr_pg::WalFileKind;
use pitr_store::Repo;
use serde::Serialize;

use crate::progress::Reporter;
use crate::repofile::{load_wal_refs, repo_system_identifier, BackupManifest, Loaded, WalRef};
use crate::time::format_pg_time;
use integrity::{check_ref, chunks_to_read, continuity_problems, read_chunks, read_histories};
pub use restore_test::{restore_test, CheckRun, RestoreTest, RestoreTestReport};

mod integrity;
mod restore_test;

/// `pitr verify`: everything, or one backup and the archived WAL that carries it forward.
#[derive(Default)]
pub struct VerifyRequest {
    pub backup: Option<String>,
    /// The newest backup must have finished within this long ago (`--max-age`).
    pub max_age: Option<Duration>,
    /// Also restore a backup and start it (`--restore-test`).
    pub restore_test: Option<RestoreTest>,
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub backups: usize,
    pub wal_files: usize,
    /// Bytes of the distinct chunks read.
    pub bytes: u64,
    /// One line per problem: damaged documents, then chunks, then missing segments, then
    /// the repository's age and the restore test.
    pub problems: Vec<String>,
    /// One line per warning, which does not fail verify: an archived timeline no backup can
    /// reach (a stray fork; `pitr check` raises it as a Nagios WARNING).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Each verified backup's tablespaces and the locations they recorded: shown, since a
    /// restore lays one down there only when told to (`--tablespaces-as-recorded`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tablespaces: Vec<RecordedTablespace>,
    pub restore_test: Option<RestoreTestReport>,
}

/// A tablespace location a backup recorded.
#[derive(Debug, Serialize)]
pub struct RecordedTablespace {
    pub backup: String,
    pub oid: u32,
    pub location: String,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

pub async fn verify(
    repo: &Repo,
    req: VerifyRequest,
    reporter: &dyn Reporter,
) -> anyhow::Result<VerifyReport> {
    let backups = BackupManifest::list(repo).await?;
    let refs = load_wal_refs(repo).await?;
    let sysid = repo_system_identifier(repo).await?;
    let mut problems: Vec<String> = Vec::new();
    for (key, detail) in repo.damaged_key_slots().await? {
        problems.push(format!(
            "{key} is damaged: {detail} (this key slot opens nothing)"
        ));
    }
    // The repository's newest backup, whichever one is verified.
    let age_problems = age_problem(repo, &backups.docs, &req);
    // Judged against every backup, whichever one is verified.
    let warnings = stray_warnings(repo, &backups.docs).await;
    let (backups, refs) = select(repo, backups, refs, req.backup.as_deref(), &mut problems)?;
    for b in &backups {
        // What a restore would refuse (an entry below a link, a foreign tablespace, …).
        if let Err(e) = b.check_restorable() {
            problems.push(format!(
                "{} cannot be restored: {e:#}",
                BackupManifest::key(&b.id)
            ));
        }
    }
    let tablespaces: Vec<RecordedTablespace> = backups
        .iter()
        .flat_map(|b| {
            b.tablespaces.iter().map(|t| RecordedTablespace {
                backup: b.id.clone(),
                oid: t.oid,
                location: t.location.clone(),
            })
        })
        .collect();
    for r in &refs {
        problems.extend(check_ref(r, sysid));
    }
    let chunks = chunks_to_read(&backups, &refs);
    let bytes: u64 = chunks.values().map(|c| u64::from(c.chunk.len)).sum();
    tracing::info!(
        "verifying {} backups, {} archived WAL files: {} chunks, {} MiB",
        backups.len(),
        refs.len(),
        chunks.len(),
        bytes >> 20
    );
    problems.extend(read_chunks(repo, chunks, sysid).await);
    let (history_problems, histories) = read_histories(repo, &refs).await;
    problems.extend(history_problems);
    problems.extend(continuity_problems(&backups, &refs, &histories));
    problems.extend(age_problems);

    let restore_test = match &req.restore_test {
        None => None,
        Some(test) => {
            let wanted = req.backup.clone().or_else(|| {
                backups
                    .iter()
                    .max_by_key(|b| (b.stop_time, b.id.clone()))
                    .map(|b| b.id.clone())
            });
            restore_test::run(repo, wanted, test, reporter, &mut problems).await
        }
    };
    Ok(VerifyReport {
        backups: backups.len(),
        wal_files: refs.len(),
        bytes,
        problems,
        warnings,
        tablespaces,
        restore_test,
    })
}

/// A warning line per archived timeline none of `backups` can reach.
async fn stray_warnings(repo: &Repo, backups: &[BackupManifest]) -> Vec<String> {
    let seg_size = backups.last().map_or(
        pitr_pg::DEFAULT_WAL_SEGMENT_SIZE,
        BackupManifest::segment_size,
    );
    let index = match crate::index::ArchiveIndex::list(repo, seg_size).await {
        Ok(i) => i,
        Err(e) => return vec![format!("list archived WAL for its timelines: {e:#}")],
    };
    let archive = crate::restore::plan::RepoArchive(repo);
    crate::restore::plan::unreachable_timelines(backups, &index, &archive)
        .await
        .into_iter()
        .map(|s| {
            format!(
                "archived timeline {} is a stray: {} (retire it with `pitr expire --retire-timeline {}`)",
                s.timeline, s.reason, s.timeline
            )
        })
        .collect()
}

/// No backup at all (when verifying everything), or a newest backup older than `--max-age`.
fn age_problem(repo: &Repo, backups: &[BackupManifest], req: &VerifyRequest) -> Option<String> {
    match backups.iter().max_by_key(|b| b.stop_time) {
        None if req.backup.is_none() => Some(format!(
            "no backup in {}: there is nothing to restore from",
            repo.url()
        )),
        None => None,
        Some(b) => {
            let age = (chrono::Utc::now() - b.stop_time)
                .to_std()
                .unwrap_or_default();
            let max = req.max_age.filter(|max| age > *max)?;
            Some(format!(
                "newest backup {} finished at {} ({} ago), longer ago than --max-age {}",
                b.id,
                format_pg_time(&b.stop_time),
                format_duration(age),
                format_duration(max)
            ))
        }
    }
}

/// The documents to verify: everything (the damaged ones each a problem), or backup `id`
/// and the archived WAL that can carry it forward.
fn select(
    repo: &Repo,
    backups: Loaded<BackupManifest>,
    refs: Loaded<WalRef>,
    id: Option<&str>,
    problems: &mut Vec<String>,
) -> anyhow::Result<(Vec<BackupManifest>, Vec<WalRef>)> {
    let Some(id) = id else {
        let damaged = backups.damaged.iter().chain(&refs.damaged);
        problems.extend(damaged.map(|d| d.to_string()));
        return Ok((backups.docs, refs.docs));
    };
    let key = BackupManifest::key(id);
    if let Some(d) = backups.damaged.iter().find(|d| d.key == key) {
        problems.push(d.to_string());
    }
    let (mut backups, mut refs) = (backups.docs, refs.docs);
    backups.retain(|b| b.id == id);
    match backups.first() {
        Some(b) => {
            // The archived WAL that can carry this backup forward: its timeline from its
            // start, the later timelines, and the history files that link them.
            let (tli, start) = (b.timeline, b.wal_start.clone());
            refs.retain(|r| {
                let t = r.name.timeline();
                r.name.kind() == WalFileKind::History || t > tli || (t == tli && r.name >= start)
            });
        }
        None if problems.is_empty() => bail!("no backup {id} in {}", repo.url()),
        None => refs.clear(),
    }
    Ok((backups, refs))
}

/// `12h`, `90m`, `2d3h`, `45s` as [`parse_duration`] reads them.
pub fn format_duration(d: Duration) -> String {
    let mut s = d.as_secs();
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// A duration as `30s`, `15m`, `26h`, `7d`, or a sum like `1h30m`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("an empty duration".into());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(format!("{text:?}: unknown unit {c:?} (use s, m, h, d, w)")),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{text:?}: a number must come before {c:?}"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{text:?} is too long"))?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(format!("{text:?}: {num} has no unit (s, m, h, d, w)"));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
pub(crate) mod tests {
    use bytes::Bytes;
    use pitr_pg::{WalFileName, DEFAULT_WAL_SEGMENT_SIZE};
    use pitr_store::RepoConfig;

    use super::*;
    use crate::repofile::claim_cluster;

    const SEG: u32 = DEFAULT_WAL_SEGMENT_SIZE;
    const SYSID: u64 = 7_312_000_000_000_000_001;

    pub(crate) fn manifest(id: &str, wal: serde_json::Value) -> serde_json::Value {
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

    pub(crate) async fn put(repo: &Repo, key: &str, doc: &serde_json::Value) {
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
    /// Segment `n` of timeline 1, archived as itself.
    async fn archive_segment(repo: &Repo, n: u64) -> WalRef {
        let name = format!("0000000100000000000000{n:02X}");
        archive(repo, &name, segment(n, SYSID), None).await
    }

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

    /// A stray timeline (its history forks before the only backup was consistent, as a
    /// side-by-side restore archiving here leaves it) is a warning line of verify that does not
    /// fail it, and a WARNING of check's repository probe.
    #[tokio::test]
    async fn a_stray_timeline_is_a_warning_of_verify_and_check() {
        let (repo, _) = Repo::init(
            "memory://verify-stray",
            RepoConfig::default(),
            &pitr_store::RepoOptions::default(),
        )
        .await
        .unwrap();
        claim_cluster(&repo, SYSID, "test").await.unwrap();
        put(
            &repo,
            &BackupManifest::key("b1"),
            &manifest("b1", serde_json::json!([])),
        )
        .await;
        archive_segment(&repo, 2).await;
        let probe = crate::check::CheckRequest {
            dbname: None,
            password: None,
            archive_timeout: Duration::from_secs(1),
            max_archive_age: None,
            max_backup_age: Some(Duration::from_secs(3600 * 24 * 365 * 100)),
        };
        let r = crate::check::check(&repo, &probe).await;
        assert_eq!(r.status(), crate::check::Status::Ok, "{r:?}");

        let history = b"1\t0/1000100\tno recovery target specified\n".to_vec();
        archive(&repo, "00000002.history", history, None).await;
        let report = verify(&repo, VerifyRequest::default(), &crate::progress::Silent)
            .await
            .unwrap();
        assert!(report.ok(), "{:?}", report.problems);
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        assert!(
            report.warnings[0].contains("archived timeline 2 is a stray")
                && report.warnings[0].contains("before backup b1 was consistent"),
            "{:?}",
            report.warnings
        );
        let r = crate::check::check(&repo, &probe).await;
        assert_eq!(r.status(), crate::check::Status::Warning, "{r:?}");
        let t = r.checks.iter().find(|c| c.check == "timelines").unwrap();
        assert!(
            t.message.contains("timeline 2: no backup reaches it"),
            "{r:?}"
        );
    }

    /// A manifest that does not parse, names another backup, or has a zero-size WAL file is
    /// reported by its key and skipped; the others stay usable, and a restore asking for a
    /// damaged one is refused naming it.
    #[tokio::test]
    async fn damaged_documents_are_named_and_the_rest_stays_usable() {
        let (repo, _) = Repo::init(
            "memory://verify-damaged",
            RepoConfig::default(),
            &pitr_store::RepoOptions::default(),
        )
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

        let report = verify(&repo, VerifyRequest::default(), &crate::progress::Silent)
            .await
            .unwrap();
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
        let report = verify(&repo, VerifyRequest::default(), &crate::progress::Silent)
            .await
            .unwrap();
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

    /// In an encrypted repository a document or chunk that was changed, or moved under
    /// another object's name, fails authentication: verify names each and reads the rest.
    #[tokio::test]
    async fn encrypted_objects_that_fail_authentication_are_named() {
        use object_store::ObjectStoreExt;
        let pass = pitr_store::Secret::new("pw", "test");
        let cheap = pitr_store::KdfCost {
            memory_kib: 8 << 10,
            iterations: 1,
        };
        let (repo, _) = Repo::init_encrypted(
            "memory://verify-encrypted",
            RepoConfig::default(),
            &pitr_store::RepoOptions::default(),
            &pass,
            "",
            cheap,
        )
        .await
        .unwrap();
        claim_cluster(&repo, SYSID, "test").await.unwrap();
        let mut refs = Vec::new();
        for n in 2..=5u64 {
            refs.push(archive_segment(&repo, n).await);
        }
        let location = repo.location().clone();
        let store = location.store.clone();
        let raw = |key: String| {
            let (store, path) = (store.clone(), location.path(&key));
            async move { store.get(&path).await.unwrap().bytes().await.unwrap() }
        };
        // 3's ref: one byte flipped
        let k3 = WalRef::key(&refs[1].name);
        let mut b = raw(k3.clone()).await.to_vec();
        b[60] ^= 1;
        store.put(&location.path(&k3), b.into()).await.unwrap();
        // 4's and 5's refs swapped
        let (k4, k5) = (WalRef::key(&refs[2].name), WalRef::key(&refs[3].name));
        let (b4, b5) = (raw(k4.clone()).await, raw(k5.clone()).await);
        store.put(&location.path(&k4), b5.into()).await.unwrap();
        store.put(&location.path(&k5), b4.into()).await.unwrap();
        // 2's chunk: one byte flipped
        let ck = refs[0].chunks[0].id.key();
        let mut b = raw(ck.clone()).await.to_vec();
        b[100] ^= 1;
        store.put(&location.path(&ck), b.into()).await.unwrap();

        let report = verify(&repo, VerifyRequest::default(), &crate::progress::Silent)
            .await
            .unwrap();
        let has = |needle: &str| report.problems.iter().any(|p| p.contains(needle));
        for key in [&k3, &k4, &k5] {
            assert!(
                has(&format!("{key} is damaged: fails authentication")),
                "{key}: {:?}",
                report.problems
            );
        }
        assert!(has(&ck), "{ck}: {:?}", report.problems);
        assert!(!report.ok());
    }

    /// Refs under another segment's key, of the wrong size, whose first page belongs to
    /// another segment or cluster, and history files that do not parse are each named.
    #[tokio::test]
    async fn wal_refs_that_lie_are_named() {
        let (repo, _) = Repo::init(
            "memory://verify-refs",
            RepoConfig::default(),
            &pitr_store::RepoOptions::default(),
        )
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

        let report = verify(&repo, VerifyRequest::default(), &crate::progress::Silent)
            .await
            .unwrap();
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

    /// The archive's first segment is after a backup's start: no gap between archived
    /// segments, but recovery from the backup cannot start. Named with the backup; an empty
    /// repository and a backup older than --max-age fail too.
    #[tokio::test]
    async fn continuity_from_each_backup_and_age() {
        let (repo, _) = Repo::init(
            "memory://verify-continuity",
            RepoConfig::default(),
            &pitr_store::RepoOptions::default(),
        )
        .await
        .unwrap();
        claim_cluster(&repo, SYSID, "test").await.unwrap();
        let report = verify(&repo, VerifyRequest::default(), &crate::progress::Silent)
            .await
            .unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.starts_with("no backup in")),
            "{:?}",
            report.problems
        );

        put(
            &repo,
            &BackupManifest::key("b1"),
            &manifest("b1", serde_json::json!([])),
        )
        .await;
        for n in [4, 5] {
            archive_segment(&repo, n).await;
        }
        let report = verify(&repo, VerifyRequest::default(), &crate::progress::Silent)
            .await
            .unwrap();
        assert_eq!(
            report.problems,
            [
                "archived WAL on timeline 1: segments 000000010000000000000002 to \
              000000010000000000000003 are missing (recovery from backup b1 cannot get past it)"
            ]
        );
        let one = verify(
            &repo,
            VerifyRequest {
                backup: Some("b1".into()),
                ..Default::default()
            },
            &crate::progress::Silent,
        )
        .await
        .unwrap();
        assert_eq!(one.problems, report.problems);

        for n in [2, 3] {
            archive_segment(&repo, n).await;
        }
        let report = verify(&repo, VerifyRequest::default(), &crate::progress::Silent)
            .await
            .unwrap();
        assert!(report.ok(), "{:?}", report.problems);
        // b1 finished on 2026-11-26
        let report = verify(
            &repo,
            VerifyRequest {
                max_age: Some(std::time::Duration::from_secs(3600)),
                ..Default::default()
            },
            &crate::progress::Silent,
        )
        .await
        .unwrap();
        assert!(
            report.problems.len() == 1
                && report.problems[0].starts_with("newest backup b1 finished at"),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("26h"), Ok(Duration::from_secs(26 * 3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5m3").is_err());
        assert_eq!(format_duration(Duration::from_secs(93_784)), "1d2h3m4s");
        assert_eq!(format_duration(Duration::from_secs(0)), "0s");
    }
}

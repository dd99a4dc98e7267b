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
//! is read once and reported under the first file that names it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use pitr_pg::{
    timeline_path, HistoryEntry, Lsn, TimelineId, WalFileKind, WalFileName,
    DEFAULT_WAL_SEGMENT_SIZE,
};
use pitr_store::{ChunkId, ChunkRef, Repo};
use serde::Serialize;

use crate::index::{ArchiveIndex, Gap};
use crate::progress::Reporter;
use crate::repofile::{load_wal_refs, repo_system_identifier, BackupManifest, WalRef};
use crate::restore::{RestoreRequest, StartOptions, Target, TargetAction, TimelineChoice};
use crate::time::format_pg_time;

/// `pitr verify`: everything, or one backup and the archived WAL that carries it forward.
#[derive(Default)]
pub struct VerifyRequest {
    pub backup: Option<String>,
    /// The newest backup must have finished within this long ago (`--max-age`).
    pub max_age: Option<Duration>,
    /// Also restore a backup and start it (`--restore-test`).
    pub restore_test: Option<RestoreTest>,
}

/// `--restore-test`: where and how to run the scratch instance.
#[derive(Clone, Debug, Default)]
pub struct RestoreTest {
    /// Directory to restore into (absent or empty; removed afterwards). Default: a new
    /// directory under the system's temp dir.
    pub scratch: Option<PathBuf>,
    /// Port of the scratch instance (default: a free one). It listens only on a socket in
    /// the scratch directory.
    pub port: Option<u16>,
    /// SQL run with psql once the instance is up; each must succeed. Empty: the defaults
    /// (`SELECT count(*) FROM pg_class`, and pg_amcheck when it and amcheck are installed).
    pub check_sql: Vec<String>,
    /// Stop as soon as the backup is consistent instead of at the end of the archived WAL.
    pub immediate: bool,
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
    pub restore_test: Option<RestoreTestReport>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What `--restore-test` did.
#[derive(Debug, Default, Serialize)]
pub struct RestoreTestReport {
    pub backup: String,
    pub scratch: PathBuf,
    pub target: String,
    /// Laying the backup down.
    pub restore_seconds: f64,
    /// Starting PostgreSQL until recovery was done and it accepted connections.
    pub recovery_seconds: f64,
    /// Where recovery stopped, in PostgreSQL's words.
    pub recovery: Option<String>,
    pub checks: Vec<CheckRun>,
}

/// One check run on the scratch instance.
#[derive(Debug, Serialize)]
pub struct CheckRun {
    pub check: String,
    pub ok: bool,
    /// Its output (the last lines when it failed).
    pub output: String,
}

/// A chunk to read, who needs it (for the message), and the WAL segments whose first page it
/// holds (checked on the bytes read).
struct ToRead {
    chunk: ChunkRef,
    owner: String,
    first_page_of: Vec<(WalFileName, u64)>,
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
    let mut age_problems: Vec<String> = Vec::new();
    for (key, detail) in repo.damaged_key_slots().await? {
        problems.push(format!(
            "{key} is damaged: {detail} (this key slot opens nothing)"
        ));
    }
    // The repository's newest backup, whichever one is verified.
    match backups.docs.iter().max_by_key(|b| b.stop_time) {
        None if req.backup.is_none() => age_problems.push(format!(
            "no backup in {}: there is nothing to restore from",
            repo.url()
        )),
        None => {}
        Some(b) => {
            let age = (chrono::Utc::now() - b.stop_time)
                .to_std()
                .unwrap_or_default();
            if let Some(max) = req.max_age.filter(|max| age > *max) {
                age_problems.push(format!(
                    "newest backup {} finished at {} ({} ago), longer ago than --max-age {}",
                    b.id,
                    format_pg_time(&b.stop_time),
                    format_duration(age),
                    format_duration(max)
                ));
            }
        }
    }
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
                // The archived WAL that can carry this backup forward: its timeline from its
                // start, the later timelines, and the history files that link them.
                let (tli, start) = (b.timeline, b.wal_start.clone());
                refs.retain(|r| {
                    let t = r.name.timeline();
                    r.name.kind() == WalFileKind::History
                        || t > tli
                        || (t == tli && r.name >= start)
                });
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
            match wanted {
                None => {
                    problems.push("restore test: no backup to restore".to_string());
                    None
                }
                Some(id) => match restore_test(repo, &id, test, reporter).await {
                    Ok(report) => {
                        for c in report.checks.iter().filter(|c| !c.ok) {
                            problems.push(format!(
                                "restore test of backup {id}: check {:?} failed: {}",
                                c.check, c.output
                            ));
                        }
                        Some(report)
                    }
                    Err(e) => {
                        problems.push(format!("restore test of backup {id}: {e:#}"));
                        None
                    }
                },
            }
        }
    };
    Ok(VerifyReport {
        backups: backups.len(),
        wal_files: refs.len(),
        bytes,
        problems,
        restore_test,
    })
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

/// Missing archived segments: between archived ones of a timeline (whoever needs them), and
/// on each backup's way forward. One line per missing range, naming the oldest backup whose
/// recovery cannot get past it.
fn continuity_problems(
    backups: &[BackupManifest],
    refs: &[WalRef],
    histories: &HashMap<TimelineId, Vec<HistoryEntry>>,
) -> Vec<String> {
    let seg_size = refs
        .iter()
        .find_map(|r| r.segment_size)
        .or(backups.first().map(BackupManifest::segment_size))
        .unwrap_or(DEFAULT_WAL_SEGMENT_SIZE);
    let mut index = ArchiveIndex::new(seg_size);
    for r in refs {
        index.insert(&r.name);
    }
    let segno = |n: &WalFileName| n.segment_number(seg_size).unwrap_or(0);
    let mut spans: Vec<(TimelineId, u64, u64, Option<&str>)> = index
        .gaps()
        .iter()
        .map(|g| (g.timeline, segno(&g.first), segno(&g.last), None))
        .collect();
    let mut by_start: Vec<&BackupManifest> = backups.iter().collect();
    by_start.sort_by_key(|b| b.start_time);
    for b in by_start {
        for g in backup_gaps(b, &index, histories) {
            spans.push((
                g.timeline,
                segno(&g.first),
                segno(&g.last),
                Some(b.id.as_str()),
            ));
        }
    }
    spans.sort_by_key(|s| (s.0, s.1));
    let mut merged: Vec<(TimelineId, u64, u64, Option<&str>)> = Vec::new();
    for s in spans {
        match merged.last_mut() {
            Some(m) if m.0 == s.0 && s.1 <= m.2.saturating_add(1) => {
                m.2 = m.2.max(s.2);
                m.3 = m.3.or(s.3);
            }
            _ => merged.push(s),
        }
    }
    merged
        .into_iter()
        .map(|(tli, a, b, who)| {
            let (first, last) = (index.segment_name(tli, a), index.segment_name(tli, b));
            let what = if a == b {
                format!("archived WAL on timeline {tli}: segment {first} is missing")
            } else {
                format!("archived WAL on timeline {tli}: segments {first} to {last} are missing")
            };
            match who {
                Some(id) => format!("{what} (recovery from backup {id} cannot get past it)"),
                None => what,
            }
        })
        .collect()
}

/// The segments recovery from backup `b` would ask the archive for and not find: from its
/// start (less the segments it carries itself) to the newest archived on its timeline path,
/// and at least to its stop segment when it does not carry that.
fn backup_gaps(
    b: &BackupManifest,
    index: &ArchiveIndex,
    histories: &HashMap<TimelineId, Vec<HistoryEntry>>,
) -> Vec<Gap> {
    let seg_size = index.segment_size();
    let Some(start) = b.wal_start.segment_number(seg_size) else {
        return Vec::new();
    };
    let stop = b.stop_lsn.0.saturating_sub(1).max(b.start_lsn.0) / u64::from(seg_size);
    let carried: HashSet<&str> = b
        .wal
        .iter()
        .filter_map(|f| f.path.as_str().strip_prefix("pg_wal/"))
        .collect();
    let carries =
        |segno: u64| carried.contains(WalFileName::segment(b.timeline, segno, seg_size).as_str());
    let mut from = start;
    while from < stop && carries(from) {
        from += 1;
    }
    let through = (!carries(stop)).then_some(stop);
    index.missing_along(&backup_path(b, index, histories), from, through)
}

/// The timelines recovery from `b` follows to the newest archived one (`latest`, as restore
/// plans it); just its own when the newest did not branch off it after it was consistent, or
/// its history is not in the archive (reported elsewhere).
fn backup_path(
    b: &BackupManifest,
    index: &ArchiveIndex,
    histories: &HashMap<TimelineId, Vec<HistoryEntry>>,
) -> Vec<(TimelineId, Lsn, Option<Lsn>)> {
    let own = vec![(b.timeline, Lsn(0), None)];
    let newest = index
        .newest_timeline()
        .map_or(b.timeline, |t| t.max(b.timeline));
    if newest == b.timeline {
        return own;
    }
    let Some(history) = histories.get(&newest) else {
        return own;
    };
    let path = timeline_path(newest, history);
    let follows = path
        .iter()
        .any(|(t, _, end)| *t == b.timeline && end.is_none_or(|e| e >= b.stop_lsn));
    if follows {
        path
    } else {
        own
    }
}

/// What a WAL ref says about itself that cannot be true (the checks restore-wal makes before
/// it fetches), and a cluster other than the repository's.
fn check_ref(r: &WalRef, sysid: Option<u64>) -> Vec<String> {
    let key = WalRef::key(&r.name);
    let mut out = Vec::new();
    if let Err(e) = r.check(&r.name) {
        out.push(format!("archived WAL {} ({key}): {e:#}", r.name));
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
/// that segment's long page header (an older timeline is the copy a timeline's first segment
/// starts with).
fn check_first_page(
    data: &[u8],
    name: &WalFileName,
    size: u64,
    sysid: Option<u64>,
) -> Option<String> {
    let e = crate::repofile::check_first_page(data, name, size, sysid).err()?;
    Some(format!(
        "archived WAL {name} ({}): {e:#}",
        WalRef::key(name)
    ))
}

/// The archived history files by timeline, and those that do not parse (recovery would stop
/// on them).
async fn read_histories(
    repo: &Repo,
    refs: &[WalRef],
) -> (Vec<String>, HashMap<TimelineId, Vec<HistoryEntry>>) {
    let mut out = Vec::new();
    let mut parsed_all = HashMap::new();
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
        match parsed {
            Ok(entries) => {
                parsed_all.insert(r.name.timeline(), entries);
            }
            Err(e) => out.push(format!(
                "archived WAL {} ({}): not a history file: {e}",
                r.name,
                WalRef::key(&r.name)
            )),
        }
    }
    (out, parsed_all)
}

/// `--restore-test`: restore backup `id` into a scratch directory, start it with archiving
/// off (a test restore must never push a new timeline into the production archive), on a
/// socket in the scratch directory only, with a pg_hba.conf of its own (trust on that private
/// socket), run the checks, stop it and remove the directory.
pub async fn restore_test(
    repo: &Repo,
    id: &str,
    test: &RestoreTest,
    reporter: &dyn Reporter,
) -> anyhow::Result<RestoreTestReport> {
    if rustix::process::geteuid().is_root() {
        bail!("PostgreSQL refuses to run as root; run pitr verify --restore-test as the database owner (e.g. runuser -u postgres --)");
    }
    let (scratch, made) = scratch_dir(test.scratch.as_deref())?;
    let pgdata = scratch.join("data");
    let result = restore_and_check(repo, id, test, &scratch, &pgdata, reporter).await;
    let bindir = result.as_ref().ok().map(|(_, b)| b.clone());
    // Whatever happened: the server down, the directory gone.
    if pgdata.join("postmaster.pid").exists() {
        if let Some(bindir) = bindir.or_else(|| pg_ctl_dir(&pgdata)) {
            stop_scratch(&bindir, &pgdata);
        }
    }
    let removed = if made {
        std::fs::remove_dir_all(&scratch)
    } else {
        clear_dir(&scratch)
    };
    if let Err(e) = removed {
        tracing::warn!("remove scratch directory {}: {e}", scratch.display());
    }
    result.map(|(report, _)| report)
}

async fn restore_and_check(
    repo: &Repo,
    id: &str,
    test: &RestoreTest,
    scratch: &Path,
    pgdata: &Path,
    reporter: &dyn Reporter,
) -> anyhow::Result<(RestoreTestReport, PathBuf)> {
    let manifest = BackupManifest::list(repo)
        .await?
        .for_restore(Some(id))?
        .into_iter()
        .find(|b| b.id == id)
        .with_context(|| format!("no backup {id} in {}", repo.url()))?;
    let bindir = crate::restore::pg_bindir(manifest.pg_version_num / 10000)?;
    let hba = scratch.join("pg_hba.conf");
    std::fs::write(&hba, "local all all trust\nlocal replication all trust\n")
        .with_context(|| format!("write {}", hba.display()))?;
    let remap = manifest
        .tablespaces
        .iter()
        .map(|t| (t.oid, scratch.join("tablespaces").join(t.oid.to_string())))
        .collect();
    let port = match test.port {
        Some(p) => p,
        None => free_port()?,
    };
    let target = if test.immediate {
        Target::Immediate
    } else {
        Target::End
    };
    let start = StartOptions {
        port: Some(port),
        stop_after: false,
        pg_options: vec![
            // Never archive: the promoted test instance's new timeline must not reach the
            // production archive. The command line beats postgresql(.auto).conf.
            "archive_mode=off".into(),
            "listen_addresses=''".into(),
            format!(
                "unix_socket_directories={}",
                sh_quote(&scratch.display().to_string())
            ),
            format!("hba_file={}", sh_quote(&hba.display().to_string())),
            // The production value may not fit next to the production server.
            "shared_buffers=128MB".into(),
            // No read-only phase: so recovery does not insist on max_connections and the
            // like being at least the production server's.
            "hot_standby=off".into(),
        ],
    };
    let req = RestoreRequest {
        pgdata: pgdata.to_path_buf(),
        target: target.clone(),
        exclusive: false,
        timeline: TimelineChoice::Latest,
        action: TargetAction::Promote,
        backup: Some(id.to_string()),
        delta: false,
        remap,
        dry_run: false,
        // Written into postgresql.auto.conf too: the scratch instance must never archive.
        archive_off: true,
        start: None,
    };
    tracing::info!(
        "restore test: backup {id} into {} on port {port}",
        pgdata.display()
    );
    let began = Instant::now();
    let restored = crate::restore::restore(repo, req, reporter).await?;
    let restore_seconds = began.elapsed().as_secs_f64();
    // Where the configuration lives outside the data directory (Debian's /etc/postgresql),
    // the backup has none: the scratch instance runs on PostgreSQL's defaults plus the
    // settings above.
    for conf in ["postgresql.conf", "pg_ident.conf"] {
        let path = pgdata.join(conf);
        if !path.exists() {
            std::fs::write(&path, "")
                .with_context(|| format!("write an empty {}", path.display()))?;
        }
    }
    let began = Instant::now();
    let recovery = Some(
        crate::restore::start_and_wait(
            pgdata,
            &restored.plan.manifest,
            TargetAction::Promote,
            &start,
        )
        .await?,
    );
    let recovery_seconds = began.elapsed().as_secs_f64();
    let mut report = RestoreTestReport {
        backup: id.to_string(),
        scratch: scratch.to_path_buf(),
        target: target.describe(),
        restore_seconds,
        recovery_seconds,
        recovery: recovery.as_ref().map(|r| {
            let redo = r.redo_done.as_deref().map(|d| {
                // "0/3000148 system usage: CPU: …": the position is what matters here.
                let at = d.split(" system usage").next().unwrap_or(d).trim();
                format!("redo done at {at}")
            });
            let mut said: Vec<String> = r.stopped.iter().cloned().chain(redo).collect();
            if let Some(t) = &r.last_transaction {
                said.push(format!("last transaction at {t}"));
            }
            if said.is_empty() {
                r.state.clone()
            } else {
                said.join("; ")
            }
        }),
        checks: Vec::new(),
    };
    if !recovery
        .as_ref()
        .is_some_and(|r| r.state.starts_with("promoted"))
    {
        bail!(
            "the scratch instance did not finish recovery: {}",
            recovery.map_or("not started".into(), |r| r.state)
        );
    }
    let psql = |sql: &str| {
        let mut cmd = std::process::Command::new(bindir.join("psql"));
        clear_pg_env(&mut cmd);
        cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(scratch)
            .args(["-p", &port.to_string(), "-d", "postgres", "-c", sql]);
        cmd
    };
    let mut checks: Vec<(String, std::process::Command)> = Vec::new();
    if test.check_sql.is_empty() {
        let sql = "SELECT count(*) FROM pg_class";
        checks.push((sql.to_string(), psql(sql)));
        let amcheck = bindir.join("pg_amcheck");
        let available = run_check(psql(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'amcheck'",
        ))
        .is_ok_and(|out| out.trim() == "1");
        if amcheck.is_file() && available {
            let mut cmd = std::process::Command::new(&amcheck);
            clear_pg_env(&mut cmd);
            cmd.arg("-h").arg(scratch).args([
                "-p",
                &port.to_string(),
                "--install-missing",
                "--all",
            ]);
            checks.push(("pg_amcheck --install-missing --all".into(), cmd));
        } else {
            tracing::info!(
                "restore test: pg_amcheck or the amcheck extension is not installed; skipping it"
            );
        }
    } else {
        for sql in &test.check_sql {
            checks.push((sql.clone(), psql(sql)));
        }
    }
    for (what, cmd) in checks {
        let (ok, output) = match run_check(cmd) {
            Ok(out) => (true, out),
            Err(out) => (false, out),
        };
        report.checks.push(CheckRun {
            check: what,
            ok,
            output: tail(&output, 20),
        });
    }
    stop_scratch(&bindir, pgdata);
    Ok((report, bindir))
}

/// Run a check command: its stdout on success, stdout and stderr on failure.
fn run_check(mut cmd: std::process::Command) -> Result<String, String> {
    match cmd.output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(format!(
            "{}; {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => Err(format!("run {:?}: {e}", cmd.get_program())),
    }
}

/// The scratch instance is reached by its socket only: none of the caller's libpq settings.
fn clear_pg_env(cmd: &mut std::process::Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One word for the shell pg_ctl runs postgres with.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .context("find a free port for the scratch instance")?;
    Ok(listener.local_addr()?.port())
}

/// The scratch directory, and whether it was made here (then it is removed whole; a given
/// one is emptied). A given one must be absent or empty: it is cleared afterwards.
fn scratch_dir(given: Option<&Path>) -> anyhow::Result<(PathBuf, bool)> {
    use std::os::unix::fs::DirBuilderExt;
    let (dir, made) = match given {
        Some(d) => {
            let d = std::path::absolute(d).with_context(|| format!("resolve {}", d.display()))?;
            match std::fs::read_dir(&d) {
                Ok(mut entries) => {
                    if entries.next().is_some() {
                        bail!(
                            "--scratch {} is not empty: the restore test needs an empty directory it may remove",
                            d.display()
                        );
                    }
                    return Ok((d, false));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (d, true),
                Err(e) => return Err(e).with_context(|| format!("read {}", d.display())),
            }
        }
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let name = format!("pitr-verify-{}-{nanos:08x}", std::process::id());
            (std::env::temp_dir().join(name), true)
        }
    };
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("create scratch directory {}", dir.display()))?;
    Ok((dir, made))
}

fn clear_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// The binaries of the restored data directory's major version (from PG_VERSION).
fn pg_ctl_dir(pgdata: &Path) -> Option<PathBuf> {
    let major: u32 = std::fs::read_to_string(pgdata.join("PG_VERSION"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    crate::restore::pg_bindir(major).ok()
}

/// Stop the scratch instance: fast, then immediate if that did not work.
fn stop_scratch(bindir: &Path, pgdata: &Path) {
    if !pgdata.join("postmaster.pid").exists() {
        return;
    }
    for mode in ["fast", "immediate"] {
        let stopped = std::process::Command::new(bindir.join("pg_ctl"))
            .arg("-D")
            .arg(pgdata)
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .stdout(std::process::Stdio::null())
            .status();
        match stopped {
            Ok(s) if s.success() => return,
            Ok(s) => tracing::warn!("pg_ctl stop -m {mode} on {}: {s}", pgdata.display()),
            Err(e) => tracing::warn!("run pg_ctl stop on {}: {e}", pgdata.display()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use bytes::Bytes;
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
        let backend = repo.backend().clone();
        let store = backend.store.clone();
        let raw = |key: String| {
            let (store, path) = (store.clone(), backend.path(&key));
            async move { store.get(&path).await.unwrap().bytes().await.unwrap() }
        };
        // 3's ref: one byte flipped
        let k3 = WalRef::key(&refs[1].name);
        let mut b = raw(k3.clone()).await.to_vec();
        b[60] ^= 1;
        store.put(&backend.path(&k3), b.into()).await.unwrap();
        // 4's and 5's refs swapped
        let (k4, k5) = (WalRef::key(&refs[2].name), WalRef::key(&refs[3].name));
        let (b4, b5) = (raw(k4.clone()).await, raw(k5.clone()).await);
        store.put(&backend.path(&k4), b5.into()).await.unwrap();
        store.put(&backend.path(&k5), b4.into()).await.unwrap();
        // 2's chunk: one byte flipped
        let ck = refs[0].chunks[0].id.key();
        let mut b = raw(ck.clone()).await.to_vec();
        b[100] ^= 1;
        store.put(&backend.path(&ck), b.into()).await.unwrap();

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
        let (repo, _) = Repo::init("memory://verify-continuity", RepoConfig::default())
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

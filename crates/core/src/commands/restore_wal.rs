//! `pitr restore-wal NAME DEST`: fetch one archived WAL file for recovery. DEST appears whole
//! or not at all, and only once it is checked to be NAME (ref, size, page header, system
//! identifier, history syntax); "not archived" (exit 1) is kept strictly apart from every
//! other failure, including a hole in the middle of an archived timeline.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;

use pitr_pg::{LongPageHeader, WalFileKind, WalFileName, LONG_PAGE_HEADER_LEN};
use pitr_store::{layout, Repo, RepoOptions, StoreError};
use tokio::sync::OnceCell;

use crate::error::NotArchived;
use crate::repofile::{check_first_page, repo_system_identifier, WalRef};
use crate::restore::HandedOn;

/// The repository's system identifier, read at most once per process (the restore-wal call or
/// the prefetch worker) and only when a segment is checked.
type SystemId = OnceCell<u64>;
/// `pitr restore-wal NAME DEST`.
pub struct RestoreWalRequest {
    /// The WAL file wanted (`%f`).
    pub name: WalFileName,
    /// Where to write it (`%p`).
    pub dest: PathBuf,
    /// Segments to fetch ahead into the spool (0: none).
    pub prefetch: usize,
    /// Run as the prefetch worker: `name` is the segment just served, `dest` the spool.
    pub prefetch_worker: bool,
    /// What the prefetch worker this call starts is given of its settings.
    pub handed_on: HandedOn,
    /// `--repository-id`: serve WAL only from the encrypted repository with this ID (what
    /// `pitr restore` writes into restore_command for an encrypted repository).
    pub repository_id: Option<String>,
}

const ATTEMPTS: u32 = 4;

/// `pitr restore-wal` against the repository at `url`, opened with `options`.
pub async fn restore_wal(
    url: &str,
    options: &RepoOptions,
    args: RestoreWalRequest,
) -> anyhow::Result<()> {
    let name = args.name;
    let expected = args.repository_id.as_deref();
    if args.prefetch_worker {
        return prefetch_worker(url, options, expected, &name, &args.dest, args.prefetch).await;
    }
    let worker = Worker {
        url,
        handed_on: &args.handed_on,
        repository_id: expected,
        depth: args.prefetch,
    };
    let spool = spool_dir(&args.dest, &name, args.prefetch);
    if let Some(spool) = &spool {
        // Served from the spool: the worker renamed it there only after verifying it.
        let spooled = spool.join(name.as_str());
        if std::fs::rename(&spooled, &args.dest).is_ok() {
            tracing::debug!("{name} served from the prefetch spool");
            after_serving(&worker, &name, spool);
            return Ok(());
        }
    }
    let sysid = SystemId::new();
    let mut delay = Duration::from_millis(200);
    for attempt in 1.. {
        let fetched = async {
            let repo = open_expected(url, options, expected).await?;
            fetch(&repo, &name, &args.dest, &sysid).await
        }
        .await;
        match fetched {
            Err(e) if attempt < ATTEMPTS && is_transient(&e) => {
                tracing::warn!("fetch {name} (attempt {attempt} of {ATTEMPTS}): {e:#}; retrying");
                tokio::time::sleep(delay).await;
                delay *= 3;
            }
            Ok(()) => {
                if let Some(spool) = &spool {
                    after_serving(&worker, &name, spool);
                }
                return Ok(());
            }
            other => return other,
        }
    }
    unreachable!("the loop returns on the last attempt")
}

/// The spool directory, when PostgreSQL is the caller (DEST is `pg_wal/RECOVERYXLOG`) and a
/// segment is asked for.
fn spool_dir(dest: &Path, name: &WalFileName, depth: usize) -> Option<PathBuf> {
    let parent = dest.parent()?;
    let is_pg_wal = parent.file_name().is_some_and(|n| n == "pg_wal");
    (depth > 0 && is_pg_wal && name.kind() == WalFileKind::Segment).then(|| parent.join(SPOOL))
}

/// The prefetch worker a restore-wal call starts: its repository, settings and depth.
struct Worker<'a> {
    url: &'a str,
    handed_on: &'a HandedOn,
    repository_id: Option<&'a str>,
    depth: usize,
}

/// The repository at `url`, refused unless it is the encrypted repository `expected` (when
/// given): a downgraded or swapped repository must stop recovery, not feed it.
async fn open_expected(
    url: &str,
    options: &RepoOptions,
    expected: Option<&str>,
) -> anyhow::Result<Repo> {
    let repo = Repo::open(url, options).await?;
    if let Some(want) = expected {
        match &repo.config().encryption {
            Some(e) if e.repository_id == want => {}
            Some(e) => anyhow::bail!(
                "repository {url} is encrypted repository {}, not {want}, the one this \
                 recovery was restored from: refusing its WAL",
                e.repository_id
            ),
            None => anyhow::bail!(
                "repository {url} is not encrypted, but this recovery was restored from \
                 encrypted repository {want} (config.json replaced?): refusing its WAL"
            ),
        }
    }
    Ok(repo)
}

/// Drop spooled segments recovery has passed, and make sure a worker is fetching the next ones.
fn after_serving(worker: &Worker<'_>, name: &WalFileName, spool: &Path) {
    if let Ok(entries) = std::fs::read_dir(spool) {
        for e in entries.flatten() {
            let f = e.file_name();
            let Some(f) = f.to_str() else { continue };
            let stem = f.strip_suffix(".tmp").unwrap_or(f);
            if stem.len() == 24 && stem[8..] <= name.as_str()[8..] && !f.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if spool_closed(spool) || worker_running(spool) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let spawned = std::process::Command::new(exe)
        .args(worker.handed_on.args())
        .args([
            "--repo",
            worker.url,
            "-q",
            "restore-wal",
            "--prefetch-worker",
            "--prefetch",
        ])
        .arg(worker.depth.to_string())
        .args(
            worker
                .repository_id
                .map(|id| ["--repository-id", id])
                .into_iter()
                .flatten(),
        )
        .arg(name.as_str())
        .arg(spool)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        tracing::warn!("start WAL prefetch after {name}: {e}");
    }
}

const SPOOL: &str = "pitr-spool";
/// Left in pg_wal by `spool-clean` (recovery is over): no worker may fill the spool again.
const SPOOL_CLOSED: &str = "pitr-spool.closed";

fn spool_closed(spool: &Path) -> bool {
    spool
        .parent()
        .is_some_and(|pg_wal| pg_wal.join(SPOOL_CLOSED).exists())
}

fn lock_file(spool: &Path) -> Option<std::fs::File> {
    std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(spool.join(".lock"))
        .ok()
}

fn try_lock(f: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

fn worker_running(spool: &Path) -> bool {
    if !spool.exists() && std::fs::create_dir_all(spool).is_ok() {
        tracing::debug!("created the prefetch spool {}", spool.display());
    }
    match lock_file(spool) {
        // Locked by a worker: running. Our probe lock goes away with the file handle.
        Some(f) => !try_lock(&f),
        None => true,
    }
}

/// Fetch the `depth` segments after `after` into `spool`, each verified (every chunk
/// re-hashed, total size checked) into a temp file and renamed into place only then.
async fn prefetch_worker(
    url: &str,
    options: &RepoOptions,
    expected: Option<&str>,
    after: &WalFileName,
    spool: &Path,
    depth: usize,
) -> anyhow::Result<()> {
    // The spool directory is made by the restore-wal call that starts the worker; a worker
    // never makes it, so once spool-clean removed it nothing brings it back.
    let Some(lock) = lock_file(spool) else {
        return Ok(());
    };
    if !try_lock(&lock) || spool_closed(spool) {
        return Ok(());
    }
    let repo = open_expected(url, options, expected).await?;
    let seg_size = WalRef::load(&repo, after)
        .await?
        .and_then(|r| r.segment_size)
        .unwrap_or(pitr_pg::DEFAULT_WAL_SEGMENT_SIZE);
    let first = after.segment_number(seg_size).context("not a segment")?;
    let sysid = SystemId::new();
    for segno in first + 1..=first + depth as u64 {
        let name = WalFileName::segment(after.timeline(), segno, seg_size);
        let dest = spool.join(name.as_str());
        if spool_closed(spool) {
            break;
        }
        if dest.exists() {
            continue;
        }
        match fetch(&repo, &name, &dest, &sysid).await {
            Ok(()) => {}
            Err(e) if e.downcast_ref::<NotArchived>().is_some() => break,
            Err(e) => {
                tracing::debug!("prefetch {name}: {e:#}");
                break;
            }
        }
    }
    drop(lock);
    Ok(())
}

/// `recovery_end_command`: recovery is over, the spool is no longer needed.
pub fn clean_spool(pg_wal: &Path) -> anyhow::Result<()> {
    let marker = pg_wal.join(SPOOL_CLOSED);
    std::fs::write(&marker, b"recovery ended; restore-wal prefetch is off\n")
        .with_context(|| format!("create {}", marker.display()))?;
    let spool = pg_wal.join(SPOOL);
    // A worker still finishing a segment may add a file while the directory is emptied.
    let mut attempt = 0;
    loop {
        match std::fs::remove_dir_all(&spool) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(_) if attempt < 50 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e).with_context(|| format!("remove {}", spool.display())),
        }
    }
}

fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<StoreError>()
            .is_some_and(StoreError::is_transient)
    })
}

async fn fetch(
    repo: &Repo,
    name: &WalFileName,
    dest: &Path,
    sysid: &SystemId,
) -> anyhow::Result<()> {
    let Some(walref) = WalRef::load(repo, name).await? else {
        return Err(missing(repo, name).await);
    };
    let key = WalRef::key(name);
    walref
        .check(name)
        .with_context(|| format!("check {name} ({key})"))?;
    let tmp = temp_path(dest);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    let file = Arc::new(file);
    let written = async {
        let n = repo
            .get_file(
                &walref.chunks,
                Arc::clone(&file),
                &tmp.display().to_string(),
            )
            .await?;
        if n != walref.size {
            bail!(
                "{name}: chunks add up to {n} bytes, the ref says {}",
                walref.size
            );
        }
        check_content(repo, name, &walref, &file, &tmp, sysid)
            .await
            .with_context(|| format!("check {name} ({key})"))?;
        std::fs::rename(&tmp, dest)
            .with_context(|| format!("rename {} to {}", tmp.display(), dest.display()))?;
        Ok(())
    }
    .await;
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("restore {name} to {}", dest.display()))
}

/// NAME has no ref. That is the end of the archive ("not archived", exit 1) unless later
/// segments of its timeline are archived: then it is a hole, and ending recovery here would
/// promote at the wrong point. The timeline is listed only on this path (once per recovery,
/// at its end), so the usual fetch stays one read.
async fn missing(repo: &Repo, name: &WalFileName) -> anyhow::Error {
    if name.kind() != WalFileKind::Segment {
        return NotArchived(name.to_string()).into();
    }
    let prefix = format!("{}{}/", layout::WAL_PREFIX, &name.as_str()[..8]);
    let listed = match repo.list(&prefix).await {
        Ok(listed) => listed,
        Err(e) => {
            return anyhow::Error::new(e).context(format!(
                "{name} is not archived; list {prefix} to tell the end of the archive from a hole"
            ))
        }
    };
    let later = listed
        .iter()
        .filter_map(|(k, _)| WalRef::name_of_key(k))
        .filter(|n| n.kind() == WalFileKind::Segment && n > name)
        .min();
    match later {
        Some(later) => anyhow::anyhow!(
            "{name} is missing from the archive ({} is absent or not readable as an object), \
             but later segments of timeline {} are archived (from {later}): the archive has a \
             hole; refusing to end recovery here",
            WalRef::key(name),
            name.timeline()
        ),
        None => NotArchived(name.to_string()).into(),
    }
}

/// What the fetched bytes must be before they become DEST: for a segment, a first page whose
/// long header carries NAME's position, timeline and the repository's system identifier; for
/// a history file, a parseable history; for a backup history file, one whose start location
/// is NAME's.
async fn check_content(
    repo: &Repo,
    name: &WalFileName,
    walref: &WalRef,
    file: &std::fs::File,
    path: &Path,
    sysid: &SystemId,
) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let read = |len: usize| -> anyhow::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, 0)
            .with_context(|| format!("read back {}", path.display()))?;
        Ok(buf)
    };
    match name.kind() {
        WalFileKind::Segment | WalFileKind::Partial => {
            let ours = sysid
                .get_or_try_init(|| async {
                    repo_system_identifier(repo).await?.with_context(|| {
                        format!(
                            "{} records no system identifier, so no WAL can be checked",
                            layout::CLUSTER
                        )
                    })
                })
                .await?;
            let page = read(LONG_PAGE_HEADER_LEN)?;
            let header = check_first_page(&page, name, walref.size, Some(*ours))?;
            check_timeline(repo, name, &header).await
        }
        WalFileKind::History => {
            pitr_pg::parse_history_file(name.timeline(), &read(walref.size as usize)?)?;
            Ok(())
        }
        WalFileKind::BackupHistory => {
            pitr_pg::parse_backup_history(name, &read(walref.size as usize)?)?;
            Ok(())
        }
    }
}

/// The first page of a segment carries NAME's timeline, with one exception: the segment where
/// a timeline begins starts as a copy of its parent's, up to the switch point, so its first
/// page may carry an older timeline, if the timeline's history file says it switched from
/// that one inside this segment.
async fn check_timeline(
    repo: &Repo,
    name: &WalFileName,
    header: &LongPageHeader,
) -> anyhow::Result<()> {
    let (page, wanted) = (header.timeline, name.timeline().0);
    if page == wanted {
        return Ok(());
    }
    let wrong = || anyhow::anyhow!("its page header says timeline {page}, not {wanted}");
    if page > wanted {
        return Err(wrong());
    }
    let history: WalFileName = format!("{wanted:08X}.history")
        .parse()
        .expect("a history file name");
    let Some(href) = WalRef::load(repo, &history).await? else {
        return Err(wrong().context(format!("{history} is not archived")));
    };
    href.check(&history)
        .with_context(|| format!("check {history}"))?;
    let bytes = repo.get_bytes(&href.chunks).await?;
    let entries = pitr_pg::parse_history_file(name.timeline(), &bytes)
        .with_context(|| format!("check {history}"))?;
    let segno = name.segment_number(header.segment_size);
    let switched_here = entries.iter().any(|e| {
        e.parent.0 == page && Some(e.switch_point.segment_number(header.segment_size)) == segno
    });
    if switched_here {
        Ok(())
    } else {
        Err(wrong().context(format!(
            "{history} has no switch from timeline {page} inside {name}"
        )))
    }
}

fn temp_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(format!(".pitr-{}.tmp", std::process::id()));
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pitr_store::{ChunkId, ChunkRef};

    fn walref(name: &str, lens: &[u32], size: u64) -> WalRef {
        WalRef {
            name: name.parse().unwrap(),
            size,
            segment_size: None,
            system_identifier: None,
            archived_at: chrono::Utc::now(),
            stored_bytes: 0,
            chunks: lens
                .iter()
                .map(|&len| ChunkRef {
                    id: ChunkId::of(&len.to_le_bytes()),
                    len,
                })
                .collect(),
            source: None,
        }
    }

    /// A ref that is not NAME's, or whose size no file of NAME's kind has, is refused before
    /// anything is fetched.
    #[test]
    fn refs_must_be_names_and_sized_like_it() {
        let seg: WalFileName = "000000010000000000000002".parse().unwrap();
        let whole = [4 << 20; 4];
        walref(seg.as_str(), &whole, 16 << 20).check(&seg).unwrap();
        for (how, r) in [
            (
                "another segment's",
                walref("000000010000000000000001", &whole, 16 << 20),
            ),
            (
                "another timeline's",
                walref("000000020000000000000002", &whole, 16 << 20),
            ),
            ("emptied", walref(seg.as_str(), &[], 0)),
            // (truncated to a size segments may have, 4 MiB, it is the page header's check
            // that the file is as long as its segments)
            ("truncated", walref(seg.as_str(), &[3 << 20], 3 << 20)),
            (
                "short of its size",
                walref(seg.as_str(), &[4 << 20], 16 << 20),
            ),
        ] {
            assert!(r.check(&seg).is_err(), "{how} ref accepted");
        }
        let mut odd = walref(seg.as_str(), &whole, 16 << 20);
        odd.segment_size = Some(1 << 20);
        assert!(odd.check(&seg).is_err());
        let history: WalFileName = "00000002.history".parse().unwrap();
        walref("00000002.history", &[40], 40)
            .check(&history)
            .unwrap();
        assert!(walref("00000002.history", &[4 << 20], 4 << 20)
            .check(&history)
            .is_err());
    }
}

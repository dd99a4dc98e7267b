//! Laying a backup down as a data directory: files fetched in parallel (chunks re-hashed on
//! read), PostgreSQL's modes, fsynced; tablespaces at their original or remapped places;
//! with `delta`, files that already match are kept and extra files removed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use pitr_store::Repo;
use serde::Serialize;

use crate::progress::Reporter;
use crate::repofile::{BackupManifest, FileEntry, FileKind};

#[derive(Debug, Default, Serialize)]
pub struct LayDownStats {
    pub files: usize,
    pub bytes_fetched: u64,
    pub bytes_reused: u64,
    pub files_reused: usize,
    pub removed: usize,
    pub seconds: f64,
}

pub struct LayDown<'a> {
    pub repo: &'a Repo,
    pub manifest: &'a BackupManifest,
    pub pgdata: &'a Path,
    /// Tablespace OID → directory, for remapped tablespaces.
    pub remap: &'a HashMap<u32, PathBuf>,
    pub delta: bool,
    pub reporter: &'a dyn Reporter,
}

fn is_empty_dir(p: &Path) -> anyhow::Result<bool> {
    match std::fs::read_dir(p) {
        Ok(mut d) => Ok(d.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("read directory {}", p.display())),
    }
}

fn make_dir(p: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .with_context(|| format!("create directory {}", p.display()))
}

impl LayDown<'_> {
    /// Where each tablespace goes.
    pub fn tablespace_dirs(&self) -> anyhow::Result<BTreeMap<u32, PathBuf>> {
        let mut out = BTreeMap::new();
        for t in &self.manifest.tablespaces {
            let dir = self
                .remap
                .get(&t.oid)
                .cloned()
                .unwrap_or_else(|| PathBuf::from(&t.location));
            if !dir.is_absolute() {
                bail!(
                    "tablespace {} location {} is not absolute",
                    t.oid,
                    dir.display()
                );
            }
            out.insert(t.oid, dir);
        }
        for oid in self.remap.keys() {
            if !out.contains_key(oid) {
                bail!(
                    "--tablespace-map {oid}=…: backup {} has no tablespace {oid} (it has: {})",
                    self.manifest.id,
                    self.manifest
                        .tablespaces
                        .iter()
                        .map(|t| format!("{}={}", t.oid, t.location))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        Ok(out)
    }

    /// Refuse to write over something that is not ours to overwrite.
    pub fn check_targets(&self) -> anyhow::Result<()> {
        let tablespaces = self.tablespace_dirs()?;
        if self.delta {
            if self.pgdata.join("postmaster.pid").exists() {
                bail!(
                    "{} has a postmaster.pid: stop the server first (or remove the file if it is stale)",
                    self.pgdata.display()
                );
            }
            return Ok(());
        }
        if !is_empty_dir(self.pgdata)? {
            bail!(
                "{} is not empty: restore into an empty or new directory, or pass --delta to reuse it",
                self.pgdata.display()
            );
        }
        for (oid, dir) in &tablespaces {
            if !is_empty_dir(dir)? {
                bail!(
                    "tablespace {oid} directory {} is not empty: remap it with --tablespace-map {oid}=DIR or pass --delta",
                    dir.display()
                );
            }
        }
        Ok(())
    }

    fn dest(&self, e: &FileEntry, tablespaces: &BTreeMap<u32, PathBuf>) -> anyhow::Result<PathBuf> {
        let base = match e.tablespace {
            None => self.pgdata.to_path_buf(),
            Some(oid) => tablespaces
                .get(&oid)
                .cloned()
                .with_context(|| format!("file {} names unknown tablespace {oid}", e.path))?,
        };
        Ok(base.join(&e.path))
    }

    pub async fn run(&self) -> anyhow::Result<LayDownStats> {
        let started = Instant::now();
        self.check_targets()?;
        let tablespaces = self.tablespace_dirs()?;
        make_dir(self.pgdata)?;
        std::fs::set_permissions(self.pgdata, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", self.pgdata.display()))?;
        for dir in tablespaces.values() {
            make_dir(dir)?;
        }
        let all: Vec<&FileEntry> = self.manifest.all_files().collect();
        let mut wanted: HashSet<PathBuf> = HashSet::new();
        for e in &all {
            let dest = self.dest(e, &tablespaces)?;
            wanted.insert(dest.clone());
            match e.kind {
                FileKind::Directory => {
                    make_dir(&dest)?;
                    std::fs::set_permissions(
                        &dest,
                        std::fs::Permissions::from_mode(e.mode & 0o777 | 0o700),
                    )
                    .with_context(|| format!("chmod {}", dest.display()))?;
                }
                FileKind::File => {
                    if let Some(parent) = dest.parent() {
                        make_dir(parent)?;
                    }
                }
                FileKind::Symlink => {
                    let target = e.link.as_deref().unwrap_or_default();
                    if self.delta {
                        let _ = std::fs::remove_file(&dest);
                    }
                    std::os::unix::fs::symlink(target, &dest)
                        .with_context(|| format!("symlink {} -> {target}", dest.display()))?;
                }
            }
        }
        // PostgreSQL recreates pg_tblspc links from tablespace_map at startup; making them now
        // too lets pg_verifybackup find the tablespace files before the first start.
        for (oid, dir) in &tablespaces {
            let link = self.pgdata.join("pg_tblspc").join(oid.to_string());
            make_dir(&self.pgdata.join("pg_tblspc"))?;
            if std::fs::symlink_metadata(&link).is_ok() {
                std::fs::remove_file(&link)
                    .with_context(|| format!("remove old link {}", link.display()))?;
            }
            std::os::unix::fs::symlink(dir, &link)
                .with_context(|| format!("symlink {} -> {}", link.display(), dir.display()))?;
            wanted.insert(link);
        }
        let removed = if self.delta {
            self.remove_extra(&wanted, &tablespaces)?
        } else {
            0
        };

        let total: u64 = all
            .iter()
            .filter(|e| e.kind == FileKind::File)
            .map(|e| e.size)
            .sum();
        let fetched = AtomicU64::new(0);
        let reused = AtomicU64::new(0);
        let files_reused = AtomicUsize::new(0);
        let progress = self
            .reporter
            .start(format!("restore {}", self.manifest.id), total);
        let files: Vec<(&FileEntry, PathBuf)> = all
            .iter()
            .filter(|e| e.kind == FileKind::File)
            .map(|e| Ok((*e, self.dest(e, &tablespaces)?)))
            .collect::<anyhow::Result<_>>()?;
        let nfiles = files.len();
        futures::stream::iter(files)
            .map(|(e, dest)| {
                let fetched = &fetched;
                let reused = &reused;
                let files_reused = &files_reused;
                let progress = &progress;
                async move {
                    if self.delta && self.matches(e, &dest).await? {
                        reused.fetch_add(e.size, Ordering::Relaxed);
                        files_reused.fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.write_file(e, &dest).await?;
                        fetched.fetch_add(e.size, Ordering::Relaxed);
                    }
                    progress.add(e.size);
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        progress.finish();
        let roots: Vec<PathBuf> = std::iter::once(self.pgdata.to_path_buf())
            .chain(tablespaces.values().cloned())
            .collect();
        tokio::task::spawn_blocking(move || sync_filesystems(&roots)).await??;
        Ok(LayDownStats {
            files: nfiles,
            bytes_fetched: fetched.into_inner(),
            bytes_reused: reused.into_inner(),
            files_reused: files_reused.into_inner(),
            removed,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    async fn matches(&self, e: &FileEntry, dest: &Path) -> anyhow::Result<bool> {
        let Ok(meta) = std::fs::symlink_metadata(dest) else {
            return Ok(false);
        };
        let cut_len: u64 = e.chunks.iter().map(|c| u64::from(c.len)).sum();
        if !meta.is_file() || meta.len() != e.size || cut_len != e.size {
            return Ok(false);
        }
        let file = std::fs::File::open(dest).with_context(|| format!("open {}", dest.display()))?;
        let chunks = self
            .repo
            .hash_file(Arc::new(file), &e.chunks, &dest.display().to_string())
            .await?;
        if chunks != e.chunks {
            return Ok(false);
        }
        set_mode_mtime(dest, e)?;
        Ok(true)
    }

    async fn write_file(&self, e: &FileEntry, dest: &Path) -> anyhow::Result<()> {
        // Creating a file can be slow (ext4 searches for a free inode, more so right after a
        // large delete, holding the directory's lock): on a blocking thread, never the
        // runtime's, and one creation at a time, because other creators would spin on that
        // lock in the kernel, burning the CPU the chunks need; waiting here sleeps instead.
        static CREATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let path = dest.to_path_buf();
        let file = tokio::task::spawn_blocking(move || {
            let _one = CREATING.lock().unwrap_or_else(|p| p.into_inner());
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("create {}", path.display()))
        })
        .await??;
        let file = Arc::new(file);
        let n = self
            .repo
            .get_file(&e.chunks, Arc::clone(&file), &dest.display().to_string())
            .await
            .with_context(|| format!("restore {}", dest.display()))?;
        if n != e.size {
            bail!(
                "{}: chunks add up to {n} bytes, the manifest says {}",
                e.path,
                e.size
            );
        }
        // Mode and mtime through the open descriptor. No fsync per file: the data's writeback
        // started as it was written, and one syncfs per filesystem at the end makes all of it
        // durable (a thousand small fsyncs are a thousand journal commits).
        let (mode, mtime) = (e.mode, e.mtime);
        let path = dest.to_path_buf();
        tokio::task::spawn_blocking(move || {
            file.set_permissions(std::fs::Permissions::from_mode((mode & 0o777) | 0o600))
                .with_context(|| format!("chmod {}", path.display()))?;
            if mtime > 0 {
                file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime as u64))
                    .with_context(|| format!("set mtime of {}", path.display()))?;
            }
            Ok(())
        })
        .await?
    }

    fn remove_extra(
        &self,
        wanted: &HashSet<PathBuf>,
        tablespaces: &BTreeMap<u32, PathBuf>,
    ) -> anyhow::Result<usize> {
        let mut removed = 0;
        let roots: Vec<&Path> = std::iter::once(self.pgdata)
            .chain(tablespaces.values().map(PathBuf::as_path))
            .collect();
        for root in roots {
            let mut stack = vec![root.to_path_buf()];
            while let Some(dir) = stack.pop() {
                let rd = match std::fs::read_dir(&dir) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
                };
                for ent in rd {
                    let ent = ent.with_context(|| format!("read {}", dir.display()))?;
                    let p = ent.path();
                    let ft = ent.file_type()?;
                    if wanted.contains(&p) {
                        if ft.is_dir() {
                            stack.push(p);
                        }
                        continue;
                    }
                    if ft.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    }
                    .with_context(|| format!("remove {}", p.display()))?;
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            tracing::info!(
                "restore {}: removed {removed} files not in the backup",
                self.manifest.id
            );
        }
        Ok(removed)
    }
}

fn set_mode_mtime(dest: &Path, e: &FileEntry) -> anyhow::Result<()> {
    std::fs::set_permissions(
        dest,
        std::fs::Permissions::from_mode((e.mode & 0o777) | 0o600),
    )
    .with_context(|| format!("chmod {}", dest.display()))?;
    if e.mtime > 0 {
        let f = std::fs::File::options()
            .write(true)
            .open(dest)
            .with_context(|| format!("open {}", dest.display()))?;
        f.set_modified(UNIX_EPOCH + Duration::from_secs(e.mtime as u64))
            .with_context(|| format!("set mtime of {}", dest.display()))?;
    }
    Ok(())
}

/// Make everything written below `roots` durable: one `syncfs` per filesystem they are on
/// (Linux reports writeback errors of the filesystem through it since 5.8), as PostgreSQL's
/// `recovery_init_sync_method = syncfs` does.
fn sync_filesystems(roots: &[PathBuf]) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let mut done = HashSet::new();
    for root in roots {
        let dir = std::fs::File::open(root).with_context(|| format!("open {}", root.display()))?;
        let dev = dir
            .metadata()
            .with_context(|| format!("stat {}", root.display()))?
            .dev();
        if !done.insert(dev) {
            continue;
        }
        // SAFETY: a plain syscall on a descriptor we own.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("sync the filesystem of {}", root.display()));
        }
    }
    Ok(())
}

pub fn sync_dir(d: &Path) -> anyhow::Result<()> {
    std::fs::File::open(d)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync directory {}", d.display()))
}

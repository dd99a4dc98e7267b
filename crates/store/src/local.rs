//! Chunks in a local-directory repository, written and read without `object_store`'s
//! per-call thread hops: a chunk is hashed, checked, compressed and written in one blocking
//! step, which matters when a backup stores thousands of them on a machine with two cores.
//!
//! The layout is exactly `object_store`'s `LocalFileSystem` (`<root>/chunks/ab/<sha256>`), so
//! either path reads what the other wrote. A new chunk is written to an unnamed file
//! (`O_TMPFILE`), flushed with `fdatasync`, and only then linked under its name — create-only
//! (`link` fails when the name exists), never visible half-written, and nothing to clean up
//! after a crash. Filesystems without `O_TMPFILE` get a `<name>#<n>` staging file, linked and
//! removed, as `object_store` does.
//!
//! The directory entries made by those links become durable when the directories are
//! fsynced: that is batched in [`LocalChunks::sync_dirs`], which `Repo::sync` runs before
//! every document write (a document is what makes chunks reachable).
//!
//! [`LocalBackend`] is this module's side of the store's backend seam (`chunks.rs`).

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use crate::chunk::{encode_chunk, ChunkId, Fingerprint};
use crate::chunks::{blocking, decode_checked, same_as_known, ChunkBackend, OutFile};
use crate::repo::{BackupChunk, ChunkRef, KnownChunk};
use crate::{Result, StoreError};

/// The chunks of a local-directory repository, each stored or fetched in one blocking step.
#[derive(Debug)]
pub(crate) struct LocalBackend {
    files: Arc<LocalChunks>,
    /// zstd level for new chunks.
    level: i32,
}

impl LocalBackend {
    pub fn new(root: PathBuf, level: i32) -> Self {
        LocalBackend {
            files: Arc::new(LocalChunks::new(root)),
            level,
        }
    }

    /// Directories waiting for [`ChunkBackend::sync`].
    #[cfg(test)]
    pub fn pending(&self) -> Vec<PathBuf> {
        self.files.pending()
    }
}

impl ChunkBackend for LocalBackend {
    fn put_new(&self, data: Bytes) -> BoxFuture<'_, Result<(ChunkRef, u64)>> {
        let (files, level) = (Arc::clone(&self.files), self.level);
        blocking(move || files.put(&data, level, false)).boxed()
    }

    fn put_backup(
        &self,
        data: Bytes,
        known: Option<KnownChunk>,
    ) -> BoxFuture<'_, Result<BackupChunk>> {
        let (files, level) = (Arc::clone(&self.files), self.level);
        blocking(move || {
            let fingerprint = Fingerprint::of(&data);
            if let Some(k) = same_as_known(known, &fingerprint, data.len() as u32) {
                if files.exists_or_io(&k.chunk.id)? {
                    return Ok(BackupChunk::recognised(k.chunk, fingerprint));
                }
            }
            let (chunk, stored) = files.put(&data, level, true)?;
            Ok(BackupChunk::hashed(chunk, fingerprint, stored))
        })
        .boxed()
    }

    fn get(&self, chunk: ChunkRef) -> BoxFuture<'_, Result<Bytes>> {
        let files = Arc::clone(&self.files);
        blocking(move || files.get(&chunk).map(Bytes::from)).boxed()
    }

    /// Read, check and write in one blocking step.
    fn get_into(&self, chunk: ChunkRef, out: Arc<OutFile>, off: u64) -> BoxFuture<'_, Result<()>> {
        let files = Arc::clone(&self.files);
        blocking(move || out.write_at(&files.get(&chunk)?, off)).boxed()
    }

    fn exists(&self, id: ChunkId) -> BoxFuture<'_, Result<bool>> {
        let files = Arc::clone(&self.files);
        blocking(move || files.exists_or_io(&id)).boxed()
    }

    fn sync(&self, concurrency: usize) -> BoxFuture<'_, Result<()>> {
        async move {
            self.files
                .sync_dirs(concurrency)
                .await
                .map_err(|(dir, source)| StoreError::Io {
                    key: dir.display().to_string(),
                    source,
                })
        }
        .boxed()
    }
}

#[derive(Debug)]
pub(crate) struct LocalChunks {
    root: PathBuf,
    /// Directories holding entries this handle linked or relied on, not fsynced yet.
    dirty: Mutex<HashSet<PathBuf>>,
    syncing: tokio::sync::Mutex<()>,
    /// Cleared the first time `O_TMPFILE` (or linking it through /proc) is not available.
    tmpfile: AtomicBool,
}

impl LocalChunks {
    pub fn new(root: PathBuf) -> Self {
        LocalChunks {
            root,
            dirty: Mutex::default(),
            syncing: tokio::sync::Mutex::default(),
            tmpfile: AtomicBool::new(true),
        }
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Whether the object exists. Its directory is remembered: a chunk another process has
    /// just linked may not be durable yet, and a document naming it must not be either.
    pub fn exists(&self, key: &str) -> io::Result<bool> {
        let path = self.path(key);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => {
                self.mark_dirty(&path);
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The object's bytes, `None` when absent.
    pub fn read(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(key)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Create the object with `body` unless it exists; true when this call created it. The
    /// bytes are durable on return; the name is once [`Self::sync_dirs`] has run.
    pub fn create(&self, key: &str, body: &[u8]) -> io::Result<bool> {
        let dest = self.path(key);
        let dir = dest.parent().expect("object paths have a parent");
        let created = if self.tmpfile.load(Ordering::Relaxed) {
            match self.create_tmpfile(dir, &dest, body) {
                Err(e) if tmpfile_unsupported(&e) => {
                    self.tmpfile.store(false, Ordering::Relaxed);
                    self.create_staged(dir, &dest, body)?
                }
                other => other?,
            }
        } else {
            self.create_staged(dir, &dest, body)?
        };
        self.mark_dirty(&dest);
        Ok(created)
    }

    fn create_tmpfile(&self, dir: &Path, dest: &Path, body: &[u8]) -> io::Result<bool> {
        let open = || {
            OpenOptions::new()
                .write(true)
                .mode(0o666)
                .custom_flags(libc::O_TMPFILE)
                .open(dir)
        };
        let mut file = match open() {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.make_dirs(dir)?;
                open()?
            }
            other => other?,
        };
        file.write_all(body)?;
        file.sync_data()?;
        let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .expect("no NUL in a /proc path");
        let to = CString::new(dest.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "NUL in path"))?;
        // SAFETY: both arguments are NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            ErrorKind::AlreadyExists => Ok(false),
            // /proc is not mounted: report it as "no O_TMPFILE" so the caller falls back.
            ErrorKind::NotFound if !Path::new("/proc/self/fd").exists() => {
                Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
            }
            _ => Err(e),
        }
    }

    fn create_staged(&self, dir: &Path, dest: &Path, body: &[u8]) -> io::Result<bool> {
        let mut n = 1u32;
        let (mut file, staging) = loop {
            let mut staging = dest.as_os_str().to_owned();
            staging.push(format!("#{n}"));
            let staging = PathBuf::from(staging);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o666)
                .open(&staging)
            {
                Ok(f) => break (f, staging),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => n += 1,
                Err(e) if e.kind() == ErrorKind::NotFound => self.make_dirs(dir)?,
                Err(e) => return Err(e),
            }
        };
        let result = file
            .write_all(body)
            .and_then(|_| file.sync_all())
            .and_then(|_| match std::fs::hard_link(&staging, dest) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            });
        let _ = std::fs::remove_file(&staging);
        result
    }

    /// Create `dir` and any missing parents below the root, each made durable in its parent.
    fn make_dirs(&self, dir: &Path) -> io::Result<()> {
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.exists() && d != self.root {
            missing.push(d.to_path_buf());
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        for d in missing.iter().rev() {
            match std::fs::create_dir(d) {
                Ok(()) => fsync_dir(d.parent().unwrap_or(d))?,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn mark_dirty(&self, path: &Path) {
        if let Some(dir) = path.parent() {
            let mut dirty = self.dirty.lock().expect("dirty set lock");
            if !dirty.contains(dir) {
                dirty.insert(dir.to_path_buf());
            }
        }
    }

    /// Fsync every directory this handle linked into (or found a chunk in) since the last
    /// call, `concurrency` at a time: each fsync may wait for a journal commit, and
    /// concurrent ones share it. One sync at a time, so a second caller waits for one under
    /// way instead of returning before the entries it depends on are durable. Directories
    /// that fail stay pending; the first failure is returned with its directory.
    pub async fn sync_dirs(&self, concurrency: usize) -> Result<(), (PathBuf, io::Error)> {
        let _one_at_a_time = self.syncing.lock().await;
        let dirs: Vec<PathBuf> = self.dirty.lock().expect("dirty set lock").drain().collect();
        let failed: Vec<(PathBuf, io::Error)> = futures::stream::iter(dirs)
            .map(|dir| async move {
                let d = dir.clone();
                tokio::task::spawn_blocking(move || fsync_dir(&d))
                    .await
                    .expect("fsync does not panic")
                    .err()
                    .map(|e| (dir, e))
            })
            .buffer_unordered(concurrency.max(1))
            .filter_map(std::future::ready)
            .collect()
            .await;
        let mut failed = failed.into_iter();
        let Some(first) = failed.next() else {
            return Ok(());
        };
        let mut dirty = self.dirty.lock().expect("dirty set lock");
        dirty.insert(first.0.clone());
        dirty.extend(failed.map(|(d, _)| d));
        Err(first)
    }

    /// Directories waiting for [`Self::sync_dirs`].
    #[cfg(test)]
    pub fn pending(&self) -> Vec<PathBuf> {
        self.dirty.lock().unwrap().iter().cloned().collect()
    }

    /// Whether chunk `id` exists, as a store error naming its key.
    fn exists_or_io(&self, id: &ChunkId) -> Result<bool> {
        let key = id.key();
        self.exists(&key)
            .map_err(|source| StoreError::Io { key, source })
    }

    /// Hash, look for (with `look_first`), compress and write one chunk.
    fn put(&self, data: &[u8], level: i32, look_first: bool) -> Result<(ChunkRef, u64)> {
        let chunk = ChunkRef {
            id: ChunkId::of(data),
            len: data.len() as u32,
        };
        let key = chunk.id.key();
        let io = |source| StoreError::Io {
            key: key.clone(),
            source,
        };
        if look_first && self.exists(&key).map_err(io)? {
            return Ok((chunk, 0));
        }
        let body = encode_chunk(data, level);
        let created = self.create(&key, &body).map_err(io)?;
        Ok((chunk, if created { body.len() as u64 } else { 0 }))
    }

    /// Read and check one chunk.
    fn get(&self, chunk: &ChunkRef) -> Result<Vec<u8>> {
        let key = chunk.id.key();
        match self.read(&key) {
            Ok(Some(body)) => decode_checked(chunk, &body),
            Ok(None) => Err(StoreError::NotFound { key }),
            Err(source) => Err(StoreError::Io { key, source }),
        }
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Errors meaning "this filesystem (or kernel) has no O_TMPFILE": fall back to staging names.
fn tmpfile_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn create_is_create_only_and_leaves_no_staging_files() {
        for tmpfile in [true, false] {
            let root = tempfile::tempdir().unwrap();
            let l = LocalChunks::new(root.path().to_path_buf());
            l.tmpfile.store(tmpfile, Ordering::Relaxed);
            assert!(!l.exists("chunks/ab/abc").unwrap());
            assert!(l.create("chunks/ab/abc", b"first").unwrap(), "{tmpfile}");
            assert!(!l.create("chunks/ab/abc", b"second").unwrap(), "{tmpfile}");
            assert_eq!(l.read("chunks/ab/abc").unwrap().unwrap(), b"first");
            assert!(l.exists("chunks/ab/abc").unwrap());
            assert_eq!(l.read("chunks/ab/nope").unwrap(), None);
            assert_eq!(names(&root.path().join("chunks/ab")), ["abc"], "{tmpfile}");
            assert_eq!(l.pending(), [root.path().join("chunks/ab")]);
        }
    }
}

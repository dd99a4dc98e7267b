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
//! Documents (config, refs, manifests) of a local repository are written the same way, not
//! through `object_store`, whose files take their mode from the umask: every directory here
//! is made 0700 and every object 0600, because chunks hold `server.key` and `pg_authid`.
//!
//! [`LocalBackend`] is this module's side of the store's backend seam (`backend/mod.rs`).

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use super::{blocking, same_as_known, ChunkBackend, ChunkRemoval, Codec, Listed, OutFile};
use crate::chunk::{ChunkId, Fingerprint};
use crate::repo::{BackupChunk, ChunkRef, KnownChunk};
use crate::{Result, StoreError};

/// The chunks of a local-directory repository, each stored or fetched in one blocking step.
#[derive(Debug)]
pub(crate) struct LocalBackend {
    files: Arc<LocalChunks>,
    codec: Codec,
}

impl LocalBackend {
    pub fn new(root: PathBuf, codec: Codec) -> Self {
        LocalBackend {
            files: Arc::new(LocalChunks::new(root)),
            codec,
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
        let (files, codec) = (Arc::clone(&self.files), self.codec.clone());
        blocking(move || files.put(&data, &codec, false)).boxed()
    }

    fn put_backup(
        &self,
        data: Bytes,
        known: Option<KnownChunk>,
    ) -> BoxFuture<'_, Result<BackupChunk>> {
        let (files, codec) = (Arc::clone(&self.files), self.codec.clone());
        blocking(move || {
            let fingerprint = Fingerprint::of(&data);
            if let Some(k) = same_as_known(known, &fingerprint, data.len() as u32) {
                // Refreshed, not just looked at: garbage collection keeps what was relied on.
                if files.touch_or_io(&k.chunk.id)? {
                    return Ok(BackupChunk::recognised(k.chunk, fingerprint));
                }
            }
            let (chunk, stored) = files.put(&data, &codec, true)?;
            Ok(BackupChunk::hashed(chunk, fingerprint, stored))
        })
        .boxed()
    }

    fn get(&self, chunk: ChunkRef) -> BoxFuture<'_, Result<Bytes>> {
        let (files, codec) = (Arc::clone(&self.files), self.codec.clone());
        blocking(move || files.get(&chunk, &codec).map(Bytes::from)).boxed()
    }

    /// Read, check and write in one blocking step.
    fn get_into(&self, chunk: ChunkRef, out: Arc<OutFile>, off: u64) -> BoxFuture<'_, Result<()>> {
        let (files, codec) = (Arc::clone(&self.files), self.codec.clone());
        blocking(move || out.write_at(&files.get(&chunk, &codec)?, off)).boxed()
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

    /// Written with the chunks' modes and durability rather than `object_store`'s (whose
    /// modes follow the umask); the new name is fsynced before this returns.
    fn put_doc(&self, key: String, body: Bytes, concurrency: usize) -> BoxFuture<'_, Result<bool>> {
        async move {
            let files = Arc::clone(&self.files);
            let created = blocking(move || files.put_doc(&key, &body)).await?;
            self.sync(concurrency).await?;
            Ok(created)
        }
        .boxed()
    }

    fn get_doc(&self, key: String) -> BoxFuture<'_, Result<Option<Bytes>>> {
        let files = Arc::clone(&self.files);
        blocking(move || Ok(files.get_doc(&key)?.map(Bytes::from))).boxed()
    }

    fn list_objects(&self, prefix: String) -> BoxFuture<'_, Result<Vec<Listed>>> {
        let files = Arc::clone(&self.files);
        blocking(move || files.list(&prefix)).boxed()
    }

    fn delete(&self, key: String) -> BoxFuture<'_, Result<bool>> {
        let files = Arc::clone(&self.files);
        blocking(move || {
            let path = files.path(&key);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    files.mark_dirty(&path);
                    Ok(true)
                }
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
                Err(e) => Err(files.error(&key, e)),
            }
        })
        .boxed()
    }

    fn remove_chunk_unless_fresh(
        &self,
        id: ChunkId,
        fresh_since: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'_, Result<ChunkRemoval>> {
        let files = Arc::clone(&self.files);
        blocking(move || {
            let key = id.key();
            files
                .remove_unless_fresh(&key, fresh_since.into())
                .map_err(|e| files.error(&key, e))
        })
        .boxed()
    }

    fn clear_staging(&self, key: String) -> BoxFuture<'_, Result<u64>> {
        let files = Arc::clone(&self.files);
        blocking(move || files.clear_staging(&key).map_err(|e| files.error(&key, e))).boxed()
    }

    /// A chunk relied on is refreshed, and the deletion re-checks that atomically: nothing
    /// to wait for.
    fn marker_settle(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// Every object of a local repository: its owner's alone, whatever the umask.
pub(crate) const OBJECT_MODE: u32 = 0o600;
/// Every directory of a local repository.
pub(crate) const DIR_MODE: u32 = 0o700;

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

    /// The object's bytes, `None` when absent; `Refused` when anything but a regular file of
    /// at most `max` bytes is in its place. A repository is untrusted: the object is opened
    /// without following a symbolic link (`O_NOFOLLOW`) and without waiting (`O_NONBLOCK`: a
    /// FIFO would otherwise block the open until some writer came), checked with `fstat` to
    /// be a regular file no longer than `max` before a byte is read, and read no further
    /// than `max` even if it grows meanwhile: a FIFO, a device (`/dev/zero`) or an oversized
    /// file is refused at once, never waited on or read until memory runs out.
    pub fn read(&self, key: &str, max: u64) -> io::Result<Result<Option<Vec<u8>>, String>> {
        use std::io::Read;
        let path = self.path(key);
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Ok(None)),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Ok(Err(
                    "a symbolic link in the object's place; not followed".into()
                ))
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Ok(Err(format!(
                "{} in the object's place, not a regular file; not read",
                file_kind(&meta.file_type())
            )));
        }
        if meta.len() > max {
            return Ok(Err(format!(
                "{} bytes stored, more than the {max} it can take; not read",
                meta.len()
            )));
        }
        let mut body = Vec::with_capacity(meta.len() as usize);
        file.take(max + 1).read_to_end(&mut body)?;
        if body.len() as u64 > max {
            return Ok(Err(format!(
                "grew past the {max} bytes it can take while being read"
            )));
        }
        Ok(Ok(Some(body)))
    }

    /// [`Self::read`] as a store error naming `key` (`Corrupt` for what is refused).
    fn read_or_error(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>> {
        match self.read(key, max) {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(detail)) => Err(StoreError::Corrupt {
                key: key.to_string(),
                detail,
            }),
            Err(source) => Err(self.error(key, source)),
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
                .mode(OBJECT_MODE)
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
                .mode(OBJECT_MODE)
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
            match std::fs::DirBuilder::new().mode(DIR_MODE).create(d) {
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

    /// Refresh the object's modification time to now, telling garbage collection that a
    /// writer relies on it; false when it is not there. Its directory joins the next sync
    /// batch, as for [`Self::exists`].
    pub fn touch(&self, key: &str) -> io::Result<bool> {
        let path = self.path(key);
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "NUL in path"))?;
        // SAFETY: a NUL-terminated path that outlives the call; NULL times means "now". A
        // symbolic link in the object's place is touched itself, never what it points to.
        let rc = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                std::ptr::null(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc == 0 {
            self.mark_dirty(&path);
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.kind() == ErrorKind::NotFound {
            Ok(false)
        } else {
            Err(e)
        }
    }

    /// [`Self::touch`] of chunk `id`, as a store error naming its key.
    fn touch_or_io(&self, id: &ChunkId) -> Result<bool> {
        let key = id.key();
        self.touch(&key).map_err(|source| self.error(&key, source))
    }

    /// Every file below `prefix`, with its size and modification time.
    fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let start = self.path(prefix.trim_end_matches('/'));
        let mut out = Vec::new();
        let mut dirs = vec![start];
        while let Some(dir) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(self.error(&dir.display().to_string(), e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.error(&dir.display().to_string(), e))?;
                let path = entry.path();
                let meta = match std::fs::symlink_metadata(&path) {
                    Ok(m) => m,
                    // Deleted between the listing and the look: not there any more.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(self.error(&path.display().to_string(), e)),
                };
                if meta.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let key = path
                    .strip_prefix(&self.root)
                    .expect("listed below the root")
                    .to_string_lossy()
                    .into_owned();
                let modified = meta.modified().map_err(|e| self.error(&key, e))?.into();
                out.push(Listed {
                    staging: key.contains('#'),
                    key,
                    size: meta.len(),
                    modified,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Set the chunk aside (rename, atomic), look at its modification time, then delete it
    /// or put it back. A writer's refresh either happened before the rename — the set-aside
    /// file shows it, and the chunk goes back — or after, and finds no chunk and writes it
    /// anew: no refresh is lost between the look and the deletion.
    fn remove_unless_fresh(
        &self,
        key: &str,
        fresh_since: std::time::SystemTime,
    ) -> io::Result<ChunkRemoval> {
        let path = self.path(key);
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!("#gc{}", std::process::id()));
        let aside = PathBuf::from(aside);
        match std::fs::rename(&path, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(ChunkRemoval::Absent),
            Err(e) => return Err(e),
        }
        let meta = std::fs::metadata(&aside)?;
        let dir = path.parent().expect("object paths have a parent");
        if meta.modified()? >= fresh_since {
            put_back(&aside, &path)?;
            fsync_dir(dir)?;
            return Ok(ChunkRemoval::Fresh);
        }
        std::fs::remove_file(&aside)?;
        self.mark_dirty(&path);
        Ok(ChunkRemoval::Deleted(meta.len()))
    }

    /// Remove a staging file; a chunk set aside by a killed garbage collection (`#gc<pid>`)
    /// goes back under its name first. Returns the bytes freed.
    fn clear_staging(&self, key: &str) -> io::Result<u64> {
        let path = self.path(key);
        let Some((name, suffix)) = key.rsplit_once('#') else {
            return Ok(0);
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        if suffix.starts_with("gc") {
            put_back(&path, &self.path(name))?;
            fsync_dir(path.parent().expect("object paths have a parent"))?;
            return Ok(0);
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                self.mark_dirty(&path);
                Ok(meta.len())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Whether chunk `id` exists, as a store error naming its key.
    fn exists_or_io(&self, id: &ChunkId) -> Result<bool> {
        let key = id.key();
        self.exists(&key).map_err(|source| self.error(&key, source))
    }

    /// `source`, met on object `key`, as a store error; "permission denied" says whose the
    /// object is and its mode, which is what the user needs to fix it.
    pub fn error(&self, key: &str, source: io::Error) -> StoreError {
        if source.kind() == ErrorKind::PermissionDenied {
            let path = self.path(key);
            StoreError::PermissionDenied {
                owner: owner_and_mode(&path),
                path: path.display().to_string(),
            }
        } else {
            StoreError::Io {
                key: key.to_string(),
                source,
            }
        }
    }

    /// Write a document create-only (as a chunk is written); true when this call created it.
    pub fn put_doc(&self, key: &str, body: &[u8]) -> Result<bool> {
        self.create(key, body)
            .map_err(|source| self.error(key, source))
    }

    /// A document's bytes, `None` when absent. Anything but a file in its place is an error.
    pub fn get_doc(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.read_or_error(key, crate::layout::max_doc_len(key))
    }

    /// Hash, look for (with `look_first`), compress and write one chunk.
    fn put(&self, data: &[u8], codec: &Codec, look_first: bool) -> Result<(ChunkRef, u64)> {
        let chunk = ChunkRef {
            id: codec.id(data),
            len: data.len() as u32,
        };
        let key = chunk.id.key();
        let io = |source| self.error(&key, source);
        // Relying on an existing chunk refreshes it, so that garbage collection keeps it.
        if look_first && self.touch(&key).map_err(io)? {
            return Ok((chunk, 0));
        }
        let body = codec.encode(&chunk.id, data);
        loop {
            if self.create(&key, &body).map_err(io)? {
                return Ok((chunk, body.len() as u64));
            }
            // It existed: refresh it, or, if garbage collection took it meanwhile, write it.
            if self.touch(&key).map_err(io)? {
                return Ok((chunk, 0));
            }
        }
    }

    /// Read and check one chunk.
    fn get(&self, chunk: &ChunkRef, codec: &Codec) -> Result<Vec<u8>> {
        let key = chunk.id.key();
        match self.read_or_error(&key, codec.max_stored_len(chunk))? {
            Some(body) => codec.decode(chunk, body),
            None => Err(StoreError::NotFound { key }),
        }
    }
}

/// What a non-regular file is, for errors.
fn file_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "a special file"
    }
}

/// "owner postgres, mode 0600" for `path`, or for the nearest directory above it that can be
/// looked at ("/repo: owner postgres, mode 0700") when `path` itself cannot.
pub(crate) fn owner_and_mode(path: &Path) -> String {
    for (i, p) in path.ancestors().enumerate() {
        if let Ok(m) = std::fs::metadata(p) {
            let who = user_name(m.uid()).unwrap_or_else(|| format!("uid {}", m.uid()));
            let it = format!("owner {who}, mode {:04o}", m.mode() & 0o7777);
            return if i == 0 {
                it
            } else {
                format!("{}: {it}", p.display())
            };
        }
    }
    "owner unknown".to_string()
}

/// The name of user `uid`, if the user database has one.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: passwd is plain data that getpwuid_r fills in; zeroed is a valid start.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and buf's length is passed with it.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside buf.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// Link `aside` back under `name` (create-only: a writer may have written it anew, with the
/// same bytes) and remove `aside`.
fn put_back(aside: &Path, name: &Path) -> io::Result<()> {
    match std::fs::hard_link(aside, name) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    std::fs::remove_file(aside)
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

    /// Objects 0600 and directories 0700 on both write paths, under a permissive umask.
    #[test]
    fn objects_and_directories_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0o002) };
        for tmpfile in [true, false] {
            let root = tempfile::tempdir().unwrap();
            let l = LocalChunks::new(root.path().to_path_buf());
            l.tmpfile.store(tmpfile, Ordering::Relaxed);
            assert!(l.create("chunks/ab/abc", b"body").unwrap());
            assert!(l.put_doc("wal/00000001/x.json", b"{}").unwrap());
            let mode = |p: &str| {
                std::fs::metadata(root.path().join(p))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777
            };
            for dir in ["chunks", "chunks/ab", "wal", "wal/00000001"] {
                assert_eq!(mode(dir), 0o700, "{dir} ({tmpfile})");
            }
            for obj in ["chunks/ab/abc", "wal/00000001/x.json"] {
                assert_eq!(mode(obj), 0o600, "{obj} ({tmpfile})");
            }
        }
        // SAFETY: as above.
        unsafe { libc::umask(old) };
    }

    #[test]
    fn permission_errors_name_owner_and_mode() {
        let root = tempfile::tempdir().unwrap();
        let l = LocalChunks::new(root.path().to_path_buf());
        let e = l.error("chunks/ab/abc", io::Error::from_raw_os_error(libc::EACCES));
        let text = e.to_string();
        assert!(
            text.contains("permission denied")
                && text.contains("owner ")
                && text.contains("mode 0")
                && text.contains(&root.path().display().to_string()),
            "{text}"
        );
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
            assert_eq!(
                l.read("chunks/ab/abc", 5).unwrap().unwrap().unwrap(),
                b"first"
            );
            assert!(
                l.read("chunks/ab/abc", 4).unwrap().is_err(),
                "above its bound"
            );
            assert!(l.exists("chunks/ab/abc").unwrap());
            assert_eq!(l.read("chunks/ab/nope", 5).unwrap(), Ok(None));
            assert_eq!(names(&root.path().join("chunks/ab")), ["abc"], "{tmpfile}");
            assert_eq!(l.pending(), [root.path().join("chunks/ab")]);
        }
    }
}

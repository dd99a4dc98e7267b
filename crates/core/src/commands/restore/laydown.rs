//! Laying a backup down as a data directory: files fetched in parallel (chunks re-hashed on
//! read), PostgreSQL's modes, fsynced; tablespaces at their original or remapped places;
//! with `delta`, files that already match are kept and extra files removed.
//!
//! Nothing here follows a link below the data directory or a tablespace directory: every
//! directory is opened with `O_NOFOLLOW` from its parent's descriptor (one descriptor per
//! directory, kept for the whole lay-down) and every file is created with `openat` and
//! `O_NOFOLLOW` in it. `global/pg_control` is written last, by [`LayDown::finish`], so that a
//! lay-down that fails half-way leaves a directory PostgreSQL refuses to start.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use pitr_store::Repo;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use serde::Serialize;

use super::plan::PlannedTablespace;
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
    /// Symbolic links of the backup that were not made (`path -> target`): recreate them by
    /// hand where they are needed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub links_not_restored: Vec<String>,
}

pub struct LayDown<'a> {
    pub repo: &'a Repo,
    pub manifest: &'a BackupManifest,
    pub pgdata: &'a Path,
    /// Tablespace OID → directory, for remapped tablespaces.
    pub remap: &'a HashMap<u32, PathBuf>,
    /// `--tablespaces-as-recorded`: a tablespace not in `remap` goes to the location the
    /// backup recorded. Without it such a tablespace is refused: a location from the
    /// repository is a proposal, never a place pitr writes to on its own.
    pub as_recorded: bool,
    pub delta: bool,
    pub reporter: &'a dyn Reporter,
}

/// The file the lay-down writes last, once everything else is durable.
pub struct LastFile<'a> {
    entry: Option<&'a FileEntry>,
    dir: Arc<OwnedFd>,
    dir_path: PathBuf,
}

const PG_CONTROL: &str = "global/pg_control";

fn is_empty_dir(p: &Path) -> anyhow::Result<bool> {
    match std::fs::read_dir(p) {
        Ok(mut d) => Ok(d.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("read directory {}", p.display())),
    }
}

/// Why the non-empty directory `dir` cannot be taken for tablespace `oid` of `manifest`, which
/// `--delta` would clean; `None` when it is that tablespace as far as its contents tell: it
/// holds a catalog version directory (`PG_<major>_<catversion>`) the backup has for the
/// tablespace, and every entry in each such directory is one the backup names there (the
/// tablespace's database OIDs). Another cluster's tablespace at the path, even of the same
/// major version, has databases this backup does not: refused, never cleaned.
fn foreign_tablespace(
    dir: &Path,
    manifest: &BackupManifest,
    oid: u32,
) -> anyhow::Result<Option<String>> {
    // The backup's catalog version directories of this tablespace and the names in each.
    let mut layout: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
    for e in manifest.all_files().filter(|e| e.tablespace == Some(oid)) {
        let mut parts = e.path.components();
        if let Some(top) = parts.next() {
            let names = layout.entry(top).or_default();
            if let Some(name) = parts.next() {
                names.insert(name);
            }
        }
    }
    let mut present = false;
    for (top, names) in &layout {
        let sub = dir.join(top);
        let rd = match std::fs::read_dir(&sub) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("read directory {}", sub.display())),
        };
        present = true;
        for ent in rd {
            let ent = ent.with_context(|| format!("read directory {}", sub.display()))?;
            let name = ent.file_name();
            if !names.contains(name.to_string_lossy().as_ref()) {
                return Ok(Some(format!(
                    "its {top} holds {}, which backup {} does not have in tablespace {oid} \
                     (another cluster's database?)",
                    name.to_string_lossy(),
                    manifest.id
                )));
            }
        }
    }
    if present {
        return Ok(None);
    }
    Ok(Some(format!(
        "it holds none of backup {}'s catalog version directories for tablespace {oid} ({})",
        manifest.id,
        if layout.is_empty() {
            "the backup has none".to_string()
        } else {
            layout.keys().copied().collect::<Vec<_>>().join(", ")
        }
    )))
}

/// `p` with `.` and `..` worked out and its longest existing ancestor's links resolved: two
/// such paths overlap exactly when one starts with the other.
fn resolved(p: &Path) -> PathBuf {
    let mut lexical = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            c => lexical.push(c),
        }
    }
    let mut rest = Vec::new();
    let mut head = lexical.as_path();
    loop {
        if let Ok(real) = head.canonicalize() {
            return rest.iter().rev().fold(real, |acc, c| acc.join(c));
        }
        match (head.parent(), head.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                head = parent;
            }
            _ => return lexical,
        }
    }
}

/// PostgreSQL's modes: 0700 directories and 0600 files, or 0750 and 0640 with group access;
/// never wider than the backup's, never setuid, setgid or sticky.
fn dir_mode(mode: u32, group: bool) -> Mode {
    let allowed = if group { 0o750 } else { 0o700 };
    Mode::from_raw_mode((mode & allowed) | 0o700)
}

fn file_mode(mode: u32, group: bool) -> Mode {
    let allowed = if group { 0o640 } else { 0o600 };
    Mode::from_raw_mode((mode & allowed) | 0o600)
}

fn cname(name: &str) -> CString {
    CString::new(name).expect("validated paths hold no NUL")
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The user's own directory (the data directory or a tablespace directory): created if absent;
/// links in its path are the user's choice and followed.
fn open_root(dir: &Path) -> anyhow::Result<OwnedFd> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create directory {}", dir.display()))?;
    rustix::fs::open(dir, DIR_FLAGS.difference(OFlags::NOFOLLOW), Mode::empty())
        .with_context(|| format!("open directory {}", dir.display()))
}

/// Remove `name` in `parent`, a whole tree if it is a directory, following no link.
fn remove_at(parent: BorrowedFd<'_>, name: &CStr) -> std::io::Result<()> {
    let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let fd = rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty())?;
        let mut names = Vec::new();
        for ent in rustix::fs::Dir::read_from(&fd)? {
            let ent = ent?;
            let n = ent.file_name();
            if n != c"." && n != c".." {
                names.push(n.to_owned());
            }
        }
        for n in names {
            remove_at(fd.as_fd(), &n)?;
        }
        rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
    } else {
        rustix::fs::unlinkat(parent, name, AtFlags::empty())?;
    }
    Ok(())
}

/// The directory `name` in `parent`, created with `mode` if absent. Something else in its
/// place (a link, a file) is removed first when `replace`, else an error: never followed.
fn open_or_make_dir(
    parent: BorrowedFd<'_>,
    name: &CStr,
    mode: Mode,
    replace: bool,
) -> std::io::Result<OwnedFd> {
    match rustix::fs::mkdirat(parent, name, mode) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    match rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::LOOP | Errno::NOTDIR) if replace => {
            remove_at(parent, name)?;
            rustix::fs::mkdirat(parent, name, mode)?;
            Ok(rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty())?)
        }
        Err(Errno::LOOP | Errno::NOTDIR) => Err(std::io::Error::other(
            "a symbolic link or a file is in its place (not followed)",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Create (or truncate) file `name` in `dir`, following no link; with `replace`, whatever
/// else is in its place is removed first.
fn create_file_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: Mode,
    replace: bool,
) -> std::io::Result<File> {
    if replace {
        if let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                remove_at(dir, name)?;
            }
        }
    }
    let flags =
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(dir, name, flags, mode) {
        Ok(fd) => Ok(File::from(fd)),
        Err(Errno::LOOP) => Err(std::io::Error::other(
            "a symbolic link is in its place (not followed)",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Write `data` as `name` in `dir` durably and without following a link planted in its place:
/// a new temporary file, fsync, rename over the name (which replaces a link, never follows
/// it), fsync of the directory.
pub(super) fn write_durably_at(
    dir: &OwnedFd,
    dir_path: &Path,
    name: &str,
    data: &[u8],
    mode: u32,
) -> anyhow::Result<()> {
    use std::io::Write;
    let path = dir_path.join(name);
    let tmp = cname(&format!("{name}.pitr-tmp"));
    match rustix::fs::unlinkat(dir, &tmp, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => {
            return Err(e).with_context(|| format!("remove stale {}.pitr-tmp", path.display()))
        }
    }
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut f = File::from(
        rustix::fs::openat(dir, &tmp, flags, Mode::from_raw_mode(mode))
            .with_context(|| format!("create {}.pitr-tmp", path.display()))?,
    );
    rustix::fs::fchmod(&f, Mode::from_raw_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("write {}", path.display()))?;
    rustix::fs::renameat(dir, &tmp, dir, name)
        .with_context(|| format!("rename into {}", path.display()))?;
    rustix::fs::fsync(dir).with_context(|| format!("fsync directory {}", dir_path.display()))
}

/// The content of file `name` in `dir`, `None` if absent; a link in its place is an error.
pub(super) fn read_at(
    dir: &OwnedFd,
    dir_path: &Path,
    name: &str,
) -> anyhow::Result<Option<String>> {
    use std::io::Read;
    let path = dir_path.join(name);
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP) => bail!("{} is a symbolic link: refused", path.display()),
        Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
    };
    let mut f = File::from(fd);
    let meta = f
        .metadata()
        .with_context(|| format!("stat {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let mut s = String::new();
    f.read_to_string(&mut s)
        .with_context(|| format!("read {}", path.display()))?;
    Ok(Some(s))
}

/// A directory the lay-down writes below (the data directory or a tablespace directory) and
/// every directory opened below it so far, by path relative to it ("" is the root).
struct Root {
    path: PathBuf,
    dirs: HashMap<String, Arc<OwnedFd>>,
}

impl Root {
    fn open(path: &Path) -> anyhow::Result<Root> {
        let fd = open_root(path)?;
        Ok(Root {
            path: path.to_path_buf(),
            dirs: HashMap::from([(String::new(), Arc::new(fd))]),
        })
    }

    fn fd(&self) -> &Arc<OwnedFd> {
        &self.dirs[""]
    }

    /// Directory `rel` below the root, made (with `mode`, and its missing parents too) if
    /// absent.
    fn dir(&mut self, rel: &str, mode: Mode, replace: bool) -> anyhow::Result<Arc<OwnedFd>> {
        if let Some(fd) = self.dirs.get(rel) {
            return Ok(Arc::clone(fd));
        }
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let parent = self.dir(parent, mode, replace)?;
        let fd = open_or_make_dir(parent.as_fd(), &cname(name), mode, replace)
            .with_context(|| format!("create directory {}", self.path.join(rel).display()))?;
        let fd = Arc::new(fd);
        self.dirs.insert(rel.to_string(), Arc::clone(&fd));
        Ok(fd)
    }
}

/// One file to write: the entry, its directory and name there, the path to show.
struct Job<'a> {
    entry: &'a FileEntry,
    dir: Arc<OwnedFd>,
    name: CString,
    path: PathBuf,
}

impl LayDown<'_> {
    fn group_access(&self) -> bool {
        self.manifest.group_access()
    }

    /// Where each tablespace goes: the `--tablespace-map` directory, else (only with
    /// `--tablespaces-as-recorded`) the backup's location if it is a plain absolute path. A
    /// tablespace placed by neither is refused, naming its OID and recorded location. None
    /// may be inside or above the data directory or another tablespace's directory.
    pub fn tablespace_dirs(&self) -> anyhow::Result<BTreeMap<u32, PathBuf>> {
        let mut out = BTreeMap::new();
        let mut unplaced = Vec::new();
        for t in &self.manifest.tablespaces {
            let dir = match self.remap.get(&t.oid) {
                Some(d) => d.clone(),
                None if self.as_recorded => t.location_path()?,
                None => {
                    unplaced.push(t);
                    continue;
                }
            };
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
        if !unplaced.is_empty() {
            bail!(
                "backup {} has {} tablespace{} that no option places: {}; a location recorded \
                 in the repository is never used on its own. Give each an empty or new \
                 directory with --tablespace-map OID=DIR (e.g. {}), or pass \
                 --tablespaces-as-recorded to lay them down at the recorded locations shown",
                self.manifest.id,
                unplaced.len(),
                if unplaced.len() == 1 { "" } else { "s" },
                unplaced
                    .iter()
                    .map(|t| format!("tablespace {} (recorded location {:?})", t.oid, t.location))
                    .collect::<Vec<_>>()
                    .join(", "),
                unplaced
                    .iter()
                    .map(|t| format!("--tablespace-map {}=DIR", t.oid))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        let source = |oid: &u32| {
            if self.remap.contains_key(oid) {
                "--tablespace-map"
            } else {
                "the backup's location, --tablespaces-as-recorded"
            }
        };
        let data = resolved(self.pgdata);
        let resolved_dirs: Vec<(u32, &PathBuf, PathBuf)> =
            out.iter().map(|(o, d)| (*o, d, resolved(d))).collect();
        for (oid, dir, r) in &resolved_dirs {
            if r.starts_with(&data) {
                bail!(
                    "tablespace {oid} directory {} ({}) is inside the data directory {}: refused; remap it with --tablespace-map {oid}=DIR",
                    dir.display(),
                    source(oid),
                    self.pgdata.display()
                );
            }
            if data.starts_with(r) {
                bail!(
                    "tablespace {oid} directory {} ({}) contains the data directory {}: refused; remap it with --tablespace-map {oid}=DIR",
                    dir.display(),
                    source(oid),
                    self.pgdata.display()
                );
            }
            for (other, other_dir, o) in &resolved_dirs {
                if other != oid && r.starts_with(o) {
                    bail!(
                        "tablespace {oid} directory {} ({}) is inside or the same as tablespace {other}'s {}: refused; remap one with --tablespace-map",
                        dir.display(),
                        source(oid),
                        other_dir.display()
                    );
                }
            }
        }
        Ok(out)
    }

    /// The tablespaces as the plan shows them.
    pub fn planned_tablespaces(&self) -> anyhow::Result<Vec<PlannedTablespace>> {
        let dirs = self.tablespace_dirs()?;
        Ok(self
            .manifest
            .tablespaces
            .iter()
            .map(|t| PlannedTablespace {
                oid: t.oid,
                location: t.location.clone(),
                directory: dirs[&t.oid].clone(),
                remapped: self.remap.contains_key(&t.oid),
            })
            .collect())
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
            // --delta removes what the backup does not have: only in a tablespace directory
            // that is empty, or proves to be this backup's tablespace.
            for (oid, dir) in &tablespaces {
                if is_empty_dir(dir)? {
                    continue;
                }
                if let Some(why) = foreign_tablespace(dir, self.manifest, *oid)? {
                    bail!(
                        "--delta: tablespace {oid} directory {} is not empty and not this backup's tablespace: {why}; refused to change it. Give the tablespace an empty or new directory with --tablespace-map {oid}=DIR",
                        dir.display()
                    );
                }
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

    /// Lay everything down but `global/pg_control` and make it durable; [`Self::finish`]
    /// writes that one once the caller has written its own files.
    pub async fn run(&self) -> anyhow::Result<(LayDownStats, LastFile<'_>)> {
        let started = Instant::now();
        self.check_targets()?;
        self.manifest.check_restorable()?;
        let tablespaces = self.tablespace_dirs()?;
        let group = self.group_access();
        let base_dir_mode = dir_mode(0o777, group);

        raise_open_file_limit();
        let mut roots = self.open_roots(&tablespaces, base_dir_mode)?;

        // A reused directory stops looking like a cluster before anything in it changes.
        let data = roots.get_mut(&None).expect("data directory root");
        self.remove_pg_control(data, base_dir_mode)?;

        let all: Vec<&FileEntry> = self.manifest.all_files().collect();
        let (mut wanted, jobs, last) =
            self.make_dirs_and_jobs(&all, &mut roots, base_dir_mode, group)?;
        // PostgreSQL recreates pg_tblspc links from tablespace_map at startup; making them now
        // too lets pg_verifybackup find the tablespace files before the first start.
        let data = roots.get_mut(&None).expect("data directory root");
        let links = self.link_tablespaces(data, &tablespaces, base_dir_mode)?;
        for l in &links {
            wanted.insert((None, l.as_str()));
        }
        let removed = if self.delta {
            self.remove_extra(&roots, &wanted)?
        } else {
            0
        };

        let total: u64 = all
            .iter()
            .filter(|e| e.kind == FileKind::File)
            .map(|e| e.size)
            .sum();
        let nfiles = jobs.len() + usize::from(last.is_some());
        let (fetched, reused, files_reused) = self.write_files(jobs, total).await?;
        let root_fds: Vec<(PathBuf, Arc<OwnedFd>)> = roots
            .values()
            .map(|r| (r.path.clone(), Arc::clone(r.fd())))
            .collect();
        tokio::task::spawn_blocking(move || sync_filesystems(&root_fds)).await??;
        let data = &roots[&None];
        let last = LastFile {
            dir: match &last {
                Some(j) => Arc::clone(&j.dir),
                None => Arc::clone(data.fd()),
            },
            dir_path: last
                .as_ref()
                .and_then(|j| j.path.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| data.path.clone()),
            entry: last.map(|j| j.entry),
        };
        Ok((
            LayDownStats {
                files: nfiles,
                bytes_fetched: fetched,
                bytes_reused: reused,
                files_reused,
                removed,
                seconds: started.elapsed().as_secs_f64(),
                links_not_restored: self
                    .manifest
                    .links_not_restored()
                    .into_iter()
                    .map(|(path, target)| format!("{path} -> {target}"))
                    .collect(),
            },
            last,
        ))
    }

    /// The roots files are laid down under: the data directory (made `base_dir_mode`) and
    /// each tablespace's directory.
    fn open_roots(
        &self,
        tablespaces: &BTreeMap<u32, PathBuf>,
        base_dir_mode: Mode,
    ) -> anyhow::Result<HashMap<Option<u32>, Root>> {
        let mut roots: HashMap<Option<u32>, Root> = HashMap::new();
        let data = Root::open(self.pgdata)?;
        rustix::fs::fchmod(data.fd(), base_dir_mode)
            .with_context(|| format!("chmod {}", self.pgdata.display()))?;
        roots.insert(None, data);
        for (oid, dir) in tablespaces {
            roots.insert(Some(*oid), Root::open(dir)?);
        }
        Ok(roots)
    }

    /// Remove `global/pg_control`, durably.
    fn remove_pg_control(&self, data: &mut Root, base_dir_mode: Mode) -> anyhow::Result<()> {
        let global = data.dir("global", base_dir_mode, self.delta)?;
        match rustix::fs::unlinkat(&*global, c"pg_control", AtFlags::empty()) {
            Ok(()) => rustix::fs::fsync(&*global).with_context(|| {
                format!("fsync directory {}", data.path.join("global").display())
            })?,
            Err(Errno::NOENT) => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("remove {}", self.pgdata.join(PG_CONTROL).display()))
            }
        }
        Ok(())
    }

    /// Make the backup's directories, and a job for each of its files: the files wanted, the
    /// jobs, and pg_control's job apart (it is written last).
    #[allow(clippy::type_complexity)]
    fn make_dirs_and_jobs<'m>(
        &self,
        all: &[&'m FileEntry],
        roots: &mut HashMap<Option<u32>, Root>,
        base_dir_mode: Mode,
        group: bool,
    ) -> anyhow::Result<(
        HashSet<(Option<u32>, &'m str)>,
        Vec<Job<'m>>,
        Option<Job<'m>>,
    )> {
        let mut wanted: HashSet<(Option<u32>, &str)> = HashSet::new();
        let mut jobs = Vec::new();
        let mut last = None;
        for e in all {
            let root = roots
                .get_mut(&e.tablespace)
                .with_context(|| format!("file {} names an unknown tablespace", e.path))?;
            match e.kind {
                FileKind::Directory => {
                    let fd = root.dir(e.path.as_str(), base_dir_mode, self.delta)?;
                    rustix::fs::fchmod(&*fd, dir_mode(e.mode, group))
                        .with_context(|| format!("chmod {}", root.path.join(&e.path).display()))?;
                }
                FileKind::File => {
                    wanted.insert((e.tablespace, e.path.as_str()));
                    let (parent, name) = e
                        .path
                        .as_str()
                        .rsplit_once('/')
                        .unwrap_or(("", e.path.as_str()));
                    let dir = root.dir(parent, base_dir_mode, self.delta)?;
                    let job = Job {
                        entry: e,
                        dir,
                        name: cname(name),
                        path: root.path.join(&e.path),
                    };
                    if e.tablespace.is_none() && e.path.as_str() == PG_CONTROL {
                        last = Some(job);
                    } else {
                        jobs.push(job);
                    }
                }
                // The backup's own pg_tblspc/<oid> links: made below, to the planned directory.
                FileKind::Symlink if self.manifest.is_tablespace_link(e) => {}
                // Any other link is never made from a stored target: named after the lay-down.
                FileKind::Symlink => {}
            }
        }
        Ok((wanted, jobs, last))
    }

    /// The `pg_tblspc/<oid>` links to the planned directories: their paths in the data
    /// directory.
    fn link_tablespaces(
        &self,
        data: &mut Root,
        tablespaces: &BTreeMap<u32, PathBuf>,
        base_dir_mode: Mode,
    ) -> anyhow::Result<Vec<String>> {
        let mut links = Vec::new();
        if !tablespaces.is_empty() {
            let tblspc = data.dir("pg_tblspc", base_dir_mode, self.delta)?;
            for (oid, dir) in tablespaces {
                let name = cname(&oid.to_string());
                let link = data.path.join("pg_tblspc").join(oid.to_string());
                match remove_at(tblspc.as_fd(), &name) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("remove old {}", link.display()))
                    }
                }
                rustix::fs::symlinkat(dir.as_path(), &*tblspc, &name)
                    .with_context(|| format!("symlink {} -> {}", link.display(), dir.display()))?;
                links.push(format!("pg_tblspc/{oid}"));
            }
        }
        Ok(links)
    }

    /// Write every job's file (with `delta`, keep one that already matches), 16 at a time:
    /// bytes fetched, bytes reused, files reused.
    async fn write_files(
        &self,
        jobs: Vec<Job<'_>>,
        total: u64,
    ) -> anyhow::Result<(u64, u64, usize)> {
        let fetched = AtomicU64::new(0);
        let reused = AtomicU64::new(0);
        let files_reused = AtomicUsize::new(0);
        let progress = self
            .reporter
            .start(format!("restore {}", self.manifest.id), total);
        futures::stream::iter(jobs)
            .map(|job| {
                let fetched = &fetched;
                let reused = &reused;
                let files_reused = &files_reused;
                let progress = &progress;
                async move {
                    let e = job.entry;
                    if self.delta && self.matches(&job).await? {
                        reused.fetch_add(e.size, Ordering::Relaxed);
                        files_reused.fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.write_file(&job).await?;
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
        Ok((
            fetched.into_inner(),
            reused.into_inner(),
            files_reused.into_inner(),
        ))
    }

    /// Write `global/pg_control`, the file without which PostgreSQL does not start, and make
    /// it durable: the last step of a restore.
    pub async fn finish(&self, last: LastFile<'_>, stats: &mut LayDownStats) -> anyhow::Result<()> {
        let Some(entry) = last.entry else {
            return Ok(());
        };
        let job = Job {
            entry,
            dir: Arc::clone(&last.dir),
            name: cname("pg_control"),
            path: last.dir_path.join("pg_control"),
        };
        let file = self.write_file(&job).await?;
        let path = job.path.clone();
        tokio::task::spawn_blocking(move || {
            file.sync_all()
                .with_context(|| format!("fsync {}", path.display()))?;
            rustix::fs::fsync(&*last.dir)
                .with_context(|| format!("fsync directory {}", last.dir_path.display()))
        })
        .await??;
        stats.bytes_fetched += entry.size;
        Ok(())
    }

    async fn matches(&self, job: &Job<'_>) -> anyhow::Result<bool> {
        let e = job.entry;
        let Ok(st) = rustix::fs::statat(&*job.dir, &job.name, AtFlags::SYMLINK_NOFOLLOW) else {
            return Ok(false);
        };
        let cut_len: u64 = e.chunks.iter().map(|c| u64::from(c.len)).sum();
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
            || st.st_size as u64 != e.size
            || cut_len != e.size
        {
            return Ok(false);
        }
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let file = File::from(
            rustix::fs::openat(&*job.dir, &job.name, flags, Mode::empty())
                .with_context(|| format!("open {}", job.path.display()))?,
        );
        let file = Arc::new(file);
        let chunks = self
            .repo
            .hash_file(
                Arc::clone(&file),
                &e.chunks,
                &job.path.display().to_string(),
            )
            .await?;
        if chunks != e.chunks {
            return Ok(false);
        }
        set_mode_mtime(&file, e, self.group_access(), &job.path)?;
        Ok(true)
    }

    async fn write_file(&self, job: &Job<'_>) -> anyhow::Result<Arc<File>> {
        // Creating a file can be slow (ext4 searches for a free inode, more so right after a
        // large delete, holding the directory's lock): on a blocking thread, never the
        // runtime's, and one creation at a time, because other creators would spin on that
        // lock in the kernel, burning the CPU the chunks need; waiting here sleeps instead.
        static CREATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let e = job.entry;
        let group = self.group_access();
        let (dir, name, path) = (Arc::clone(&job.dir), job.name.clone(), job.path.clone());
        let replace = self.delta;
        let file = tokio::task::spawn_blocking(move || {
            let _one = CREATING.lock().unwrap_or_else(|p| p.into_inner());
            create_file_at(dir.as_fd(), &name, file_mode(0o600, group), replace)
                .with_context(|| format!("create {}", path.display()))
        })
        .await??;
        let file = Arc::new(file);
        let n = self
            .repo
            .get_file(
                &e.chunks,
                Arc::clone(&file),
                &job.path.display().to_string(),
            )
            .await
            .with_context(|| format!("restore {}", job.path.display()))?;
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
        let (f, entry, path) = (Arc::clone(&file), e.clone(), job.path.clone());
        tokio::task::spawn_blocking(move || set_mode_mtime(&f, &entry, group, &path)).await??;
        Ok(file)
    }

    /// With `delta`: remove what the backup does not have. In the data directory, anything;
    /// in a tablespace directory only below the backup's own top-level entries
    /// (`PG_<major>_<catversion>`), never a sibling such as another version's layout.
    fn remove_extra(
        &self,
        roots: &HashMap<Option<u32>, Root>,
        wanted: &HashSet<(Option<u32>, &str)>,
    ) -> anyhow::Result<usize> {
        let mut removed = 0;
        for (ts, root) in roots {
            let mut stack = vec![String::new()];
            while let Some(rel) = stack.pop() {
                let fd = &root.dirs[&rel];
                let shown = root.path.join(&rel);
                let mut names = Vec::new();
                for ent in rustix::fs::Dir::read_from(&**fd)
                    .with_context(|| format!("read {}", shown.display()))?
                {
                    let ent = ent.with_context(|| format!("read {}", shown.display()))?;
                    let n = ent.file_name();
                    if n != c"." && n != c".." {
                        names.push(n.to_owned());
                    }
                }
                for n in names {
                    let child = match n.to_str() {
                        Ok(s) if rel.is_empty() => s.to_string(),
                        Ok(s) => format!("{rel}/{s}"),
                        // Not a name any backup entry has.
                        Err(_) => String::new(),
                    };
                    if !child.is_empty() && root.dirs.contains_key(&child) {
                        stack.push(child);
                        continue;
                    }
                    if !child.is_empty() && wanted.contains(&(*ts, child.as_str())) {
                        continue;
                    }
                    if ts.is_some() && rel.is_empty() {
                        tracing::info!(
                            "restore {}: left {} alone (not this backup's)",
                            self.manifest.id,
                            root.path.join(n.to_string_lossy().as_ref()).display()
                        );
                        continue;
                    }
                    remove_at(fd.as_fd(), &n).with_context(|| {
                        format!(
                            "remove {}",
                            shown.join(n.to_string_lossy().as_ref()).display()
                        )
                    })?;
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

fn set_mode_mtime(file: &File, e: &FileEntry, group: bool, path: &Path) -> anyhow::Result<()> {
    rustix::fs::fchmod(file, file_mode(e.mode, group))
        .with_context(|| format!("chmod {}", path.display()))?;
    if e.mtime > 0 {
        file.set_modified(UNIX_EPOCH + Duration::from_secs(e.mtime as u64))
            .with_context(|| format!("set mtime of {}", path.display()))?;
    }
    Ok(())
}

/// Make everything written below `roots` durable: one `syncfs` per filesystem they are on
/// (Linux reports writeback errors of the filesystem through it since 5.8), as PostgreSQL's
/// `recovery_init_sync_method = syncfs` does.
fn sync_filesystems(roots: &[(PathBuf, Arc<OwnedFd>)]) -> anyhow::Result<()> {
    let mut done = HashSet::new();
    for (path, fd) in roots {
        let st = rustix::fs::fstat(&**fd).with_context(|| format!("stat {}", path.display()))?;
        if !done.insert(st.st_dev) {
            continue;
        }
        rustix::fs::syncfs(&**fd)
            .with_context(|| format!("sync the filesystem of {}", path.display()))?;
    }
    Ok(())
}

/// The lay-down keeps a descriptor open per directory (a cluster has one per database):
/// allow as many open files as the hard limit does, as PostgreSQL's own tools do.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum || (limit.current.is_some() && limit.maximum.is_none()) {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!("raise the open-file limit: {e}");
        }
    }
}

/// Open the data directory (the user's path) for [`write_durably_at`] and [`read_at`].
pub(super) fn open_dir(dir: &Path) -> anyhow::Result<OwnedFd> {
    rustix::fs::open(dir, DIR_FLAGS.difference(OFlags::NOFOLLOW), Mode::empty())
        .with_context(|| format!("open directory {}", dir.display()))
}

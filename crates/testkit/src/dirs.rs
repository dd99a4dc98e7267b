//! Temporary directories short enough for Unix socket paths (`/tmp/pitrXXXXXX`, well under the
//! 107-byte limit), owned by the PostgreSQL user, kept for a post-mortem when `PITR_TEST_KEEP`
//! is set; and small helpers for reading trees and files back.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::user::{chmod, give_to_pg, mkdir_for_pg};

/// A new `/tmp/pitrXXXXXX` (mode 0755, owned by the PostgreSQL user), removed on drop unless
/// `PITR_TEST_KEEP` is set; `what` names it in the "keeping" note.
pub fn temp_dir(what: &str) -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new()
        .prefix("pitr")
        .tempdir_in("/tmp")
        .expect("create a temp dir under /tmp");
    chmod(dir.path(), 0o755);
    give_to_pg(dir.path());
    if std::env::var_os("PITR_TEST_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!("keeping {what} {}", dir.path().display());
    }
    dir
}

/// A test's scratch directory (see [`temp_dir`]).
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl Default for TestDir {
    fn default() -> Self {
        TestDir::new()
    }
}

impl TestDir {
    pub fn new() -> TestDir {
        TestDir {
            dir: temp_dir("test dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `<dir>/<name>`, created and owned by the PostgreSQL user.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let path = self.path().join(name);
        mkdir_for_pg(&path);
        path
    }

    /// The program `src` hard-linked (or copied) into `<dir>/bin/`, so that the PostgreSQL
    /// user can run it even when the cargo target directory is closed to it.
    pub fn install_program(&self, src: &Path) -> PathBuf {
        let bin_dir = self.path().join("bin");
        let name = src
            .file_name()
            .unwrap_or_else(|| panic!("{} names no file", src.display()));
        let dest = bin_dir.join(name);
        if dest.exists() {
            return dest;
        }
        mkdir_for_pg(&bin_dir);
        if fs::hard_link(src, &dest).is_err() {
            fs::copy(src, &dest)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), dest.display()));
        }
        // A hard link shares the original's mode; cargo makes binaries 0755 already.
        if fs::metadata(&dest)
            .map(|m| m.mode() & 0o005 != 0o005)
            .unwrap_or(true)
        {
            chmod(&dest, 0o755);
        }
        dest
    }
}

/// Entries of `dir`, or nothing when it does not exist.
pub fn list_dir(dir: &Path) -> Vec<PathBuf> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| {
                e.unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
                    .path()
            })
            .collect(),
        Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("list {}: {e}", dir.display()),
    }
}

/// Total size in bytes of the regular files under `dir` (0 when it does not exist).
pub fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in list_dir(dir) {
        let Ok(meta) = fs::symlink_metadata(&entry) else {
            continue; // removed meanwhile
        };
        if meta.is_dir() {
            total += tree_size(&entry);
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}

/// The last `n` lines of a text file (a server log, say), or a note that it is unreadable.
pub fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// Appends `text` to the existing file `path` (keeping its owner).
pub fn append(path: &Path, text: &str) {
    use std::io::Write as _;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
}

/// Panics with the first differing offset (not 16 MiB of bytes) unless `got == want`.
#[track_caller]
pub fn assert_same_bytes(what: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let first_diff = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: content differs: got {} bytes, want {} bytes, first difference at offset {first_diff}",
        got.len(),
        want.len()
    );
}

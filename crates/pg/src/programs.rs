//! Where PostgreSQL's programs are: pitr's one search order, used by the product (to run a
//! local instance: `restore --start`, `verify --restore-test`) and by the test harness alike.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directories that may hold PostgreSQL's programs, in order:
///
/// 1. `PITR_PG_BINDIR`, when set;
/// 2. `/usr/lib/postgresql/<major>/bin` (the Debian and Ubuntu layout): for `Some(major)` that
///    one, for `None` every installed major, newest first;
/// 3. `pg_config --bindir`, from the first `pg_config` on `PATH`.
///
/// A version's own directory comes before `pg_config`'s, which may be another version's.
/// Candidates need not exist, and may repeat; callers take the first holding the program
/// they need.
pub fn bindir_candidates(major: Option<u32>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("PITR_PG_BINDIR") {
        dirs.push(PathBuf::from(dir));
    }
    let system = Path::new("/usr/lib/postgresql");
    match major {
        Some(major) => dirs.push(system.join(major.to_string()).join("bin")),
        None => {
            let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir(system)
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    let e = e.ok()?;
                    let major = e.file_name().to_str()?.parse().ok()?;
                    Some((major, e.path().join("bin")))
                })
                .collect();
            majors.sort();
            dirs.extend(majors.into_iter().rev().map(|(_, d)| d));
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    dirs
}

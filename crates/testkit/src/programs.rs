//! Where PostgreSQL's programs come from: the product's one search order,
//! [`pitr_pg::programs::bindir_candidates`] for any version — `PITR_PG_BINDIR`, then
//! `/usr/lib/postgresql/*/bin` newest first, then `pg_config --bindir`. The server under test
//! (initdb, pg_ctl, postgres) comes from the first of these with initdb; client tools (psql,
//! pgbench, pg_waldump, ...) from the first that has them, since some builds ship only the
//! server programs and libpq clients talk to newer servers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::user::unprivileged;

/// Programs that must come from the server's own directory.
const SERVER_PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// The directories that may hold PostgreSQL programs, in search order (see the module docs);
/// only those holding initdb or psql.
pub fn pg_bindirs() -> &'static [PathBuf] {
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DIRS.get_or_init(|| {
        if let Some(dir) = std::env::var_os("PITR_PG_BINDIR") {
            // Named explicitly: it must hold the server under test.
            assert!(
                Path::new(&dir).join("initdb").is_file(),
                "PITR_PG_BINDIR={} has no initdb",
                Path::new(&dir).display()
            );
        }
        let mut dirs = pitr_pg::programs::bindir_candidates(None);
        dirs.retain(|d| d.join("initdb").is_file() || d.join("psql").is_file());
        let mut seen = Vec::new();
        dirs.retain(|d| {
            let new = !seen.contains(d);
            seen.push(d.clone());
            new
        });
        dirs
    })
}

/// The directory of the server programs under test: the first of [`pg_bindirs`] with initdb.
pub fn pg_bindir() -> &'static Path {
    pg_bindirs()
        .iter()
        .find(|d| d.join("initdb").is_file())
        .unwrap_or_else(|| {
            panic!(
                "no PostgreSQL found: set PITR_PG_BINDIR, put pg_config on PATH, or install \
                 postgresql (apt-get install postgresql)"
            )
        })
}

/// Directories of other PostgreSQL versions' server programs (initdb, pg_ctl, postgres) to run
/// the multi-version tests on: `PITR_EXTRA_PG_BINDIRS`, colon-separated (.ci/run installs
/// them). Empty when unset. Panics if a listed directory has no initdb.
pub fn pg_extra_bindirs() -> Vec<PathBuf> {
    let Some(list) = std::env::var_os("PITR_EXTRA_PG_BINDIRS") else {
        return Vec::new();
    };
    std::env::split_paths(&list)
        .filter(|d| !d.as_os_str().is_empty())
        .inspect(|dir| {
            assert!(
                dir.join("initdb").is_file(),
                "PITR_EXTRA_PG_BINDIRS lists {}, which has no initdb",
                dir.display()
            );
        })
        .collect()
}

/// Path of a PostgreSQL program: a server program from [`pg_bindir`], a client tool from the
/// first of [`pg_bindirs`] that has it.
pub fn pg_program(program: &str) -> PathBuf {
    if SERVER_PROGRAMS.contains(&program) {
        return pg_bindir().join(program);
    }
    let dirs = pg_bindirs();
    dirs.iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} not found in {dirs:?}"))
}

/// A PostgreSQL program (see [`pg_program`]), as the PostgreSQL user.
pub fn pg_command(program: &str) -> Command {
    unprivileged(pg_program(program))
}

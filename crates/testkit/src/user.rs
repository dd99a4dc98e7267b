//! Root and the `postgres` user: PostgreSQL refuses to run as root, and CI runs as root, so
//! there every PostgreSQL program (and whatever must share its files) runs as `postgres`.

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// The user PostgreSQL runs as when the tests run as root.
#[derive(Clone, Copy, Debug)]
pub struct PgUser {
    pub uid: u32,
    pub gid: u32,
}

/// `Some(postgres)` when the tests run as root, `None` otherwise (run everything directly).
pub fn pg_user() -> Option<PgUser> {
    static USER: OnceLock<Option<PgUser>> = OnceLock::new();
    *USER.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let name = CString::new("postgres").expect("no NUL in a literal");
        // SAFETY: a valid C string; the result is read before any other getpw* call here, and
        // the OnceLock serialises callers.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        assert!(
            !pw.is_null(),
            "the tests run as root, and PostgreSQL refuses to: they need a `postgres` user \
             to run it as (useradd --system postgres), or run them as an ordinary user"
        );
        // SAFETY: pw is non-null and points to getpwnam's static record.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Some(PgUser { uid, gid })
    })
}

/// A command for a program that must not run as root: as root it runs as `postgres`.
/// The process switches user itself (setgid/setuid before exec) rather than going through
/// `runuser`, so that a signal sent to the child reaches the program, not a wrapper.
/// The working directory defaults to `/`, which every user can enter.
pub fn unprivileged(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir("/");
    if let Some(user) = pg_user() {
        cmd.uid(user.uid).gid(user.gid);
    }
    cmd
}

/// Makes `path` owned by the user PostgreSQL runs as (no-op unless root).
pub fn give_to_pg(path: &Path) {
    if let Some(user) = pg_user() {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
            .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
    }
}

/// Creates `path` (and missing parents) owned by the user PostgreSQL runs as.
pub fn mkdir_for_pg(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    give_to_pg(path);
}

/// Sets the permission bits of `path`.
pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}

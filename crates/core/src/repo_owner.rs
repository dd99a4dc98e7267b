//! Nobody but the owner writes a local repository. Run as root, a command that writes would
//! leave root-owned 0600 objects in a repository that belongs to the PostgreSQL user, and every
//! later command run as that user (archive_command, list, verify, expire) would fail on them.
//! [`refuse_root_write`] is the one rule; the binary calls it for each command that writes.

use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;

use anyhow::bail;

/// The directory of a local repository URL (`/path` or `file:///path`); `None` for any other.
pub fn local_path(url: &str) -> Option<PathBuf> {
    if url.starts_with('/') {
        Some(PathBuf::from(url))
    } else if let Some(rest) = url.strip_prefix("file://") {
        let parsed = url::Url::parse(url).ok()?;
        parsed
            .to_file_path()
            .ok()
            .or_else(|| rest.starts_with('/').then(|| PathBuf::from(rest)))
    } else {
        None
    }
}

/// Refuse `pitr <command>`, which writes to the repository at `url`, when this process runs
/// as root and the repository is a local one owned by another user, naming that user; unless
/// `allow_root` (`--allow-root`). A repository that does not exist yet, or one root owns, is
/// no one else's.
pub fn refuse_root_write(url: &str, command: &str, allow_root: bool) -> anyhow::Result<()> {
    if allow_root || !crate::instance::running_as_root() {
        return Ok(());
    }
    refuse_write_as(0, url, command)
}

/// [`refuse_root_write`]'s rule for a process running as `uid` (0 for root).
fn refuse_write_as(uid: u32, url: &str, command: &str) -> anyhow::Result<()> {
    if uid != 0 {
        return Ok(());
    }
    let Some(path) = local_path(url) else {
        return Ok(());
    };
    let Ok(meta) = std::fs::metadata(&path) else {
        return Ok(());
    };
    if meta.uid() == 0 {
        return Ok(());
    }
    let owner = user_name(meta.uid()).unwrap_or_else(|| format!("uid {}", meta.uid()));
    bail!(
        "refusing to run `pitr {command}` as root on repository {url}, owned by {owner}: what it \
         writes would belong to root, and {owner} (PostgreSQL's archive_command, list, verify, \
         expire) could not read it; run it as {owner} (e.g. `runuser -u {owner} -- pitr \
         {command} …`), or pass --allow-root"
    )
}

/// The name of user `uid`, if the user database has one.
fn user_name(uid: u32) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths() {
        assert_eq!(
            local_path("/var/lib/pitr"),
            Some(PathBuf::from("/var/lib/pitr"))
        );
        assert_eq!(
            local_path("file:///var/lib/pitr"),
            Some(PathBuf::from("/var/lib/pitr"))
        );
        assert_eq!(local_path("s3://bucket/x"), None);
        assert_eq!(local_path("memory://x"), None);
    }

    /// Only root is refused, only on a local repository owned by someone else.
    #[test]
    fn only_root_on_someone_elses_repository_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().to_str().unwrap();
        let owner = std::fs::metadata(dir.path()).unwrap().uid();
        assert!(refuse_write_as(1000, url, "backup").is_ok());
        assert!(refuse_write_as(0, "s3://bucket/x", "backup").is_ok());
        assert!(refuse_write_as(0, &format!("{url}/absent"), "backup").is_ok());
        let mine = refuse_write_as(0, url, "backup");
        assert_eq!(mine.is_ok(), owner == 0, "{mine:?}");
    }
}

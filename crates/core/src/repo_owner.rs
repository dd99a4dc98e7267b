//! Nobody but the owner writes a local repository. Run as root, a command that writes would
//! leave root-owned 0600 objects in a repository that belongs to the PostgreSQL user, and every
//! later command run as that user (archive_command, list, verify, expire) would fail on them.
//! [`refuse_root_write`] is the one rule; the binary calls it for each command that writes.

use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;

use anyhow::bail;

/// The directory of a local repository URL (`/path` or `file:///path`); `None` for any other
/// (or one that names no directory: opening it will say why).
pub fn local_path(url: &str) -> Option<PathBuf> {
    pitr_store::Location::local_path(url).ok().flatten()
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
    let owner = pitr_store::user_name(meta.uid()).unwrap_or_else(|| format!("uid {}", meta.uid()));
    bail!(
        "refusing to run `pitr {command}` as root on repository {url}, owned by {owner}: what it \
         writes would belong to root, and {owner} (PostgreSQL's archive_command, list, verify, \
         expire) could not read it; run it as {owner} (e.g. `runuser -u {owner} -- pitr \
         {command} …`), or pass --allow-root"
    )
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

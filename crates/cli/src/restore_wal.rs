//! `pitr restore-wal NAME DEST`: fetch one archived WAL file for recovery. DEST appears whole
//! or not at all; "not archived" (exit 1) is kept strictly apart from every other failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use pitr_pg::WalFileName;
use pitr_store::{Repo, StoreError};

use crate::cli::RestoreWalArgs;
use crate::walref::WalRef;

/// The one error that means "this file is not in the archive" (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0} is not in the archive")]
pub struct NotArchived(pub String);

const ATTEMPTS: u32 = 4;

pub async fn restore_wal(url: &str, args: RestoreWalArgs) -> anyhow::Result<()> {
    let name: WalFileName = args.name.parse()?;
    let mut delay = Duration::from_millis(200);
    for attempt in 1.. {
        match fetch(url, &name, &args.dest).await {
            Err(e) if attempt < ATTEMPTS && is_transient(&e) => {
                tracing::warn!("fetch {name} (attempt {attempt} of {ATTEMPTS}): {e:#}; retrying");
                tokio::time::sleep(delay).await;
                delay *= 3;
            }
            other => return other,
        }
    }
    unreachable!("the loop returns on the last attempt")
}

fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<StoreError>()
            .is_some_and(StoreError::is_transient)
    })
}

async fn fetch(url: &str, name: &WalFileName, dest: &Path) -> anyhow::Result<()> {
    let repo = Repo::open(url).await?;
    let Some(walref) = WalRef::load(&repo, name).await? else {
        return Err(NotArchived(name.to_string()).into());
    };
    let tmp = temp_path(dest);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    let written = async {
        let n = repo
            .get_file(&walref.chunks, Arc::new(file), &tmp.display().to_string())
            .await?;
        if n != walref.size {
            bail!(
                "{name}: chunks add up to {n} bytes, the ref says {}",
                walref.size
            );
        }
        std::fs::rename(&tmp, dest)
            .with_context(|| format!("rename {} to {}", tmp.display(), dest.display()))?;
        Ok(())
    }
    .await;
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("restore {name} to {}", dest.display()))
}

fn temp_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(format!(".pitr-{}.tmp", std::process::id()));
    PathBuf::from(s)
}

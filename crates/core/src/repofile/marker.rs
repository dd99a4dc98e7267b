//! In-progress markers, `markers/backup-<name>.json`: a running backup's, written before its
//! first chunk and removed after its manifest (or its failure). While one is live, garbage
//! collection deletes no chunk (docs/format.md, "Garbage collection"). The content is for
//! people; a marker's age is its object's modification time.

use anyhow::Context;
use pitr_store::{keys, DocWrite, Repo};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupMarker {
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub host: String,
    pub pid: u32,
    /// The PID namespace `pid` is in (`pid:[4026531836]`), so that a marker is judged dead
    /// only by a process that sees the same PIDs.
    #[serde(default)]
    pub pid_ns: String,
}

impl BackupMarker {
    /// Whether this marker's backup is known to be gone: it ran on this host, in this PID
    /// namespace, and its process no longer exists. (A reused PID only makes a dead backup
    /// look alive, which is the safe mistake.)
    pub fn is_dead_here(&self) -> bool {
        !self.pid_ns.is_empty()
            && self.host == hostname()
            && self.pid_ns == pid_namespace()
            && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// A backup's marker in the repository; remove it with [`MarkerGuard::remove`].
#[must_use = "a marker left behind blocks garbage collection until it is stale"]
pub struct MarkerGuard {
    key: String,
}

impl MarkerGuard {
    /// Write a marker for a backup starting now, and wait until relying on existing chunks
    /// is safe (object stores: see `Repo::marker_settle`).
    pub async fn write(repo: &Repo) -> anyhow::Result<MarkerGuard> {
        let marker = BackupMarker {
            started_at: chrono::Utc::now(),
            host: hostname(),
            pid: std::process::id(),
            pid_ns: pid_namespace(),
        };
        let body = serde_json::to_vec(&marker)?;
        let base = format!(
            "{}-{}",
            marker.started_at.format("%Y%m%dT%H%M%S%.6fZ"),
            marker.pid
        );
        for n in 1.. {
            let name = if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            let key = keys::backup_marker(&name);
            match repo
                .put_doc(&key, body.clone().into())
                .await
                .with_context(|| format!("write the backup marker {key}"))?
            {
                DocWrite::Created => {
                    tokio::time::sleep(repo.marker_settle()).await;
                    return Ok(MarkerGuard { key });
                }
                DocWrite::Exists(_) if n < 10 => continue,
                DocWrite::Exists(_) => anyhow::bail!("backup markers {base} are all taken"),
            }
        }
        unreachable!("the loop returns")
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Remove the marker.
    pub async fn remove(self, repo: &Repo) -> anyhow::Result<()> {
        repo.delete_docs(std::slice::from_ref(&self.key))
            .await
            .with_context(|| format!("remove the backup marker {}", self.key))?;
        Ok(())
    }
}

fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

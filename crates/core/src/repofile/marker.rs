//! In-progress markers, `markers/backup-<name>.json`: a running backup's, written before its
//! first chunk and removed after its manifest (or its failure). While one is live, garbage
//! collection deletes no chunk (docs/format.md, "Garbage collection"). The content is for
//! people; a marker's age is its object's modification time.

use anyhow::Context;
use pitr_store::{layout, DocWrite, Repo};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupMarker {
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// For people: host names repeat (fixed container names, cloned machines), so they
    /// decide nothing.
    pub host: String,
    pub pid: u32,
    /// The PID namespace `pid` is in (`pid:[4026531836]`), so that a marker is judged dead
    /// only by a process that sees the same PIDs. The initial namespace's is the same number
    /// on every Linux host: it tells apart containers on one host, not hosts.
    #[serde(default)]
    pub pid_ns: String,
    /// `/etc/machine-id` of the host the backup ran on (empty in markers of older pitr).
    #[serde(default)]
    pub machine_id: String,
    /// `/proc/sys/kernel/random/boot_id` when the backup ran: random at every boot, so a
    /// cloned machine (same machine ID) or a rebooted one never matches it.
    #[serde(default)]
    pub boot_id: String,
}

impl BackupMarker {
    /// Whether this marker's backup is known to be gone: it ran on this machine (machine ID),
    /// in this boot (boot ID), in this PID namespace, and its process no longer exists. A
    /// marker lacking any of them (older pitr, no `/etc/machine-id`) is never judged dead
    /// here — only staleness ends it. (A reused PID only makes a dead backup look alive,
    /// which is the safe mistake.)
    pub fn is_dead_here(&self) -> bool {
        self.is_dead_on(&HostIdentity::current())
    }

    fn is_dead_on(&self, here: &HostIdentity) -> bool {
        let same = |theirs: &str, ours: &str| !theirs.is_empty() && theirs == ours;
        same(&self.machine_id, &here.machine_id)
            && same(&self.boot_id, &here.boot_id)
            && same(&self.pid_ns, &here.pid_ns)
            && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// What identifies the running system and its view of PIDs; a part that cannot be read is
/// empty, and an empty part never matches.
struct HostIdentity {
    machine_id: String,
    boot_id: String,
    pid_ns: String,
}

impl HostIdentity {
    fn current() -> HostIdentity {
        HostIdentity {
            machine_id: machine_id(),
            boot_id: boot_id(),
            pid_ns: pid_namespace(),
        }
    }
}

/// A backup's marker in the repository; remove it with [`MarkerGuard::remove`].
#[must_use = "a marker left behind blocks garbage collection until it is stale"]
pub struct MarkerGuard {
    key: String,
    marker: BackupMarker,
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
            machine_id: machine_id(),
            boot_id: boot_id(),
        };
        let key = put_marker(repo, &marker).await?;
        tokio::time::sleep(repo.marker_settle()).await;
        Ok(MarkerGuard { key, marker })
    }

    /// Replace the marker by a new one (a new name, so a new modification time), then remove
    /// the old: at every moment at least one of this backup's markers is in the repository,
    /// and the newest is as young as this call. Nothing to wait for: the old marker covered
    /// the backup until the new one was written.
    pub async fn renew(&mut self, repo: &Repo) -> anyhow::Result<()> {
        let new = put_marker(repo, &self.marker).await?;
        let old = std::mem::replace(&mut self.key, new);
        if let Err(e) = repo.delete_docs(std::slice::from_ref(&old)).await {
            tracing::warn!(
                "remove the renewed backup marker {old}: {e:#}; `pitr expire` will report it \
                 until it is stale"
            );
        }
        Ok(())
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

/// Write `marker` under a new name (the time now and the PID); its key.
async fn put_marker(repo: &Repo, marker: &BackupMarker) -> anyhow::Result<String> {
    let body = serde_json::to_vec(marker)?;
    let base = format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ"),
        marker.pid
    );
    for n in 1..=10 {
        let name = if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let key = layout::backup_marker(&name);
        match repo
            .put_doc(&key, body.clone().into())
            .await
            .with_context(|| format!("write the backup marker {key}"))?
        {
            DocWrite::Created => return Ok(key),
            DocWrite::Exists(_) => continue,
        }
    }
    anyhow::bail!("backup markers {base} are all taken")
}

fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `/etc/machine-id` (systemd's "uninitialized" placeholder counts as none).
fn machine_id() -> String {
    id_file("/etc/machine-id")
}

fn boot_id() -> String {
    id_file("/proc/sys/kernel/random/boot_id")
}

/// A one-line identifier file, trimmed; empty when absent, unreadable or not an identifier.
fn id_file(path: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let id = text.trim();
    if id.len() > 64 || id == "uninitialized" || id.chars().any(|c| c.is_whitespace()) {
        return String::new();
    }
    id.to_string()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gone_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        child.id()
    }

    fn marker(machine_id: &str, boot_id: &str, pid_ns: &str, pid: u32) -> BackupMarker {
        BackupMarker {
            started_at: chrono::Utc::now(),
            host: "db1".into(),
            pid,
            pid_ns: pid_ns.into(),
            machine_id: machine_id.into(),
            boot_id: boot_id.into(),
        }
    }

    /// Dead only when machine ID, boot ID and PID namespace all match and the process is
    /// gone: a cloned machine (same machine ID and host name, another boot), another
    /// machine, and a marker without the IDs (older pitr) are alive until stale.
    #[test]
    fn a_marker_is_dead_only_on_its_own_machine_boot_and_namespace() {
        let here = HostIdentity {
            machine_id: "m1".into(),
            boot_id: "b1".into(),
            pid_ns: "pid:[4026531836]".into(),
        };
        let (gone, alive) = (gone_pid(), std::process::id());
        assert!(marker("m1", "b1", "pid:[4026531836]", gone).is_dead_on(&here));
        assert!(!marker("m1", "b1", "pid:[4026531836]", alive).is_dead_on(&here));
        for (m, b, ns) in [
            ("m1", "b2", "pid:[4026531836]"), // a clone, or this machine before a reboot
            ("m2", "b1", "pid:[4026531836]"),
            ("m1", "b1", "pid:[4026532000]"), // another container
            ("", "", "pid:[4026531836]"),     // older pitr
            ("m1", "", "pid:[4026531836]"),
        ] {
            assert!(!marker(m, b, ns, gone).is_dead_on(&here), "{m} {b} {ns}");
        }
        let nothing = HostIdentity {
            machine_id: String::new(),
            boot_id: String::new(),
            pid_ns: String::new(),
        };
        assert!(!marker("", "", "", gone).is_dead_on(&nothing));
        // older markers still parse
        let old: BackupMarker = serde_json::from_str(
            r#"{"started_at":"2026-12-01T00:00:00Z","host":"db1","pid":7,"pid_ns":"pid:[1]"}"#,
        )
        .unwrap();
        assert!(old.machine_id.is_empty() && old.boot_id.is_empty());
    }
}

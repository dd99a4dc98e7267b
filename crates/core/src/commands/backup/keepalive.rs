//! A running backup's marker, kept fresh for as long as the backup runs, and checked before
//! its manifest is committed.
//!
//! `pitr expire` collects no chunk while a marker younger than `--marker-stale` (24 h by
//! default) exists; older markers are ignored as a killed backup's. A backup relies on chunks
//! that already exist (after a look alone, on object stores) for as long as it runs, which
//! with `--max-rate` can be longer than that: so its marker is renewed every
//! [`RENEW_EVERY`] (a new marker, then the old one removed), and the manifest is committed only
//! if the marker was never older than [`STALE`] and is still there — otherwise garbage
//! collection may have taken chunks the manifest would name.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use pitr_store::Repo;
use tokio::sync::{watch, Mutex};

use crate::repofile::MarkerGuard;

/// How often a running backup renews its marker.
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(3600);

/// `pitr expire`'s default `--marker-stale`: a backup whose marker went this long without
/// renewal (the repository unreachable, say) does not commit its manifest.
pub(crate) const STALE: Duration = Duration::from_secs(24 * 3600);

/// After a failed renewal, the next try comes this much sooner.
const RETRY_AFTER: Duration = Duration::from_secs(60);

struct Held {
    marker: MarkerGuard,
    /// When the write of the current marker began: its age is at most this long ago.
    written: Instant,
    /// The longest any of this backup's markers was the newest, from the start of its
    /// write to the end of the next one's.
    longest: Duration,
}

/// The marker of a running backup and the task that renews it.
pub(crate) struct MarkerKeeper {
    held: Arc<Mutex<Held>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    stale: Duration,
    /// Renewals so far (tests wait on it).
    #[cfg_attr(not(test), allow(dead_code))]
    renewals: watch::Receiver<u64>,
}

impl MarkerKeeper {
    /// Write the backup's marker (waiting as [`MarkerGuard::write`] does) and renew it every
    /// `renew_every` from a task until [`MarkerKeeper::finish`].
    pub async fn start(
        repo: &Repo,
        renew_every: Duration,
        stale: Duration,
    ) -> anyhow::Result<MarkerKeeper> {
        let written = Instant::now();
        let marker = MarkerGuard::write(repo).await?;
        let held = Arc::new(Mutex::new(Held {
            marker,
            written,
            longest: Duration::ZERO,
        }));
        let (stop, stop_rx) = watch::channel(false);
        let (renewed, renewals) = watch::channel(0u64);
        let task = tokio::spawn(renew_loop(
            repo.clone(),
            Arc::clone(&held),
            renew_every,
            stop_rx,
            renewed,
        ));
        Ok(MarkerKeeper {
            held,
            stop,
            task,
            stale,
            renewals,
        })
    }

    /// Right before the manifest is written: the marker never went `stale` without renewal
    /// and is still in the repository (re-read). Otherwise `pitr expire` may have collected
    /// chunks this backup relies on, and the manifest must not be committed.
    pub async fn check_before_commit(&self, repo: &Repo) -> anyhow::Result<()> {
        let held = self.held.lock().await;
        let key = held.marker.key();
        let longest = held.longest.max(held.written.elapsed());
        if longest >= self.stale {
            bail!(
                "the backup marker {key} went {} s without renewal, past the {} s after which \
                 `pitr expire` ignores a marker: chunks this backup relies on may have been \
                 collected meanwhile; not committing the manifest (take the backup again)",
                longest.as_secs(),
                self.stale.as_secs()
            );
        }
        match repo.get_doc(key).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => bail!(
                "the backup marker {key} was removed while the backup ran (by hand, or by a \
                 `pitr expire` that judged it dead): chunks this backup relies on may have \
                 been collected meanwhile; not committing the manifest (take the backup again)"
            ),
            Err(e) => Err(anyhow::Error::new(e)
                .context(format!("re-read the backup marker {key} before the commit"))),
        }
    }

    /// Stop renewing (a renewal under way completes) and remove the marker.
    pub async fn finish(self, repo: &Repo) -> anyhow::Result<()> {
        self.stop.send_replace(true);
        let _ = self.task.await;
        let held = Arc::try_unwrap(self.held)
            .map_err(|_| anyhow::anyhow!("the marker renewal task outlived its stop"))?
            .into_inner();
        held.marker.remove(repo).await
    }

    #[cfg(test)]
    fn renewals(&self) -> watch::Receiver<u64> {
        self.renewals.clone()
    }

    #[cfg(test)]
    async fn key(&self) -> String {
        self.held.lock().await.marker.key().to_string()
    }
}

async fn renew_loop(
    repo: Repo,
    held: Arc<Mutex<Held>>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    renewed: watch::Sender<u64>,
) {
    let mut wait = every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        let mut h = held.lock().await;
        let began = Instant::now();
        match h.marker.renew(&repo).await {
            Ok(()) => {
                h.longest = h.longest.max(h.written.elapsed());
                h.written = began;
                wait = every;
                renewed.send_modify(|n| *n += 1);
                tracing::debug!("backup marker renewed: {}", h.marker.key());
            }
            Err(e) => {
                tracing::warn!(
                    "{e:#}; the backup marker {} is {} s old, trying again in {} s",
                    h.marker.key(),
                    h.written.elapsed().as_secs(),
                    RETRY_AFTER.min(every).as_secs()
                );
                wait = RETRY_AFTER.min(every);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pitr_store::{layout, RepoConfig};

    async fn markers(repo: &Repo) -> Vec<String> {
        repo.list_objects(layout::MARKERS_PREFIX)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.key)
            .collect()
    }

    /// The marker is renewed (a new one, the old removed, never none), the commit check
    /// passes while it is fresh and present, and `finish` removes it.
    #[tokio::test]
    async fn the_marker_is_renewed_while_the_backup_runs() {
        let (repo, _) = Repo::init(
            "memory://keepalive-renew",
            RepoConfig::default(),
            &pitr_store::RepoOptions::default(),
        )
        .await
        .unwrap();
        let keeper = MarkerKeeper::start(&repo, Duration::from_millis(5), STALE)
            .await
            .unwrap();
        let first = keeper.key().await;
        let mut renewals = keeper.renewals();
        tokio::time::timeout(Duration::from_secs(60), renewals.wait_for(|&n| n >= 2))
            .await
            .expect("no renewal within 60 s")
            .unwrap();
        keeper.check_before_commit(&repo).await.unwrap();
        let now = keeper.key().await;
        assert_ne!(first, now);
        let present = markers(&repo).await;
        assert!(!present.contains(&first), "{present:?}");
        keeper.finish(&repo).await.unwrap();
        assert!(markers(&repo).await.is_empty());
    }

    /// A marker that went `stale` without renewal, or was removed, stops the commit.
    #[tokio::test]
    async fn a_stale_or_removed_marker_stops_the_commit() {
        let (repo, _) = Repo::init(
            "memory://keepalive-stale",
            RepoConfig::default(),
            &pitr_store::RepoOptions::default(),
        )
        .await
        .unwrap();
        let keeper = MarkerKeeper::start(&repo, RENEW_EVERY, Duration::ZERO)
            .await
            .unwrap();
        let e = keeper.check_before_commit(&repo).await.unwrap_err();
        assert!(e.to_string().contains("without renewal"), "{e:#}");
        keeper.finish(&repo).await.unwrap();

        let keeper = MarkerKeeper::start(&repo, RENEW_EVERY, STALE)
            .await
            .unwrap();
        keeper.check_before_commit(&repo).await.unwrap();
        repo.delete_docs(&[keeper.key().await]).await.unwrap();
        let e = keeper.check_before_commit(&repo).await.unwrap_err();
        assert!(e.to_string().contains("was removed"), "{e:#}");
        keeper.finish(&repo).await.unwrap();
    }
}

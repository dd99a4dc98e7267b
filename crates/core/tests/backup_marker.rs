//! A backup and `pitr expire` side by side: the backup's marker is what keeps garbage
//! collection from taking chunks the backup relies on, so a backup whose marker disappeared
//! (or went stale) while it ran must not commit a manifest naming them.

use pitr_core::backup::{backup, BackupRequest};
use pitr_core::progress::Silent;
use pitr_core::repofile::BackupManifest;
use pitr_protocol::CheckpointMode;
use pitr_store::{layout, Repo, RepoConfig};
use pitr_testkit::fakepg::{minimal_base_members, tar, Auth, BackupScript, FakePg, Gate, Script};

/// The marker is removed while the backup runs (as an expire that judged it dead or stale
/// would stop honouring it): the backup re-reads its marker before the commit and refuses,
/// naming it; no manifest is written.
#[tokio::test]
async fn a_backup_whose_marker_went_away_does_not_commit() {
    let gate = Gate::default();
    let mut script = BackupScript::base_tar(tar(&minimal_base_members()));
    script.gate = Some(gate.clone());
    let pg = FakePg::start(Script {
        auth: Auth::Trust,
        backup: Some(script),
        notice_flood: None,
    });
    let (repo, _) = Repo::init(
        "memory://backup-marker-gone",
        RepoConfig::default(),
        &pitr_store::RepoOptions::default(),
    )
    .await
    .unwrap();
    let req = BackupRequest {
        dbname: Some(pg.conn("sslmode=disable")),
        checkpoint: CheckpointMode::Fast,
        label: None,
        max_rate: None,
        password: None,
    };
    let running = {
        let repo = repo.clone();
        tokio::spawn(async move { backup(&repo, req, &Silent).await })
    };
    // The server is in the middle of BASE_BACKUP: the marker is there; take it away.
    let reached = gate.clone();
    tokio::task::spawn_blocking(move || reached.wait_reached())
        .await
        .unwrap();
    let markers: Vec<String> = repo
        .list_objects(layout::MARKERS_PREFIX)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    assert_eq!(markers.len(), 1, "{markers:?}");
    repo.delete_docs(&markers).await.unwrap();
    gate.open();

    let err = match running.await.unwrap() {
        Ok(m) => panic!("backup {} was committed without its marker", m.id),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains(&markers[0]) && err.contains("was removed"),
        "{err}"
    );
    let manifests = BackupManifest::list(&repo).await.unwrap();
    assert!(
        manifests.docs.is_empty() && manifests.damaged.is_empty(),
        "a manifest was written: {err}"
    );
}

//! `pitr backup` against a scripted replication server ([`pitr_testkit::fakepg`]) whose
//! BASE_BACKUP tar stream is damaged or hostile: each case must fail the backup with a message
//! naming the problem and leave no manifest behind, so no unrestorable backup is committed.
//! A well-formed stream from the same server is committed, so the failures are the checks'.

use std::sync::atomic::{AtomicUsize, Ordering};

use pitr_core::backup::{backup, BackupRequest};
use pitr_core::progress::Silent;
use pitr_core::repofile::BackupManifest;
use pitr_protocol::CheckpointMode;
use pitr_store::{Repo, RepoConfig};
use pitr_testkit::fakepg::{minimal_base_members, tar, Auth, BackupScript, FakePg, Member, Script};

async fn run_backup(base_tar: Vec<u8>) -> (Repo, anyhow::Result<BackupManifest>) {
    let pg = FakePg::start(Script {
        auth: Auth::Trust,
        backup: Some(BackupScript::base_tar(base_tar)),
        notice_flood: None,
    });
    // memory:// repositories live as long as the process, by name: one per backup here.
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let url = format!("memory://hostile-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let (repo, _) = Repo::init(
        &url,
        RepoConfig::default(),
        &pitr_store::RepoOptions::default(),
    )
    .await
    .expect("memory repository");
    let req = BackupRequest {
        dbname: Some(pg.conn("sslmode=disable")),
        password: None,
        checkpoint: CheckpointMode::Fast,
        label: None,
        max_rate: None,
    };
    let result = backup(&repo, req, &Silent).await;
    (repo, result)
}

/// The backup fails with an error mentioning each of `words`, and no manifest exists.
async fn assert_refused(what: &str, base_tar: Vec<u8>, words: &[&str]) {
    let (repo, result) = run_backup(base_tar).await;
    let err = match result {
        Ok(m) => panic!("{what}: backup {} was committed", m.id),
        Err(e) => format!("{e:#}"),
    };
    for w in words {
        assert!(
            err.contains(w),
            "{what}: error {err:?} does not mention {w:?}"
        );
    }
    let manifests = BackupManifest::list(&repo).await.expect("list manifests");
    assert!(
        manifests.docs.is_empty() && manifests.damaged.is_empty(),
        "{what}: a manifest was written despite {err:?}"
    );
}

fn with(extra: Member) -> Vec<Member> {
    let mut members = minimal_base_members();
    members.push(extra);
    members
}

#[tokio::test]
async fn a_well_formed_stream_is_committed() {
    let (repo, result) = run_backup(tar(&minimal_base_members())).await;
    let manifest = result.expect("backup of a well-formed stream");
    assert!(manifest
        .files
        .iter()
        .any(|f| f.path.as_str() == "global/pg_control"));
    assert_eq!(BackupManifest::list(&repo).await.unwrap().docs.len(), 1);
}

#[tokio::test]
async fn a_symbolic_link_is_recorded_as_one_and_a_tablespace_link_fails_the_backup() {
    // A DBA's link in the data directory is kept as a link entry, target and all, never
    // followed (the lay-down names it and does not create it).
    let (_, result) = run_backup(tar(&with(Member::symlink("log", "/etc")))).await;
    let manifest = result.expect("a backup with a link in the data directory");
    let link = manifest
        .files
        .iter()
        .find(|f| f.path.as_str() == "log")
        .expect("the link is in the manifest");
    assert_eq!(link.kind, pitr_core::repofile::FileKind::Symlink);
    assert_eq!(link.link.as_deref(), Some("/etc"));
    assert!(link.chunks.is_empty());
    assert_refused(
        "pg_tblspc link",
        tar(&with(Member::symlink("pg_tblspc/16384", "/srv/ts"))),
        &["symbolic link pg_tblspc/16384"],
    )
    .await;
}

#[tokio::test]
async fn names_a_restore_would_refuse_fail_the_backup() {
    for (name, words) in [
        (".", &["base.tar", "backup entry \".\""][..]),
        ("./", &["backup entry \"\""][..]),
        ("../x", &["base.tar", "unsafe path \"../x\""][..]),
        ("base/../../x", &["unsafe path"][..]),
        ("/etc/cron.d/x", &["unsafe path"][..]),
    ] {
        assert_refused(name, tar(&with(Member::file(name, b"x"))), words).await;
    }
}

#[tokio::test]
async fn a_truncated_archive_fails_the_backup() {
    let full = tar(&minimal_base_members());
    // Cut inside global/pg_control's data.
    let cut = full[..512 * 6 + 100].to_vec();
    assert_refused(
        "truncated member",
        cut,
        &["base.tar", "ended inside an entry"],
    )
    .await;
    // Cut at a header boundary: every member complete, the end blocks missing.
    let cut = full[..full.len() - 1024].to_vec();
    assert_refused(
        "missing end blocks",
        cut,
        &["base.tar", "without the two zero blocks"],
    )
    .await;
}

#[tokio::test]
async fn data_after_the_end_blocks_fails_the_backup() {
    let mut t = tar(&minimal_base_members());
    t.extend(tar(&[Member::file("hidden", b"smuggled")]));
    assert_refused("data after end", t, &["base.tar", "data after the end"]).await;
}

#[tokio::test]
async fn a_base_backup_without_backup_label_or_pg_control_fails() {
    for missing in ["backup_label", "global/pg_control"] {
        let members: Vec<Member> = minimal_base_members()
            .into_iter()
            .filter(|m| m.name != missing)
            .collect();
        assert_refused(missing, tar(&members), &["base.tar lacks", missing]).await;
    }
    let members: Vec<Member> = minimal_base_members()
        .into_iter()
        .filter(|m| m.kind != b'0' || m.name.starts_with("base/"))
        .collect();
    assert_refused(
        "both",
        tar(&members),
        &["lacks backup_label and global/pg_control"],
    )
    .await;
}

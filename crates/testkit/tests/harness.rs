//! The harness's own check: a cluster starts, answers, and (as root) runs as `postgres`.

use std::fs;
use std::os::unix::fs::MetadataExt;

use pitr_testkit::user::pg_user;
use pitr_testkit::wal::{segment_name, segno};
use pitr_testkit::PgCluster;

#[test]
fn harness_cluster_starts_and_answers() {
    let pg = PgCluster::init();
    assert_eq!(pg.psql("select 1"), "1");
    let pid_file = pg.data_dir().join("postmaster.pid");
    let owner = fs::metadata(&pid_file)
        .unwrap_or_else(|e| panic!("stat {}: {e}", pid_file.display()))
        .uid();
    // SAFETY: geteuid has no preconditions.
    let expected = pg_user().map_or(unsafe { libc::geteuid() }, |u| u.uid);
    assert_eq!(owner, expected, "postmaster.pid owner");
    assert_eq!(segno("000000010000000A000000FF"), Some(0xAFF));
    assert_eq!(segment_name(1, 0xAFF), "000000010000000A000000FF");
}

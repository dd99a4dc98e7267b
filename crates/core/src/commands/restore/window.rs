//! The recoverable window: the times `pitr restore --target-time` accepts, computed the way
//! the planner decides (crates/core/src/commands/restore/plan.rs), so that every time `info` calls
//! recoverable is one a restore reaches. One code path for `info` and `restore --dry-run`.
//!
//! For a time T the planner takes the newest backup that finished before T, walks the archive
//! from that backup's stop segment along the newest timeline's path, and needs a commit, abort
//! or restore point later than T before the first missing segment. So backup `b` covers
//! (b.stop, min(last record time of its unbroken WAL, next backup's stop)]: a gap in the WAL
//! ends the window there, and a later backup opens it again.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use pitr_pg::TimelineId;

use crate::index::ArchiveIndex;
use crate::repofile::BackupManifest;
// The planner's, not the other way round: plan.rs does not depend on this file.
pub use super::plan::Recoverable;
use super::plan::{ArchiveReader, Route, TimelineChoice};

/// The recoverable intervals of `backups` (oldest first) over the archive `index`, oldest
/// first and merged where they touch. Segments that cannot be read end a backup's interval
/// before them (`pitr verify` names them).
pub async fn window(
    backups: &[BackupManifest],
    index: &ArchiveIndex,
    archive: &impl ArchiveReader,
) -> anyhow::Result<Vec<Recoverable>> {
    let tick = Duration::microseconds(1);
    // The newest record time of the unbroken WAL ending at each (timeline, segment): backups
    // on one timeline usually share it.
    let mut last_record: HashMap<(TimelineId, u64), Option<i64>> = HashMap::new();
    let mut stops: Vec<DateTime<Utc>> = backups.iter().map(|b| b.stop_time).collect();
    stops.sort();
    let mut out: Vec<Recoverable> = Vec::new();
    for b in backups {
        if b.check_restorable().is_err() {
            continue;
        }
        let Ok(route) = Route::new(b, index, archive, &TimelineChoice::Latest).await else {
            continue;
        };
        let Some(last) = route.last_unbroken(index) else {
            continue;
        };
        let key = (route.timeline_of(last), last);
        let newest = match last_record.get(&key) {
            Some(t) => *t,
            None => {
                let t = newest_record(&route, index, archive, last).await;
                last_record.insert(key, t);
                t
            }
        };
        let Some(newest) = newest.and_then(DateTime::from_timestamp_micros) else {
            continue;
        };
        // A target needs a record strictly after it (recovery_target_inclusive).
        let mut to = newest - tick;
        if let Some(next) = stops.iter().find(|s| **s > b.stop_time) {
            to = to.min(*next);
        }
        let from = b.stop_time + tick;
        if to < from {
            continue;
        }
        match out.last_mut() {
            Some(prev) if prev.to + tick >= from => prev.to = prev.to.max(to),
            _ => out.push(Recoverable { from, to }),
        }
    }
    Ok(out)
}

/// The newest commit, abort or restore-point time (µs) in the route's segments up to `last`,
/// reading backwards from `last`.
async fn newest_record(
    route: &Route,
    index: &ArchiveIndex,
    archive: &impl ArchiveReader,
    last: u64,
) -> Option<i64> {
    let mut segno = last;
    loop {
        let name = route.segment_name(index, segno);
        match archive.records(&name, index.segment_size()).await {
            Ok(records) if !records.is_empty() => {
                return records.iter().map(|r| r.unix_micros).max();
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("recoverable window: {name}: {e:#}"),
        }
        if segno == route.first_segment() {
            return None;
        }
        segno -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::plan::{plan, PlanRequest};
    use crate::restore::Target;
    use crate::testutil::{at, backup, Fixture};

    /// A stray timeline forking before the newest backup was consistent does not drop that
    /// backup's interval: the window follows the same rule as the planner.
    #[tokio::test]
    async fn a_stray_fork_keeps_the_window() {
        let backups = vec![backup(
            "b2",
            "0/4000028",
            "0/4000100",
            "2026-11-26T12:00:00Z",
        )];
        let mut a = Fixture::default();
        a.segment(
            "000000010000000000000004",
            "2026-11-26T12:15:00Z",
            &["2026-11-26T12:10:00Z"],
        )
        .segment("000000020000000000000003", "2026-11-26T11:30:00Z", &[]);
        a.histories
            .insert(2, "1\t0/3000100\tno recovery target specified\n".into());
        let w = window(&backups, &a.index(), &a).await.unwrap();
        assert_eq!(
            w,
            [Recoverable {
                from: at("2026-11-26T12:00:00.000001Z"),
                to: at("2026-11-26T12:09:59.999999Z"),
            }]
        );
    }

    /// A missing segment ends the window; the next backup opens it again. Every end the
    /// window names is a time the planner accepts, and a time in the hole is one it refuses.
    #[tokio::test]
    async fn the_window_is_what_the_planner_accepts() {
        let backups = vec![
            backup("b1", "0/2000028", "0/2000100", "2026-11-26T10:00:00Z"),
            backup("b2", "0/4000028", "0/4000100", "2026-11-26T12:00:00Z"),
        ];
        let mut a = Fixture::default();
        a.segment(
            "000000010000000000000002",
            "2026-11-26T10:35:00Z",
            &["2026-11-26T10:30:00Z"],
        )
        // 3 is missing
        .segment(
            "000000010000000000000004",
            "2026-11-26T12:15:00Z",
            &["2026-11-26T12:10:00Z"],
        )
        .segment(
            "000000010000000000000005",
            "2026-11-26T12:45:00Z",
            &["2026-11-26T12:40:00Z"],
        );
        let index = a.index();
        let w = window(&backups, &index, &a).await.unwrap();
        let us = |s: &str| at(s);
        assert_eq!(
            w,
            [
                Recoverable {
                    from: us("2026-11-26T10:00:00.000001Z"),
                    to: us("2026-11-26T10:29:59.999999Z"),
                },
                Recoverable {
                    from: us("2026-11-26T12:00:00.000001Z"),
                    to: us("2026-11-26T12:39:59.999999Z"),
                },
            ]
        );
        let planned = |t: DateTime<Utc>| {
            let (index, a, backups) = (&index, &a, &backups);
            async move {
                let target = Target::Time(t);
                let req = PlanRequest {
                    target: &target,
                    exclusive: false,
                    backup_id: None,
                    timeline: &TimelineChoice::Latest,
                };
                plan("memory://w", backups, index, a, req).await
            }
        };
        for r in &w {
            for t in [r.from, r.to] {
                if let Err(e) = planned(t).await {
                    panic!("{t} is in the window but the planner refuses it: {e:#}");
                }
            }
            assert!(planned(r.to + Duration::microseconds(1)).await.is_err());
        }
        assert!(
            planned(us("2026-11-26T11:00:00Z")).await.is_err(),
            "a time in the hole"
        );
    }
}

//! Fixtures shared by the unit tests of the planner and the recoverable window: backups and
//! an archive held in memory.

use std::collections::HashMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use pitr_pg::{parse_history, HistoryEntry, Lsn, TimedKind, TimedRecord, TimelineId, WalFileName};

use crate::index::ArchiveIndex;
use crate::repofile::BackupManifest;
use crate::restore::plan::ArchiveReader;

pub const SEG: u32 = pitr_pg::DEFAULT_WAL_SEGMENT_SIZE;

pub fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// A backup of timeline 1 from `start` to `stop` (LSNs), finished at `stop_time`.
pub fn backup(id: &str, start: &str, stop: &str, stop_time: &str) -> BackupManifest {
    let start: Lsn = start.parse().unwrap();
    let seg = |l: Lsn| WalFileName::segment(TimelineId(1), l.segment_number(SEG), SEG);
    let server = serde_json::json!({"path": "backup_manifest", "kind": "file", "mode": 384,
"size": 0, "mtime": 0});
    serde_json::from_value(serde_json::json!({
    "format_version": 1, "id": id, "label": id,
    "start_time": "2026-11-26T00:00:00Z", "stop_time": stop_time,
    "start_lsn": start, "stop_lsn": stop, "timeline": 1,
    "system_identifier": "1", "pg_version": "15.18", "pg_version_num": 150018,
    "size_bytes": 0, "stored_bytes": 0,
    "wal_start": seg(start), "wal_stop": seg(start),
    "files": [], "tablespaces": [], "wal": [], "server_manifest": server,
    }))
    .unwrap()
}

/// An archive in memory: when each segment was archived and the commit times it holds.
#[derive(Default)]
pub struct Fixture {
    pub segments: HashMap<String, (DateTime<Utc>, Vec<TimedRecord>)>,
    pub histories: HashMap<u32, String>,
}

impl Fixture {
    pub fn segment(&mut self, name: &str, archived: &str, commits: &[&str]) -> &mut Self {
        let records = commits
            .iter()
            .map(|c| record(name, TimedKind::Commit, c, 0, None))
            .collect();
        self.segments.insert(name.into(), (at(archived), records));
        self
    }

    /// Adds the commit of transaction `xid` at `time` to archived segment `name`.
    pub fn commit(&mut self, name: &str, xid: u32, time: &str) -> &mut Self {
        let r = record(name, TimedKind::Commit, time, xid, None);
        self.segments.get_mut(name).expect("archived").1.push(r);
        self
    }

    /// Adds restore point `label` at `time` to archived segment `name`.
    pub fn restore_point(&mut self, name: &str, label: &str, time: &str) -> &mut Self {
        let r = record(name, TimedKind::RestorePoint, time, 0, Some(label));
        self.segments.get_mut(name).expect("archived").1.push(r);
        self
    }

    pub fn index(&self) -> ArchiveIndex {
        let mut index = ArchiveIndex::new(SEG);
        for name in self.segments.keys() {
            index.insert(&name.parse().unwrap());
        }
        for tli in self.histories.keys() {
            index.insert(&format!("{tli:08X}.history").parse().unwrap());
        }
        index
    }
}

impl ArchiveReader for Fixture {
    async fn history(&self, tli: TimelineId) -> anyhow::Result<Vec<HistoryEntry>> {
        let text = self.histories.get(&tli.0).context("no history")?;
        Ok(parse_history(text)?)
    }
    async fn archived_at(&self, name: &WalFileName) -> anyhow::Result<DateTime<Utc>> {
        Ok(self.segments[name.as_str()].0)
    }
    async fn records(&self, name: &WalFileName, _: u32) -> anyhow::Result<Vec<TimedRecord>> {
        Ok(self.segments[name.as_str()].1.clone())
    }
}

/// A record of segment `segment` (past its first page, so after any backup's stop there).
fn record(
    segment: &str,
    kind: TimedKind,
    time: &str,
    xid: u32,
    restore_point: Option<&str>,
) -> TimedRecord {
    let name: WalFileName = segment.parse().unwrap();
    TimedRecord {
        lsn: Lsn(name.start_lsn(SEG).unwrap().0 + 0x1000),
        kind,
        unix_micros: at(time).timestamp_micros(),
        xid,
        restore_point: restore_point.map(str::to_string),
    }
}

//! What the archive holds, by name: segments per timeline, history, partial and backup
//! history files, the newest segment, and the gaps between archived segments. The one reader
//! of the archive's shape, for restore's planner, `info` and `verify`.

use std::collections::{BTreeMap, BTreeSet};

use pitr_pg::{TimelineId, WalFileKind, WalFileName, DEFAULT_WAL_SEGMENT_SIZE};
use pitr_store::{keys, Repo};
use serde::Serialize;

use crate::repofile::WalRef;

#[derive(Clone, Debug)]
pub struct ArchiveIndex {
    segment_size: u32,
    segments: BTreeMap<TimelineId, BTreeSet<u64>>,
    histories: BTreeSet<WalFileName>,
    partials: BTreeMap<TimelineId, BTreeSet<WalFileName>>,
    backup_files: BTreeSet<WalFileName>,
    /// The newest segment by name: look-ahead archiving stores later segments before earlier
    /// ones finish, so this is not the last one stored.
    last_segment: Option<WalFileName>,
}

/// Archived segments missing between two archived ones of a timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    pub timeline: TimelineId,
    pub first: WalFileName,
    pub last: WalFileName,
}

/// One timeline's archived segments, as `info` shows them.
#[derive(Clone, Debug, Serialize)]
pub struct TimelineSummary {
    pub timeline: TimelineId,
    pub first: WalFileName,
    pub last: WalFileName,
    pub segments: usize,
    /// Missing ranges between first and last: [first missing, last missing].
    pub gaps: Vec<[WalFileName; 2]>,
    pub partial: Vec<WalFileName>,
}

impl ArchiveIndex {
    /// An empty index for a cluster with `segment_size`.
    pub fn new(segment_size: u32) -> Self {
        ArchiveIndex {
            segment_size,
            segments: BTreeMap::new(),
            histories: BTreeSet::new(),
            partials: BTreeMap::new(),
            backup_files: BTreeSet::new(),
            last_segment: None,
        }
    }

    /// The archive as its listing shows it (one LIST, no ref read).
    pub async fn list(repo: &Repo, segment_size: u32) -> anyhow::Result<Self> {
        let mut index = ArchiveIndex::new(segment_size);
        for (key, _) in repo.list(keys::WAL_PREFIX).await? {
            if let Some(name) = WalRef::name_of_key(&key) {
                index.insert(&name);
            }
        }
        Ok(index)
    }

    /// The archive as the given refs show it; the segment size is the refs' own.
    pub fn of_refs<'a>(refs: impl IntoIterator<Item = &'a WalRef> + Clone) -> Self {
        let segment_size = refs
            .clone()
            .into_iter()
            .find_map(|r| r.segment_size)
            .unwrap_or(DEFAULT_WAL_SEGMENT_SIZE);
        let mut index = ArchiveIndex::new(segment_size);
        for r in refs {
            index.insert(&r.name);
        }
        index
    }

    pub fn insert(&mut self, name: &WalFileName) {
        let tli = name.timeline();
        match name.kind() {
            WalFileKind::Segment => {
                let segno = name
                    .segment_number(self.segment_size)
                    .expect("a segment has a number");
                self.segments.entry(tli).or_default().insert(segno);
                if self.last_segment.as_ref().is_none_or(|l| name > l) {
                    self.last_segment = Some(name.clone());
                }
            }
            WalFileKind::Partial => {
                self.partials.entry(tli).or_default().insert(name.clone());
            }
            WalFileKind::History => {
                self.histories.insert(name.clone());
            }
            WalFileKind::BackupHistory => {
                self.backup_files.insert(name.clone());
            }
        }
    }

    pub fn segment_size(&self) -> u32 {
        self.segment_size
    }

    pub fn segment_name(&self, tli: TimelineId, segno: u64) -> WalFileName {
        WalFileName::segment(tli, segno, self.segment_size)
    }

    pub fn has_segment(&self, tli: TimelineId, segno: u64) -> bool {
        self.segments.get(&tli).is_some_and(|s| s.contains(&segno))
    }

    /// Archived segment numbers of `tli`.
    pub fn segments(&self, tli: TimelineId) -> Option<&BTreeSet<u64>> {
        self.segments.get(&tli)
    }

    /// The highest timeline anything (a segment or a history file) was archived for.
    pub fn newest_timeline(&self) -> Option<TimelineId> {
        let history = self.histories.iter().map(WalFileName::timeline).max();
        let segment = self.segments.keys().max().copied();
        history.max(segment)
    }

    pub fn history_files(&self) -> impl Iterator<Item = &WalFileName> {
        self.histories.iter()
    }

    pub fn last_segment(&self) -> Option<&WalFileName> {
        self.last_segment.as_ref()
    }

    /// Missing segments between the first and the last archived segment of each timeline.
    pub fn gaps(&self) -> Vec<Gap> {
        self.timelines()
            .into_iter()
            .flat_map(|t| {
                t.gaps.into_iter().map(move |[first, last]| Gap {
                    timeline: t.timeline,
                    first,
                    last,
                })
            })
            .collect()
    }

    /// Each timeline with archived segments: first, last, how many, gaps, partial files.
    pub fn timelines(&self) -> Vec<TimelineSummary> {
        self.segments
            .iter()
            .filter_map(|(&tli, segs)| {
                let (&first, &last) = (segs.first()?, segs.last()?);
                let name = |n| self.segment_name(tli, n);
                let mut gaps = Vec::new();
                let mut prev = first;
                for &n in segs.iter().skip(1) {
                    if n > prev + 1 {
                        gaps.push([name(prev + 1), name(n - 1)]);
                    }
                    prev = n;
                }
                Some(TimelineSummary {
                    timeline: tli,
                    first: name(first),
                    last: name(last),
                    segments: segs.len(),
                    gaps,
                    partial: self
                        .partials
                        .get(&tli)
                        .map(|p| p.iter().cloned().collect())
                        .unwrap_or_default(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(names: &[&str]) -> ArchiveIndex {
        let mut i = ArchiveIndex::new(DEFAULT_WAL_SEGMENT_SIZE);
        for n in names {
            i.insert(&n.parse().unwrap());
        }
        i
    }

    #[test]
    fn gaps_timelines_and_newest() {
        let i = index(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000006",
            "000000010000000000000008",
            "00000002.history",
            "000000010000000000000008.partial",
            "000000020000000000000008",
            "000000010000000000000002.00000028.backup",
        ]);
        let gaps: Vec<(u32, String, String)> = i
            .gaps()
            .into_iter()
            .map(|g| (g.timeline.0, g.first.to_string(), g.last.to_string()))
            .collect();
        assert_eq!(
            gaps,
            [
                (
                    1,
                    "000000010000000000000004".into(),
                    "000000010000000000000005".into()
                ),
                (
                    1,
                    "000000010000000000000007".into(),
                    "000000010000000000000007".into()
                ),
            ]
        );
        assert_eq!(i.newest_timeline(), Some(TimelineId(2)));
        assert_eq!(
            i.last_segment().map(|n| n.as_str()),
            Some("000000020000000000000008")
        );
        let t = i.timelines();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].segments, 4);
        assert_eq!(t[0].partial.len(), 1);
        assert!(i.has_segment(TimelineId(1), 6) && !i.has_segment(TimelineId(1), 7));
    }
}

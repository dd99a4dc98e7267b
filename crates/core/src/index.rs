//! What the archive holds, by name: segments per timeline, history, partial and backup
//! history files, the newest segment, and the gaps between archived segments. The one reader
//! of the archive's shape, for restore's planner, `info` and `verify`.

use std::collections::{BTreeMap, BTreeSet};

use pitr_pg::{Lsn, TimelineId, WalFileKind, WalFileName, DEFAULT_WAL_SEGMENT_SIZE};
use pitr_store::{layout, Repo};
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
        for (key, _) in repo.list(layout::WAL_PREFIX).await? {
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

    /// The last file archived on the timeline a server archiving here is on, which the
    /// archive alone says is [`Self::newest_timeline`]: its highest segment, or, before any
    /// segment of it is archived, its history file. What `info`'s "last" and `check
    /// --max-archive-age` measure, each with this file's own archive time.
    pub fn last_of_newest_timeline(&self) -> Option<WalFileName> {
        let tli = self.newest_timeline()?;
        let segment = self.segments.get(&tli).and_then(|s| s.last());
        match segment {
            Some(&segno) => Some(self.segment_name(tli, segno)),
            None => self.histories.iter().find(|h| h.timeline() == tli).cloned(),
        }
    }

    /// Every timeline anything (a segment or a history file) was archived for, newest first.
    pub fn known_timelines(&self) -> Vec<TimelineId> {
        let mut all: BTreeSet<TimelineId> = self.segments.keys().copied().collect();
        all.extend(self.histories.iter().map(WalFileName::timeline));
        all.into_iter().rev().collect()
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

    /// The segments missing on the way recovery would take along `path` (timelines oldest
    /// first, each with the LSN where it begins and where it ends, as
    /// [`pitr_pg::timeline_path`] gives them): from segment `from` up to the newest segment
    /// archived on the path, or up to `through` when that is later. A segment belongs to the
    /// newest timeline of the path that began at or before it, as recovery asks for it.
    pub fn missing_along(
        &self,
        path: &[(TimelineId, Lsn, Option<Lsn>)],
        from: u64,
        through: Option<u64>,
    ) -> Vec<Gap> {
        let seg = self.segment_size;
        let Some(&(first_tli, _, _)) = path.first() else {
            return Vec::new();
        };
        let tli_for = |segno: u64| -> TimelineId {
            path.iter()
                .rev()
                .find(|(_, begin, _)| begin.segment_number(seg) <= segno)
                .map_or(first_tli, |(t, _, _)| *t)
        };
        let newest = path
            .iter()
            .filter_map(|(t, begin, end)| {
                let lo = begin.segment_number(seg).max(from);
                let hi = end.map_or(u64::MAX, |e| e.segment_number(seg));
                if lo > hi {
                    return None;
                }
                self.segments.get(t)?.range(lo..=hi).next_back().copied()
            })
            .max();
        let Some(last) = newest.max(through) else {
            return Vec::new();
        };
        let mut out: Vec<Gap> = Vec::new();
        let mut run: Option<(TimelineId, u64, u64)> = None;
        for segno in from..=last {
            let tli = tli_for(segno);
            if self.has_segment(tli, segno) {
                continue;
            }
            run = match run {
                Some((t, a, b)) if t == tli && b + 1 == segno => Some((t, a, segno)),
                other => {
                    if let Some((t, a, b)) = other {
                        out.push(Gap {
                            timeline: t,
                            first: self.segment_name(t, a),
                            last: self.segment_name(t, b),
                        });
                    }
                    Some((tli, segno, segno))
                }
            };
        }
        if let Some((t, a, b)) = run {
            out.push(Gap {
                timeline: t,
                first: self.segment_name(t, a),
                last: self.segment_name(t, b),
            });
        }
        out
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

    /// From a backup's start: a segment missing before the first archived one is a gap too,
    /// and after a timeline switch the segments are the new timeline's.
    #[test]
    fn missing_along_a_path() {
        let seg = u64::from(DEFAULT_WAL_SEGMENT_SIZE);
        let i = index(&[
            "000000010000000000000004",
            "000000010000000000000005",
            "00000002.history",
            "000000020000000000000005",
            "000000020000000000000007",
        ]);
        let names = |gaps: Vec<Gap>| -> Vec<(u32, String, String)> {
            gaps.into_iter()
                .map(|g| (g.timeline.0, g.first.to_string(), g.last.to_string()))
                .collect()
        };
        let one = [(TimelineId(1), Lsn(0), None)];
        assert_eq!(
            names(i.missing_along(&one, 2, None)),
            [(
                1,
                "000000010000000000000002".into(),
                "000000010000000000000003".into()
            )]
        );
        assert!(i.missing_along(&one, 4, None).is_empty());
        assert_eq!(
            names(i.missing_along(&one, 4, Some(6))),
            [(
                1,
                "000000010000000000000006".into(),
                "000000010000000000000006".into()
            )]
        );
        // timeline 2 began in segment 5
        let two = [
            (TimelineId(1), Lsn(0), Some(Lsn(5 * seg + 0x100))),
            (TimelineId(2), Lsn(5 * seg + 0x100), None),
        ];
        assert_eq!(
            names(i.missing_along(&two, 3, None)),
            [
                (
                    1,
                    "000000010000000000000003".into(),
                    "000000010000000000000003".into()
                ),
                (
                    2,
                    "000000020000000000000006".into(),
                    "000000020000000000000006".into()
                ),
            ]
        );
    }
}

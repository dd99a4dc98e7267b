//! WAL file names as `archive_command` sees them: segments, `.partial` segments, timeline
//! `.history` files and backup `.backup` history files.

use std::fmt;
use std::str::FromStr;

/// A timeline ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimelineId(pub u32);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What kind of file a WAL file name denotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalFileKind {
    Segment,
    Partial,
    History,
    /// `<segment>.<offset 8 hex>.backup`
    BackupHistory,
}

/// A validated WAL file name. The segment's position is kept as PostgreSQL's (log, seg) pair,
/// which only becomes a segment number once the segment size is known. Ordered as the names
/// sort (the name is the first field), which is PostgreSQL's archiving order on a timeline.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalFileName {
    name: String,
    kind: WalFileKind,
    timeline: TimelineId,
    log: u32,
    seg: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a WAL file name (segment, .partial, .history or .backup)")]
pub struct WalNameError(String);

fn hex8(s: &str) -> Option<u32> {
    (s.len() == 8
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase()))
    .then(|| u32::from_str_radix(s, 16).ok())
    .flatten()
}

impl WalFileName {
    /// The name of segment `segno` on `timeline` for a cluster with `segment_size`.
    pub fn segment(timeline: TimelineId, segno: u64, segment_size: u32) -> Self {
        let per_log = 0x1_0000_0000u64 / u64::from(segment_size);
        let log = (segno / per_log) as u32;
        let seg = (segno % per_log) as u32;
        WalFileName {
            name: format!("{:08X}{:08X}{:08X}", timeline.0, log, seg),
            kind: WalFileKind::Segment,
            timeline,
            log,
            seg,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }
    pub fn kind(&self) -> WalFileKind {
        self.kind
    }
    pub fn timeline(&self) -> TimelineId {
        self.timeline
    }
    /// The 24-character segment name this file belongs to (None for `.history`).
    pub fn segment_name(&self) -> Option<&str> {
        (self.kind != WalFileKind::History).then(|| &self.name[..24])
    }

    /// Segment number, given the cluster's segment size (None for `.history`).
    pub fn segment_number(&self, segment_size: u32) -> Option<u64> {
        if self.kind == WalFileKind::History {
            return None;
        }
        let per_log = 0x1_0000_0000u64 / u64::from(segment_size);
        Some(u64::from(self.log) * per_log + u64::from(self.seg))
    }

    /// Whether the name is PostgreSQL's own for a cluster with `segment_size`: the segment
    /// part counts only up to the number of segments in 4 GiB (`00000001000000000000
    /// 0100` names no 16 MiB segment, though it would add up to the same position as the
    /// next log's first). Always true for `.history`.
    pub fn is_canonical(&self, segment_size: u32) -> bool {
        self.kind == WalFileKind::History
            || u64::from(self.seg) < 0x1_0000_0000u64 / u64::from(segment_size)
    }

    /// The byte offset in its segment where a backup began (`.backup` files only).
    pub fn backup_offset(&self) -> Option<u32> {
        (self.kind == WalFileKind::BackupHistory)
            .then(|| hex8(&self.name[25..33]))
            .flatten()
    }

    /// The first byte position of this segment in the WAL stream.
    pub fn start_lsn(&self, segment_size: u32) -> Option<crate::Lsn> {
        self.segment_number(segment_size)
            .map(|n| crate::Lsn(n * u64::from(segment_size)))
    }
}

impl FromStr for WalFileName {
    type Err = WalNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || WalNameError(s.to_string());
        if !s.is_ascii() {
            return Err(err());
        }
        let (stem, kind) = if let Some(stem) = s.strip_suffix(".history") {
            if stem.len() != 8 {
                return Err(err());
            }
            let timeline = TimelineId(hex8(stem).ok_or_else(err)?);
            return Ok(WalFileName {
                name: s.to_string(),
                kind: WalFileKind::History,
                timeline,
                log: 0,
                seg: 0,
            });
        } else if let Some(stem) = s.strip_suffix(".partial") {
            (stem, WalFileKind::Partial)
        } else if let Some(stem) = s.strip_suffix(".backup") {
            // <segment>.<offset>
            let (seg, off) = stem.split_once('.').ok_or_else(err)?;
            hex8(off).ok_or_else(err)?;
            (seg, WalFileKind::BackupHistory)
        } else {
            (s, WalFileKind::Segment)
        };
        if stem.len() != 24 {
            return Err(err());
        }
        let timeline = hex8(&stem[0..8]).ok_or_else(err)?;
        let log = hex8(&stem[8..16]).ok_or_else(err)?;
        let seg = hex8(&stem[16..24]).ok_or_else(err)?;
        if timeline == 0 {
            return Err(err());
        }
        Ok(WalFileName {
            name: s.to_string(),
            kind,
            timeline: TimelineId(timeline),
            log,
            seg,
        })
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        let s: WalFileName = "000000010000000A000000FF".parse().unwrap();
        assert_eq!(s.kind(), WalFileKind::Segment);
        assert_eq!(s.timeline(), TimelineId(1));
        assert_eq!(s.segment_number(16 << 20), Some(0xA * 256 + 0xFF));
        let p: WalFileName = "000000020000000000000003.partial".parse().unwrap();
        assert_eq!(p.kind(), WalFileKind::Partial);
        assert_eq!(p.segment_name(), Some("000000020000000000000003"));
        let h: WalFileName = "00000002.history".parse().unwrap();
        assert_eq!(h.kind(), WalFileKind::History);
        assert_eq!(h.timeline(), TimelineId(2));
        let b: WalFileName = "000000010000000000000002.00000028.backup".parse().unwrap();
        assert_eq!(b.kind(), WalFileKind::BackupHistory);
        assert_eq!(b.backup_offset(), Some(0x28));
        assert_eq!(s.backup_offset(), None);
    }

    #[test]
    fn canonical_names_depend_on_the_segment_size() {
        let last: WalFileName = "0000000100000000000000FF".parse().unwrap();
        let beyond: WalFileName = "000000010000000000000100".parse().unwrap();
        assert!(last.is_canonical(16 << 20));
        assert!(!beyond.is_canonical(16 << 20));
        assert!(beyond.is_canonical(1 << 20));
        assert!(!last.is_canonical(1 << 30));
        let h: WalFileName = "00000002.history".parse().unwrap();
        assert!(h.is_canonical(1 << 30));
    }

    #[test]
    fn rejects_non_wal_names() {
        for bad in [
            "",
            "RECOVERYXLOG",
            "00000001000000000000000",
            "0000000100000000000000001",
            "000000010000000000000001.gz",
            "00000001.historyx",
            "000000000000000000000001",
            "00000001000000000000000a",
            "../00000001000000000000001",
            "000000010000000000000002.0000028.backup",
        ] {
            assert!(bad.parse::<WalFileName>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn segment_name_from_number_round_trips() {
        let n = WalFileName::segment(TimelineId(3), 0x1_05, 16 << 20);
        assert_eq!(n.as_str(), "000000030000000100000005");
        let parsed: WalFileName = n.as_str().parse().unwrap();
        assert_eq!(parsed.segment_number(16 << 20), Some(0x105));
        let big = WalFileName::segment(TimelineId(1), 3, 1 << 30);
        assert_eq!(big.as_str(), "000000010000000000000003");
        // documents keep names as strings and timelines as numbers, and refuse bad ones
        assert_eq!(
            serde_json::to_string(&n).unwrap(),
            "\"000000030000000100000005\""
        );
        let back: WalFileName = serde_json::from_str("\"000000030000000100000005\"").unwrap();
        assert_eq!(back, n);
        assert!(serde_json::from_str::<WalFileName>("\"../etc\"").is_err());
        assert_eq!(serde_json::to_string(&TimelineId(3)).unwrap(), "3");
        assert!(serde_json::from_str::<TimelineId>("0").is_err());
    }
}

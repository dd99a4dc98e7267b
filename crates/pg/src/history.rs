//! Timeline history files (`00000003.history`): which timeline each one forked from, and at
//! which LSN.

use crate::{Lsn, TimelineId};

/// One line of a history file: `parent` ended at `switch_point`, where the next timeline begins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub parent: TimelineId,
    pub switch_point: Lsn,
}

#[derive(Debug, thiserror::Error)]
#[error("timeline history line {line}: {detail}")]
pub struct HistoryError {
    pub line: usize,
    pub detail: String,
}

/// Parse a history file: lines `<parent tli>\t<switch LSN>\t<reason>`, comments with `#`.
pub fn parse_history(text: &str) -> Result<Vec<HistoryEntry>, HistoryError> {
    let mut out: Vec<HistoryEntry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |detail: &str| HistoryError {
            line: i + 1,
            detail: detail.to_string(),
        };
        let mut fields = line.split_whitespace();
        let parent: u32 = fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| err("bad timeline ID"))?;
        let switch_point: Lsn = fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| err("bad switch point"))?;
        if let Some(prev) = out.last() {
            if parent <= prev.parent.0 || switch_point < prev.switch_point {
                return Err(err("timeline IDs and switch points must increase"));
            }
        }
        out.push(HistoryEntry {
            parent: TimelineId(parent),
            switch_point,
        });
    }
    Ok(out)
}

/// Check the bytes of timeline `timeline`'s history file, as archive-wal receives it and
/// restore-wal hands it out: text, at least one line, every parent older than `timeline`. An
/// empty or garbled file must never be archived: the archive is create-only, so it would
/// block the real one forever.
pub fn parse_history_file(
    timeline: TimelineId,
    bytes: &[u8],
) -> Result<Vec<HistoryEntry>, HistoryError> {
    let text = std::str::from_utf8(bytes).map_err(|e| HistoryError {
        line: 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        detail: "not text (invalid UTF-8)".into(),
    })?;
    let entries = parse_history(text)?;
    let Some(last) = entries.last() else {
        return Err(HistoryError {
            line: 1,
            detail: "no timeline switch in the file (empty)".into(),
        });
    };
    if last.parent >= timeline {
        return Err(HistoryError {
            line: entries.len(),
            detail: format!(
                "timeline {} cannot be a parent of timeline {timeline}",
                last.parent
            ),
        });
    }
    Ok(entries)
}

/// The timelines that lead to `target`, oldest first, each with the LSN where it begins
/// (`Lsn(0)` for the first) and the LSN where it ends (`None` for `target` itself).
pub fn timeline_path(
    target: TimelineId,
    history: &[HistoryEntry],
) -> Vec<(TimelineId, Lsn, Option<Lsn>)> {
    let mut out = Vec::with_capacity(history.len() + 1);
    let mut begin = Lsn(0);
    for h in history {
        out.push((h.parent, begin, Some(h.switch_point)));
        begin = h.switch_point;
    }
    out.push((target, begin, None));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_builds_path() {
        let text =
            "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tat restore point \"x\"\n";
        let h = parse_history(text).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[1].switch_point, "0/5000000".parse().unwrap());
        let path = timeline_path(TimelineId(3), &h);
        assert_eq!(path[0], (TimelineId(1), Lsn(0), Some(Lsn(0x3000158))));
        assert_eq!(path[2], (TimelineId(3), Lsn(0x5000000), None));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_history("x 0/1 r").is_err());
        assert!(parse_history("1 zz r").is_err());
        assert!(parse_history("2 0/5 a\n1 0/6 b").is_err());
    }

    #[test]
    fn history_files_need_a_line_and_older_parents() {
        let t = TimelineId(3);
        assert_eq!(
            parse_history_file(t, b"1\t0/3000158\tx\n2\t0/5000000\ty\n")
                .unwrap()
                .len(),
            2
        );
        for bad in [
            &b""[..],
            b"\n# nothing\n",
            b"1 zz r\n",
            b"3\t0/5000000\tself\n",
            b"1\t0/3000158\t\xff\xfe\n",
        ] {
            assert!(
                parse_history_file(t, bad).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

//! Backup history files (`000000010000000000000002.00000028.backup`): the server archives one
//! when a base backup ends. pitr only stores them, but checks that the file is what its name
//! says before it enters the create-only archive.

use crate::{Lsn, WalFileKind, WalFileName};

/// The lines of a backup history file pitr checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupHistory {
    pub start: Lsn,
    /// The segment named in `START WAL LOCATION: X/X (file <segment>)`.
    pub start_file: String,
    pub stop: Option<Lsn>,
    pub checkpoint: Option<Lsn>,
    pub label: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("backup history file {name}: {detail}")]
pub struct BackupHistoryError {
    pub name: String,
    pub detail: String,
}

/// `X/X (file <segment>)`.
fn location(value: &str) -> Option<(Lsn, &str)> {
    let (lsn, rest) = value.split_once(' ')?;
    let file = rest.strip_prefix("(file ")?.strip_suffix(')')?;
    Some((lsn.parse().ok()?, file))
}

/// Parse the backup history file `name` and check that its start location is the one the
/// name says: the segment in the name and in the file, and the offset in the name.
pub fn parse_backup_history(
    name: &WalFileName,
    bytes: &[u8],
) -> Result<BackupHistory, BackupHistoryError> {
    let err = |detail: String| BackupHistoryError {
        name: name.to_string(),
        detail,
    };
    let (Some(segment), Some(offset)) = (name.segment_name(), name.backup_offset()) else {
        return Err(err("not a backup history file name".into()));
    };
    debug_assert_eq!(name.kind(), WalFileKind::BackupHistory);
    let text = std::str::from_utf8(bytes).map_err(|_| err("not text (invalid UTF-8)".into()))?;
    let (mut start, mut stop, mut checkpoint, mut label) = (None, None, None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(": ") else {
            continue;
        };
        let bad = |what: &str| err(format!("{what} {value:?} does not parse"));
        match key {
            "START WAL LOCATION" => {
                start = Some(location(value).ok_or_else(|| bad("START WAL LOCATION"))?)
            }
            "STOP WAL LOCATION" => {
                stop = Some(location(value).ok_or_else(|| bad("STOP WAL LOCATION"))?.0)
            }
            "CHECKPOINT LOCATION" => {
                checkpoint = Some(
                    value
                        .parse::<Lsn>()
                        .map_err(|_| bad("CHECKPOINT LOCATION"))?,
                )
            }
            "LABEL" => label = Some(value.to_string()),
            _ => {}
        }
    }
    let Some((start, start_file)) = start else {
        return Err(err("no START WAL LOCATION line".into()));
    };
    // The name carries the timeline the backup stopped on, the file the one it started on
    // (they differ when a standby was promoted during the backup): compare the positions.
    let position = |s: &str| s.get(8..24).map(str::to_owned);
    let valid_file = start_file.len() == 24 && start_file.parse::<WalFileName>().is_ok();
    if !valid_file || position(start_file) != position(segment) {
        return Err(err(format!(
            "START WAL LOCATION is in segment {start_file}, but the name says {segment}"
        )));
    }
    // The segment size is not in the file: the name fits if some size PostgreSQL allows
    // (a power of two from 1 MiB to 1 GiB) puts `start` at that segment and offset.
    let fits = (20..=30).map(|bits| 1u32 << bits).any(|size| {
        let segno = start.segment_number(size);
        position(WalFileName::segment(name.timeline(), segno, size).as_str()) == position(segment)
            && start.0 % u64::from(size) == u64::from(offset)
    });
    if !fits {
        return Err(err(format!(
            "START WAL LOCATION {start} is not offset {offset:#X} of segment {segment}"
        )));
    }
    if let Some(stop) = stop {
        if stop < start {
            return Err(err(format!(
                "STOP WAL LOCATION {stop} is before START WAL LOCATION {start}"
            )));
        }
    }
    Ok(BackupHistory {
        start,
        start_file: start_file.to_string(),
        stop,
        checkpoint,
        label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "000000010000000000000002.00000028.backup";
    const FILE: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)
STOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)
CHECKPOINT LOCATION: 0/2000060
BACKUP METHOD: streamed
BACKUP FROM: primary
START TIME: 2026-11-25 14:03:00 UTC
LABEL: pitr-test
START TIMELINE: 1
STOP TIME: 2026-11-25 14:03:01 UTC
STOP TIMELINE: 1
";

    #[test]
    fn parses_what_the_server_writes() {
        let name: WalFileName = NAME.parse().unwrap();
        let b = parse_backup_history(&name, FILE.as_bytes()).unwrap();
        assert_eq!(b.start, Lsn(0x2000028));
        assert_eq!(b.stop, Some(Lsn(0x2000100)));
        assert_eq!(b.checkpoint, Some(Lsn(0x2000060)));
        assert_eq!(b.label.as_deref(), Some("pitr-test"));
    }

    #[test]
    fn refuses_files_that_are_not_what_the_name_says() {
        let name: WalFileName = NAME.parse().unwrap();
        let other_offset: WalFileName = "000000010000000000000002.00000030.backup".parse().unwrap();
        for (name, text) in [
            (&name, ""),
            (&name, "garbage\n"),
            (
                &name,
                "START WAL LOCATION: zz (file 000000010000000000000002)\n",
            ),
            (&name, "START WAL LOCATION: 0/2000028\n"),
            (
                &name,
                "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\n",
            ),
            (
                &name,
                "START WAL LOCATION: 0/3000028 (file 000000010000000000000002)\n",
            ),
            (&other_offset, FILE),
            (
                &name,
                "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                 STOP WAL LOCATION: 0/1000000 (file 000000010000000000000001)\n",
            ),
        ] {
            assert!(
                parse_backup_history(name, text.as_bytes()).is_err(),
                "{name}: {text:?} accepted"
            );
        }
    }
}

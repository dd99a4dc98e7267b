//! Reading the times out of a WAL segment: the commit, abort and restore-point records a time
//! target can stop at. Only record framing is decoded (headers, continuation across pages);
//! everything else is skipped.

use crate::{LongPageHeader, Lsn, PageHeaderError};

const SHORT_HEADER: usize = 24;
const RECORD_HEADER: usize = 24;
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_RESTORE_POINT: u8 = 0x70;
/// Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// A record recovery can stop at, with its time in µs since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedRecord {
    pub lsn: Lsn,
    pub kind: TimedKind,
    pub unix_micros: i64,
    /// The record's transaction ID (`xl_xid`): the committing or aborting transaction. 0 for
    /// restore points and for COMMIT/ABORT PREPARED, whose prepared transaction's ID is not
    /// read here.
    pub xid: u32,
    /// A restore point's name (`pg_create_restore_point`).
    pub restore_point: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimedKind {
    Commit,
    Abort,
    RestorePoint,
}

fn maxalign(n: usize) -> usize {
    (n + 7) & !7
}

/// Every commit, abort and restore point that starts in `segment`, one whole WAL segment that
/// begins at `start`. Scanning stops at the end of valid WAL: a page from another place in the
/// WAL stream (a recycled segment's old contents), a zero record length, or a WAL switch.
pub fn timed_records(segment: &[u8], start: Lsn) -> Result<Vec<TimedRecord>, PageHeaderError> {
    let header = LongPageHeader::parse(segment)?;
    if header.page_address != start {
        return Err(PageHeaderError::WrongAddress {
            found: header.page_address,
            expected: start,
        });
    }
    let page_size = header.block_size as usize;
    let seg_start = header.page_address.0;
    let mut out = Vec::new();
    // Position in the segment of the next record, and the bytes of a record being assembled.
    let mut pos = {
        let info = header.info;
        let rem = u32::from_le_bytes(segment[16..20].try_into().expect("4 bytes")) as usize;
        let data = LONG_HEADER_DATA;
        if info & XLP_FIRST_IS_CONTRECORD != 0 {
            // Skip the tail of a record that began in the previous segment, page by page.
            match skip_continuation(segment, page_size, data, rem) {
                Some(p) => p,
                None => return Ok(out),
            }
        } else {
            data
        }
    };
    loop {
        pos = maxalign(pos);
        if pos % page_size == 0 {
            if pos >= segment.len() {
                break;
            }
            if !page_ok(segment, pos, seg_start) {
                break;
            }
            pos += SHORT_HEADER;
        }
        if pos + 4 > segment.len() {
            break;
        }
        let start = pos;
        let lsn = Lsn(seg_start + start as u64);
        let Some(record) = assemble(segment, page_size, seg_start, &mut pos) else {
            break;
        };
        if record.len() < RECORD_HEADER {
            break;
        }
        let info = record[16];
        let rmid = record[17];
        if rmid == RM_XLOG_ID && info & 0xF0 == XLOG_SWITCH {
            break;
        }
        let kind = match (rmid, info & 0x70) {
            (RM_XACT_ID, 0x00) | (RM_XACT_ID, 0x30) => Some(TimedKind::Commit),
            (RM_XACT_ID, 0x20) | (RM_XACT_ID, 0x40) => Some(TimedKind::Abort),
            (RM_XLOG_ID, XLOG_RESTORE_POINT) if info & 0xF0 == XLOG_RESTORE_POINT => {
                Some(TimedKind::RestorePoint)
            }
            _ => None,
        };
        if let Some(kind) = kind {
            let Some(main) = main_data(&record) else {
                continue;
            };
            let Some(t) = main
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(i64::from_le_bytes)
            else {
                continue;
            };
            let prepared = rmid == RM_XACT_ID && matches!(info & 0x70, 0x30 | 0x40);
            let xid = u32::from_le_bytes(record[4..8].try_into().expect("4 bytes"));
            let restore_point = (kind == TimedKind::RestorePoint).then(|| {
                let name = main.get(8..).unwrap_or_default();
                let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                String::from_utf8_lossy(&name[..end]).into_owned()
            });
            out.push(TimedRecord {
                lsn,
                kind,
                unix_micros: t + PG_EPOCH_OFFSET_US,
                xid: if prepared || kind == TimedKind::RestorePoint {
                    0
                } else {
                    xid
                },
                restore_point,
            });
        }
    }
    Ok(out)
}

const LONG_HEADER_DATA: usize = crate::LONG_PAGE_HEADER_LEN;

fn page_ok(segment: &[u8], page: usize, seg_start: u64) -> bool {
    if page + SHORT_HEADER > segment.len() {
        return false;
    }
    let addr = u64::from_le_bytes(segment[page + 8..page + 16].try_into().expect("8 bytes"));
    addr == seg_start + page as u64
}

/// Skip `rem` continuation bytes starting at `data` on the first page; returns the position
/// after them.
fn skip_continuation(segment: &[u8], page_size: usize, data: usize, rem: usize) -> Option<usize> {
    let mut pos = data;
    let mut left = rem;
    loop {
        let room = page_size - pos % page_size;
        if left <= room {
            return Some(pos + left);
        }
        left -= room;
        pos += room;
        if pos >= segment.len() {
            return None;
        }
        pos += SHORT_HEADER;
    }
}

/// Copy the record starting at `*pos` out of the pages it spans; `None` at the end of valid
/// WAL or when it runs past the segment.
fn assemble(segment: &[u8], page_size: usize, seg_start: u64, pos: &mut usize) -> Option<Vec<u8>> {
    let first_room = page_size - *pos % page_size;
    // The 4-byte length is always on this page (records start 8-aligned, pages end 8-aligned).
    let tot_len = u32::from_le_bytes(segment[*pos..*pos + 4].try_into().ok()?) as usize;
    if !(RECORD_HEADER..=1 << 30).contains(&tot_len) {
        return None;
    }
    let mut out = Vec::with_capacity(tot_len.min(1 << 20));
    let mut left = tot_len;
    let take = left.min(first_room);
    out.extend_from_slice(segment.get(*pos..*pos + take)?);
    *pos += take;
    left -= take;
    while left > 0 {
        if *pos >= segment.len() || !page_ok(segment, *pos, seg_start) {
            return None;
        }
        *pos += SHORT_HEADER;
        let take = left.min(page_size - SHORT_HEADER);
        out.extend_from_slice(segment.get(*pos..*pos + take)?);
        *pos += take;
        left -= take;
    }
    Some(out)
}

/// A record's main data (its first 8 bytes are `xact_time` of commit/abort records and
/// `rp_time` of restore points, followed by a restore point's name).
fn main_data(record: &[u8]) -> Option<&[u8]> {
    let mut p = RECORD_HEADER;
    let main_len = loop {
        let id = *record.get(p)?;
        match id {
            255 => break *record.get(p + 1)? as usize,
            254 => break u32::from_le_bytes(record.get(p + 1..p + 5)?.try_into().ok()?) as usize,
            253 => p += 3,    // replication origin
            252 => p += 5,    // top-level xid
            _ => return None, // block references: not a record we read times from
        }
    };
    let start = record.len().checked_sub(main_len)?;
    record.get(start..)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: usize = 1 << 20;
    const PAGE: usize = 8192;

    fn page_header(seg: &mut [u8], page: usize, start: u64, info: u16, rem: u32) {
        let at = page * PAGE;
        seg[at..at + 2].copy_from_slice(&0xD110u16.to_le_bytes());
        seg[at + 2..at + 4].copy_from_slice(&info.to_le_bytes());
        seg[at + 4..at + 8].copy_from_slice(&1u32.to_le_bytes());
        seg[at + 8..at + 16].copy_from_slice(&(start + at as u64).to_le_bytes());
        seg[at + 16..at + 20].copy_from_slice(&rem.to_le_bytes());
        if page == 0 {
            seg[24..32].copy_from_slice(&42u64.to_le_bytes());
            seg[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
            seg[36..40].copy_from_slice(&(PAGE as u32).to_le_bytes());
        }
    }

    fn commit(time: i64, rmid: u8, info: u8) -> Vec<u8> {
        let mut r = vec![0u8; 24];
        r[0..4].copy_from_slice(&34u32.to_le_bytes());
        r[16] = info;
        r[17] = rmid;
        r.extend_from_slice(&[255, 8]);
        r.extend_from_slice(&time.to_le_bytes());
        r
    }

    fn restore_point(time: i64, name: &str) -> Vec<u8> {
        let mut r = vec![0u8; 24];
        r[0..4].copy_from_slice(&(24u32 + 2 + 72).to_le_bytes());
        r[16] = XLOG_RESTORE_POINT;
        r[17] = RM_XLOG_ID;
        r.extend_from_slice(&[255, 72]);
        r.extend_from_slice(&time.to_le_bytes());
        let mut n = [0u8; 64];
        n[..name.len()].copy_from_slice(name.as_bytes());
        r.extend_from_slice(&n);
        r
    }

    #[test]
    fn finds_commits_across_a_page_boundary() {
        let start = 0x0300_0000u64;
        let mut seg = vec![0u8; SEG];
        page_header(&mut seg, 0, start, 0x0002, 0);
        let mut a = commit(1_000, RM_XACT_ID, 0x00);
        a[4..8].copy_from_slice(&745u32.to_le_bytes());
        seg[40..40 + a.len()].copy_from_slice(&a);
        // a filler record (another resource manager) up to 16 bytes before the page end
        let filler = PAGE - 16 - 80;
        seg[80..84].copy_from_slice(&(filler as u32).to_le_bytes());
        seg[80 + 17] = 10;
        // an abort whose 34 bytes straddle pages 0 and 1
        let b = commit(2_000, RM_XACT_ID, 0x20);
        let at = PAGE - 16;
        seg[at..PAGE].copy_from_slice(&b[..16]);
        page_header(&mut seg, 1, start, XLP_FIRST_IS_CONTRECORD, 18);
        seg[PAGE + 24..PAGE + 24 + 18].copy_from_slice(&b[16..]);
        // a record that is not timed, then a restore point
        let mut c = commit(0, 10, 0x00);
        c[17] = 10;
        let cp = maxalign(PAGE + 24 + 18);
        seg[cp..cp + 34].copy_from_slice(&c);
        let d = restore_point(3_000, "before-drop");
        let dp = maxalign(cp + 34);
        seg[dp..dp + d.len()].copy_from_slice(&d);

        let found = timed_records(&seg, Lsn(start)).unwrap();
        let got: Vec<_> = found
            .iter()
            .map(|r| (r.lsn.0 - start, r.kind, r.unix_micros - PG_EPOCH_OFFSET_US))
            .collect();
        assert_eq!(
            got,
            vec![
                (40, TimedKind::Commit, 1_000),
                ((PAGE - 16) as u64, TimedKind::Abort, 2_000),
                (dp as u64, TimedKind::RestorePoint, 3_000),
            ]
        );
        // the committing transaction, and the restore point's name
        assert_eq!(found[0].xid, 745);
        assert_eq!(found[2].restore_point.as_deref(), Some("before-drop"));
        assert_eq!(found[0].restore_point, None);
    }

    #[test]
    fn a_recycled_segment_has_no_records_for_its_new_name() {
        let mut seg = vec![0u8; SEG];
        page_header(&mut seg, 0, 0x0100_0000, 0x0002, 0);
        let a = commit(1_000, RM_XACT_ID, 0x00);
        seg[40..40 + a.len()].copy_from_slice(&a);
        assert!(timed_records(&seg, Lsn(0x0500_0000)).is_err());
        assert_eq!(timed_records(&seg, Lsn(0x0100_0000)).unwrap().len(), 1);
    }
}

//! The long page header at the start of every WAL segment: it tells which cluster wrote the
//! segment and where in the WAL stream it belongs.

use crate::{Lsn, WalFileName};

pub const LONG_PAGE_HEADER_LEN: usize = 40;
const XLP_LONG_HEADER: u16 = 0x0002;

/// The fields of `XLogLongPageHeaderData` pitr checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongPageHeader {
    pub magic: u16,
    pub info: u16,
    pub timeline: u32,
    pub page_address: Lsn,
    pub system_identifier: u64,
    pub segment_size: u32,
    pub block_size: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PageHeaderError {
    #[error("too short for a WAL long page header ({0} bytes)")]
    TooShort(usize),
    #[error("first page has no long header (xlp_info {0:#06x}): not a WAL segment")]
    NotLong(u16),
    #[error("implausible segment size {0} in the page header")]
    BadSegmentSize(u32),
    #[error("implausible block size {0} in the page header")]
    BadBlockSize(u32),
    #[error("page address {found} does not match the file name, which needs {expected}")]
    WrongAddress { found: Lsn, expected: Lsn },
    #[error("{name} is not a segment name of a cluster with {segment_size}-byte segments")]
    NotCanonical { name: String, segment_size: u32 },
    #[error("file is {actual} bytes but the header says segments are {expected} bytes")]
    WrongSize { actual: u64, expected: u32 },
}

impl LongPageHeader {
    pub fn parse(buf: &[u8]) -> Result<Self, PageHeaderError> {
        if buf.len() < LONG_PAGE_HEADER_LEN {
            return Err(PageHeaderError::TooShort(buf.len()));
        }
        let u16_at = |o: usize| u16::from_le_bytes([buf[o], buf[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().expect("8 bytes"));
        let info = u16_at(2);
        if info & XLP_LONG_HEADER == 0 {
            return Err(PageHeaderError::NotLong(info));
        }
        let header = LongPageHeader {
            magic: u16_at(0),
            info,
            timeline: u32_at(4),
            page_address: Lsn(u64_at(8)),
            // 4 bytes xlp_rem_len at 16, 4 bytes padding at 20 (MAXALIGN)
            system_identifier: u64_at(24),
            segment_size: u32_at(32),
            block_size: u32_at(36),
        };
        let seg = header.segment_size;
        if !seg.is_power_of_two() || !(1 << 20..=1 << 30).contains(&seg) {
            return Err(PageHeaderError::BadSegmentSize(seg));
        }
        let blk = header.block_size;
        if !blk.is_power_of_two() || !(1 << 10..=1 << 16).contains(&blk) {
            return Err(PageHeaderError::BadBlockSize(blk));
        }
        Ok(header)
    }

    /// Check that this header belongs at the start of the segment `name`, and that the file
    /// holding it is one whole segment long.
    pub fn check_belongs_to(
        &self,
        name: &WalFileName,
        file_len: u64,
    ) -> Result<(), PageHeaderError> {
        if !name.is_canonical(self.segment_size) {
            return Err(PageHeaderError::NotCanonical {
                name: name.to_string(),
                segment_size: self.segment_size,
            });
        }
        if let Some(expected) = name.start_lsn(self.segment_size) {
            if expected != self.page_address {
                return Err(PageHeaderError::WrongAddress {
                    found: self.page_address,
                    expected,
                });
            }
        }
        if file_len != u64::from(self.segment_size) {
            return Err(PageHeaderError::WrongSize {
                actual: file_len,
                expected: self.segment_size,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_bytes(page_address: u64, sysid: u64, seg_size: u32) -> Vec<u8> {
        let mut b = vec![0u8; 8192];
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x0006u16.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..16].copy_from_slice(&page_address.to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&seg_size.to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b
    }

    #[test]
    fn parses_and_checks_address() {
        let b = header_bytes(0x0300_0000, 7_000_000_000_000_000_001, 16 << 20);
        let h = LongPageHeader::parse(&b).unwrap();
        assert_eq!(h.system_identifier, 7_000_000_000_000_000_001);
        assert_eq!(h.segment_size, 16 << 20);
        let good: WalFileName = "000000010000000000000003".parse().unwrap();
        h.check_belongs_to(&good, 16 << 20).unwrap();
        let bad: WalFileName = "000000010000000000000004".parse().unwrap();
        assert!(matches!(
            h.check_belongs_to(&bad, 16 << 20),
            Err(PageHeaderError::WrongAddress { .. })
        ));
        // the same position under a name PostgreSQL never gives it
        let h = LongPageHeader::parse(&header_bytes(0x1_0000_0000, 1, 16 << 20)).unwrap();
        let odd: WalFileName = "000000010000000000000100".parse().unwrap();
        assert!(matches!(
            h.check_belongs_to(&odd, 16 << 20),
            Err(PageHeaderError::NotCanonical { .. })
        ));
        let h = LongPageHeader::parse(&b).unwrap();
        assert!(matches!(
            h.check_belongs_to(&good, 8192),
            Err(PageHeaderError::WrongSize { .. })
        ));
    }

    #[test]
    fn rejects_non_wal() {
        assert_eq!(
            LongPageHeader::parse(&[0u8; 10]),
            Err(PageHeaderError::TooShort(10))
        );
        assert!(matches!(
            LongPageHeader::parse(&[0u8; 64]),
            Err(PageHeaderError::NotLong(0))
        ));
        let b = header_bytes(0, 1, 12345);
        assert!(matches!(
            LongPageHeader::parse(&b),
            Err(PageHeaderError::BadSegmentSize(12345))
        ));
    }
}

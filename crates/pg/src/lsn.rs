//! Log sequence numbers, shown the way PostgreSQL shows them (`16/B374D848`).

use std::fmt;
use std::str::FromStr;

/// A position in the WAL stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

#[derive(Debug, thiserror::Error)]
#[error("invalid LSN {0:?}: expected the form X/X with hexadecimal halves")]
pub struct LsnParseError(String);

impl Lsn {
    /// Number of the segment that holds this LSN.
    pub fn segment_number(self, segment_size: u32) -> u64 {
        self.0 / u64::from(segment_size)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = LsnParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_postgres_form() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        // the same form in documents
        assert_eq!(serde_json::to_string(&lsn).unwrap(), "\"16/B374D848\"");
        let back: Lsn = serde_json::from_str("\"16/B374D848\"").unwrap();
        assert_eq!(back, lsn);
        assert!(serde_json::from_str::<Lsn>("\"16\"").is_err());
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "1", "/1", "1/", "G/0", "123456789/0", "1/2/3"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn segment_number_uses_segment_size() {
        let lsn: Lsn = "1/2000000".parse().unwrap();
        assert_eq!(lsn.segment_number(16 * 1024 * 1024), 0x102);
    }
}

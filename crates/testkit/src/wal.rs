//! PostgreSQL's WAL vocabulary as tests need it to check what a server reports: segment file
//! names and `X/X` LSNs. (The testkit depends on no pitr crate, so it does not use pitr-pg.)

/// Segment number of a 24-hex-digit segment file name (16 MiB segments), `None` for other names.
pub fn segno(name: &str) -> Option<u64> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    Some(log * 0x100 + seg)
}

/// Segment file name for `timeline` and segment number `segno` (16 MiB segments).
pub fn segment_name(timeline: u32, segno: u64) -> String {
    format!("{timeline:08X}{:08X}{:08X}", segno / 0x100, segno % 0x100)
}

/// An LSN in PostgreSQL's `X/X` form as a number; panics on anything else.
#[track_caller]
pub fn lsn(text: &str) -> u64 {
    let parsed = text.split_once('/').and_then(|(hi, lo)| {
        let hi = u64::from_str_radix(hi, 16).ok()?;
        let lo = u64::from_str_radix(lo, 16).ok()?;
        (hi <= u64::from(u32::MAX) && lo <= u64::from(u32::MAX)).then_some(hi << 32 | lo)
    });
    parsed.unwrap_or_else(|| panic!("{text:?} is not an LSN (X/X)"))
}

//! Times as pitr reads and prints them: RFC 3339 or PostgreSQL's own form, always with a zone.

use anyhow::bail;
use chrono::{DateTime, Utc};

/// A time as PostgreSQL reads it, unambiguous: `2026-11-25 14:02:59.123456+00`.
pub fn format_pg_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

/// RFC 3339 or PostgreSQL's `YYYY-MM-DD HH:MM:SS[.f][+TZ]`; no zone means this machine's.
pub fn parse_time(s: &str) -> anyhow::Result<DateTime<Utc>> {
    let t = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&Utc));
    }
    let t2 = if t.as_bytes().get(10) == Some(&b'T') {
        format!("{} {}", &t[..10], &t[11..])
    } else {
        t.to_string()
    };
    let t2 = t2.trim_end_matches(" UTC").trim_end_matches('Z');
    // +HH or +HHMM or +HH:MM
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%z",
    ] {
        if let Ok(d) = DateTime::parse_from_str(t2, fmt) {
            return Ok(d.with_timezone(&Utc));
        }
    }
    if t.ends_with('Z') || t.ends_with(" UTC") {
        if let Ok(n) = chrono::NaiveDateTime::parse_from_str(t2, "%Y-%m-%d %H:%M:%S%.f") {
            return Ok(n.and_utc());
        }
    }
    if let Ok(n) = chrono::NaiveDateTime::parse_from_str(t2, "%Y-%m-%d %H:%M:%S%.f") {
        use chrono::TimeZone;
        if let chrono::LocalResult::Single(d) = chrono::Local.from_local_datetime(&n) {
            return Ok(d.with_timezone(&Utc));
        }
    }
    bail!("{s:?} is not a time: use RFC 3339 (2026-11-25T14:02:59Z) or '2026-11-25 14:02:59+00'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let want: DateTime<Utc> = "2026-11-25T14:02:59Z".parse().unwrap();
        for s in [
            "2026-11-25T14:02:59Z",
            "2026-11-25T14:02:59+00:00",
            "2026-11-25 14:02:59+00",
            "2026-11-25 14:02:59+0000",
            "2026-11-25 16:02:59+02",
            "2026-11-25 14:02:59 UTC",
        ] {
            assert_eq!(parse_time(s).unwrap(), want, "{s}");
        }
        assert!(parse_time("yesterday").is_err());
        assert_eq!(format_pg_time(&want), "2026-11-25 14:02:59.000000+00");
    }
}

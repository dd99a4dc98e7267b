//! Times as pitr reads and prints them: RFC 3339 or PostgreSQL's own form, always with a zone.
//! Every time pitr prints is in a form `--target-time` accepts; a time without a zone is
//! refused, with both readings (this machine's zone and UTC) shown, rather than guessed.

use anyhow::bail;
use chrono::{DateTime, FixedOffset, NaiveDateTime, Offset, TimeZone, Utc};

/// A time as PostgreSQL reads it, unambiguous: `2026-11-25 14:02:59.123456+00`.
pub fn format_pg_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

/// A time as `list` and `info` print it, in UTC: `2026-11-25 14:02:59+00`, with the fraction
/// (to the microsecond) only when there is one, so that copying it into `--target-time` means
/// exactly that moment.
pub fn format_time(t: &DateTime<Utc>) -> String {
    use chrono::{SubsecRound, Timelike};
    let t = t.trunc_subsecs(6);
    if t.nanosecond() == 0 {
        t.format("%Y-%m-%d %H:%M:%S+00").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
    }
}

/// RFC 3339 or PostgreSQL's `YYYY-MM-DD HH:MM:SS[.f][+TZ]` (or ` UTC`). A time without a zone
/// is an error showing what it would mean here and in UTC: a restore target off by the
/// machine's UTC offset is a restore to the wrong hour.
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
    if let Ok(n) = NaiveDateTime::parse_from_str(t2, "%Y-%m-%d %H:%M:%S%.f") {
        let here = chrono::Local
            .from_local_datetime(&n)
            .earliest()
            .map(|d| d.offset().fix());
        bail!("{}", zone_less(s.trim(), &n, here));
    }
    bail!("{s:?} is not a time: use RFC 3339 (2026-11-25T14:02:59Z) or '2026-11-25 14:02:59+00'")
}

/// The refusal of a zone-less time `s` (`n` parsed), with this machine's offset at that time
/// (`None` when that local time does not exist, in a DST gap).
fn zone_less(s: &str, n: &NaiveDateTime, here: Option<FixedOffset>) -> String {
    let plain = n.format("%Y-%m-%d %H:%M:%S%.f");
    let local = match here {
        Some(off) if off.local_minus_utc() == 0 => {
            return format!(
                "{s:?} has no time zone; write it with one: '{plain}+00' for UTC (this \
                 machine's zone too), or with the offset of the zone you mean ('{plain}+01')"
            )
        }
        Some(off) => {
            let secs = off.local_minus_utc();
            let sign = if secs < 0 { '-' } else { '+' };
            let (h, m) = (secs.abs() / 3600, secs.abs() % 3600 / 60);
            let zone = if m == 0 {
                format!("{sign}{h:02}")
            } else {
                format!("{sign}{h:02}:{m:02}")
            };
            let utc = off
                .from_local_datetime(n)
                .single()
                .map(|d| format_time(&d.with_timezone(&Utc)));
            format!(
                "'{plain}{zone}' for this machine's zone (UTC{zone}, which is {})",
                utc.unwrap_or_default()
            )
        }
        None => "(it does not exist in this machine's zone: a daylight-saving gap)".into(),
    };
    format!("{s:?} has no time zone; write it with one: {local}, or '{plain}+00' for UTC")
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

    /// A time without a zone is refused, naming both readings, whatever this machine's zone.
    #[test]
    fn zone_less_times_are_refused_with_both_readings() {
        for s in [
            "2026-11-25 14:02:59",
            "2026-11-25T14:02:59",
            "2026-11-25 14:02:59.5",
        ] {
            let e = parse_time(s).unwrap_err().to_string();
            assert!(e.contains("has no time zone"), "{s}: {e}");
            assert!(e.contains("+00' for UTC"), "{s}: {e}");
        }
        let n = NaiveDateTime::parse_from_str("2026-11-25 14:02:59", "%Y-%m-%d %H:%M:%S").unwrap();
        let paris = FixedOffset::east_opt(3600).unwrap();
        let e = zone_less("x", &n, Some(paris));
        assert!(
            e.contains("'2026-11-25 14:02:59+01' for this machine's zone (UTC+01, which is 2026-11-25 13:02:59+00)")
                && e.contains("'2026-11-25 14:02:59+00' for UTC"),
            "{e}"
        );
        let india = FixedOffset::east_opt(5 * 3600 + 1800).unwrap();
        let e = zone_less("x", &n, Some(india));
        assert!(e.contains("'2026-11-25 14:02:59+05:30'"), "{e}");
        let e = zone_less("x", &n, Some(FixedOffset::east_opt(0).unwrap()));
        assert!(
            e.contains("'2026-11-25 14:02:59+00' for UTC (this machine's zone too)"),
            "{e}"
        );
        // Both suggested forms parse back to what they say.
        assert_eq!(
            parse_time("2026-11-25 14:02:59+05:30").unwrap(),
            parse_time("2026-11-25 08:32:59+00").unwrap()
        );
    }

    /// What list and info print parses back to the same moment.
    #[test]
    fn printed_times_are_accepted() {
        for s in ["2026-11-25T14:02:59Z", "2026-11-25T14:02:59.123456789Z"] {
            let t: DateTime<Utc> = s.parse().unwrap();
            let shown = format_time(&t);
            assert!(shown.ends_with("+00"), "{shown}");
            let back = parse_time(&shown).unwrap();
            assert_eq!(back, chrono::SubsecRound::trunc_subsecs(t, 6), "{shown}");
            assert_eq!(parse_time(&format_pg_time(&t)).unwrap(), back);
        }
        let t: DateTime<Utc> = "2026-11-25T14:02:59Z".parse().unwrap();
        assert_eq!(format_time(&t), "2026-11-25 14:02:59+00");
        let t: DateTime<Utc> = "2026-11-25T14:02:59.25Z".parse().unwrap();
        assert_eq!(format_time(&t), "2026-11-25 14:02:59.250000+00");
    }
}

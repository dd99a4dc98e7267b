//! Restore planning, before anything touches disk: which backup, which timeline path, and
//! whether the archive holds every WAL segment between the backup and the target.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use pitr_pg::{parse_history, timeline_path, Lsn, TimelineId, WalFileKind, WalFileName};
use pitr_store::Repo;
use serde::Serialize;

use crate::backup::BackupManifest;
use crate::walref::WalRef;

/// What recovery should stop at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Replay all archived WAL.
    End,
    Immediate,
    Time(DateTime<Utc>),
    Lsn(Lsn),
    Xid(u64),
    Name(String),
}

impl Target {
    pub fn describe(&self) -> String {
        match self {
            Target::End => "end of archived WAL".into(),
            Target::Immediate => "consistency point of the backup".into(),
            Target::Time(t) => format!("time {}", format_pg_time(t)),
            Target::Lsn(l) => format!("LSN {l}"),
            Target::Xid(x) => format!("transaction {x}"),
            Target::Name(n) => format!("restore point {n:?}"),
        }
    }
}

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

/// Which timeline recovery should follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimelineChoice {
    Latest,
    Current,
    Id(u32),
}

impl std::str::FromStr for TimelineChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "latest" => Ok(TimelineChoice::Latest),
            "current" => Ok(TimelineChoice::Current),
            n => n
                .parse::<u32>()
                .ok()
                .filter(|&n| n > 0)
                .map(TimelineChoice::Id)
                .ok_or_else(|| format!("{s:?}: expected latest, current or a timeline number")),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SegmentNeed {
    pub first: String,
    pub last: Option<String>,
    pub count: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub backup: String,
    pub backup_stop_time: DateTime<Utc>,
    pub backup_stop_lsn: String,
    pub target: String,
    pub timeline: u32,
    pub timeline_path: Vec<u32>,
    pub wal: Option<SegmentNeed>,
    pub recoverable_from: DateTime<Utc>,
    pub recoverable_to: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub manifest: BackupManifest,
}

/// What the archive holds, from its listing: segment names per timeline, and history files.
struct Archive {
    segments: BTreeMap<TimelineId, BTreeSet<u64>>,
    histories: BTreeSet<u32>,
}

async fn scan_archive(repo: &Repo, seg_size: u32) -> anyhow::Result<Archive> {
    let mut a = Archive {
        segments: BTreeMap::new(),
        histories: BTreeSet::new(),
    };
    for (key, _) in repo.list("wal/").await? {
        let Some(name) = key.rsplit('/').next().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        let Ok(name) = name.parse::<WalFileName>() else {
            continue;
        };
        match name.kind() {
            WalFileKind::Segment => {
                a.segments
                    .entry(name.timeline())
                    .or_default()
                    .insert(name.segment_number(seg_size).expect("segment"));
            }
            WalFileKind::History => {
                a.histories.insert(name.timeline().0);
            }
            _ => {}
        }
    }
    Ok(a)
}

async fn history_of(repo: &Repo, tli: TimelineId) -> anyhow::Result<Vec<pitr_pg::HistoryEntry>> {
    if tli.0 == 1 {
        return Ok(Vec::new());
    }
    let name: WalFileName = format!("{:08X}.history", tli.0).parse()?;
    let r = WalRef::load(repo, &name)
        .await?
        .with_context(|| format!("timeline {tli}: {name} is not in the archive"))?;
    let bytes = repo.get_bytes(&r.chunks).await?;
    let text = String::from_utf8(bytes).with_context(|| format!("{name} is not text"))?;
    parse_history(&text).with_context(|| format!("parse {name}"))
}

pub struct PlanRequest<'a> {
    pub target: &'a Target,
    /// `--target-exclusive`: a record exactly at a time target is already past it.
    pub exclusive: bool,
    pub backup_id: Option<&'a str>,
    pub timeline: &'a TimelineChoice,
}

pub async fn plan(repo: &Repo, req: PlanRequest<'_>) -> anyhow::Result<Plan> {
    let backups = BackupManifest::list(repo).await?;
    if backups.is_empty() {
        bail!(
            "repository {} holds no backups: run `pitr backup` first",
            repo.url()
        );
    }
    let earliest = backups[0].stop_time;
    let manifest = match (req.backup_id, req.target) {
        (Some(id), _) => backups
            .iter()
            .find(|b| b.id == id)
            .with_context(|| {
                format!(
                    "no backup {id} in {} (have: {})",
                    repo.url(),
                    backups.iter().map(|b| b.id.as_str()).collect::<Vec<_>>().join(", ")
                )
            })?
            .clone(),
        (None, Target::Time(t)) => backups
            .iter()
            .rev()
            .find(|b| b.stop_time < *t)
            .with_context(|| {
                format!(
                    "target time {} is before the earliest backup finished ({}): the recoverable window starts there",
                    format_pg_time(t),
                    format_pg_time(&earliest)
                )
            })?
            .clone(),
        (None, Target::Lsn(l)) => backups
            .iter()
            .rev()
            .find(|b| b.stop_lsn.parse::<Lsn>().is_ok_and(|s| s <= *l))
            .with_context(|| {
                format!(
                    "target LSN {l} is before the end of the earliest backup ({})",
                    backups[0].stop_lsn
                )
            })?
            .clone(),
        (None, _) => backups.last().expect("not empty").clone(),
    };
    let stop_lsn: Lsn = manifest.stop_lsn.parse()?;
    let start_lsn: Lsn = manifest.start_lsn.parse()?;
    let backup_tli = TimelineId(manifest.timeline);
    if let Target::Time(t) = req.target {
        if *t <= manifest.stop_time {
            bail!(
                "target time {} is before backup {} finished ({}); choose an earlier backup or a later time",
                format_pg_time(t),
                manifest.id,
                format_pg_time(&manifest.stop_time)
            );
        }
    }
    if let Target::Lsn(l) = req.target {
        if *l < stop_lsn {
            bail!(
                "target LSN {l} is before backup {} reached consistency at {stop_lsn}",
                manifest.id
            );
        }
    }
    let seg_size = seg_size_of(&manifest);
    let archive = scan_archive(repo, seg_size).await?;

    // The timeline to follow, and the path of timelines that leads to it.
    let target_tli = match req.timeline {
        TimelineChoice::Current => backup_tli,
        TimelineChoice::Id(n) => TimelineId(*n),
        TimelineChoice::Latest => {
            let newest_history = archive.histories.iter().max().copied().unwrap_or(1);
            let newest_segment = archive.segments.keys().max().map_or(1, |t| t.0);
            TimelineId(newest_history.max(newest_segment).max(backup_tli.0))
        }
    };
    let history = history_of(repo, target_tli).await?;
    let path = timeline_path(target_tli, &history);
    let on_path = path.iter().find(|(t, _, _)| *t == backup_tli);
    match on_path {
        None => bail!(
            "backup {} is on timeline {backup_tli}, which is not an ancestor of target timeline {target_tli}",
            manifest.id
        ),
        Some((_, _, Some(end))) if *end < stop_lsn => bail!(
            "timeline {target_tli} forked from timeline {backup_tli} at {end}, before backup {} was consistent at {stop_lsn}",
            manifest.id
        ),
        _ => {}
    }

    // Segments recovery will ask for: from the backup's stop segment (the backup carries its
    // own WAL before that) up to the target.
    let tli_for = |segno: u64| -> TimelineId {
        path.iter()
            .rev()
            .find(|(_, begin, _)| begin.segment_number(seg_size) <= segno)
            .map_or(backup_tli, |(t, _, _)| *t)
    };
    let name = |segno: u64| WalFileName::segment(tli_for(segno), segno, seg_size);
    let first = stop_lsn.0.saturating_sub(1).max(start_lsn.0) / u64::from(seg_size);
    let has = |segno: u64| {
        archive
            .segments
            .get(&tli_for(segno))
            .is_some_and(|s| s.contains(&segno))
    };
    // The newest archived segment on the path.
    let last_on_path = path
        .iter()
        .filter_map(|(t, begin, end)| {
            let segs = archive.segments.get(t)?;
            let lo = begin.segment_number(seg_size);
            let hi = end.map_or(u64::MAX, |e| e.segment_number(seg_size));
            segs.range(lo..=hi).next_back().copied()
        })
        .max();

    let mut recoverable_to = None;
    let wal = match req.target {
        Target::Immediate => None,
        _ => {
            let end = match req.target {
                Target::Lsn(l) => Some(l.0 / u64::from(seg_size)),
                _ => None,
            };
            let mut segno = first;
            let mut stop_found = false;
            let mut count = 0;
            let mut last = None;
            let last_archived = last_on_path.unwrap_or(0);
            loop {
                if end.is_some_and(|e| segno > e) {
                    break;
                }
                if !has(segno) {
                    if end.is_some() || segno <= last_archived {
                        bail!(
                            "WAL segment {} is missing from the archive: recovery from backup {} cannot get past it (needed for {})",
                            name(segno),
                            manifest.id,
                            req.target.describe()
                        );
                    }
                    break;
                }
                count += 1;
                last = Some(segno);
                if let Target::Time(t) = req.target {
                    let seg_name = name(segno);
                    let r = WalRef::load(repo, &seg_name)
                        .await?
                        .context("segment vanished")?;
                    recoverable_to = Some(r.archived_at);
                    // A segment archived before the target cannot hold the record recovery
                    // stops at; one archived after it may (the archiver can lag), so read it.
                    if r.archived_at > *t
                        && holds_stop_record(repo, &r, &seg_name, seg_size, t, req.exclusive)
                            .await?
                    {
                        stop_found = true;
                        break;
                    }
                }
                segno += 1;
            }
            if let (Target::Time(t), false) = (req.target, stop_found) {
                if recoverable_to.is_some_and(|r| r > *t) {
                    bail!(
                        "archived WAL up to {} holds no commit, abort or restore point after {}: recovery could not stop there yet; wait for more WAL to be archived (or use --target-lsn)",
                        last.map_or("-".to_string(), |s| name(s).to_string()),
                        format_pg_time(t)
                    );
                }
            }
            if let Target::Time(t) = req.target {
                if recoverable_to.is_none_or(|r| r <= *t) {
                    bail!(
                        "target time {} is after the last archived WAL ({}): the recoverable window is {} .. {}",
                        format_pg_time(t),
                        recoverable_to.map_or("none".into(), |r| format_pg_time(&r)),
                        format_pg_time(&earliest),
                        recoverable_to.map_or("none".into(), |r| format_pg_time(&r)),
                    );
                }
            }
            Some(SegmentNeed {
                first: name(first).to_string(),
                last: last.map(|s| name(s).to_string()),
                count,
            })
        }
    };
    Ok(Plan {
        backup: manifest.id.clone(),
        backup_stop_time: manifest.stop_time,
        backup_stop_lsn: manifest.stop_lsn.clone(),
        target: req.target.describe(),
        timeline: target_tli.0,
        timeline_path: path.iter().map(|(t, _, _)| t.0).collect(),
        wal,
        recoverable_from: earliest,
        recoverable_to,
        manifest,
    })
}

/// Whether the archived segment holds a commit, abort or restore point past `target`.
async fn holds_stop_record(
    repo: &Repo,
    r: &WalRef,
    name: &WalFileName,
    seg_size: u32,
    target: &DateTime<Utc>,
    exclusive: bool,
) -> anyhow::Result<bool> {
    let bytes = repo.get_bytes(&r.chunks).await?;
    let start = name.start_lsn(seg_size).context("a segment")?;
    let records = pitr_pg::timed_records(&bytes, start)
        .with_context(|| format!("read the records of {name}"))?;
    let t = target.timestamp_micros();
    Ok(records
        .iter()
        .any(|rec| rec.unix_micros > t || (exclusive && rec.unix_micros == t)))
}

pub fn seg_size_of(m: &BackupManifest) -> u32 {
    m.wal
        .first()
        .map_or(pitr_pg::DEFAULT_WAL_SEGMENT_SIZE, |w| w.size as u32)
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

    #[test]
    fn timeline_choice() {
        assert_eq!("latest".parse(), Ok(TimelineChoice::Latest));
        assert_eq!("3".parse(), Ok(TimelineChoice::Id(3)));
        assert!("0".parse::<TimelineChoice>().is_err());
    }
}

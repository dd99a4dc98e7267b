//! `pitr check`: is the server archiving into this repository, end to end? Its settings
//! (`archive_mode`, `wal_level`, an `archive_command` running `pitr archive-wal` into this
//! repository), a forced WAL switch whose segment must appear in the repository, and the
//! repository's system identifier against the server's. With `max_archive_age` or
//! `max_backup_age` it is a monitoring probe of the repository alone (no server connection);
//! [`check_server_and_ages`] (`--server`) applies the age limits after the server checks.
//!
//! Each check ends OK, warning or critical (Nagios); the binary maps the worst to 0, 1 or 2.

use std::time::{Duration, Instant};

use pitr_protocol::{ConnConfig, ReplicationClient};
use pitr_store::Repo;
use serde::Serialize;

use crate::index::ArchiveIndex;
use crate::repofile::{repo_system_identifier, BackupManifest, WalRef};
use crate::restore::plan::{unreachable_timelines, RepoArchive};
use crate::time::format_pg_time;
use crate::verify::format_duration;

/// Nagios' order: a report is as bad as its worst check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warning,
    Critical,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Ok => "OK",
            Status::Warning => "WARNING",
            Status::Critical => "CRITICAL",
        })
    }
}

/// One check's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct CheckItem {
    pub check: &'static str,
    pub status: Status,
    pub message: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    pub checks: Vec<CheckItem>,
}

impl CheckReport {
    pub fn status(&self) -> Status {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    fn push(&mut self, check: &'static str, status: Status, message: impl Into<String>) {
        let message = message.into();
        tracing::debug!("check {check}: {status}: {message}");
        self.checks.push(CheckItem {
            check,
            status,
            message,
        });
    }
}

/// `pitr check`.
pub struct CheckRequest {
    /// Connection string (libpq key=value or URL); the PG* environment fills in the rest.
    pub dbname: Option<String>,
    /// The password when neither `dbname` nor `PGPASSWORD` gives one (as for backup).
    pub password: Option<String>,
    /// How long the switched segment may take to appear in the repository.
    pub archive_timeout: Duration,
    /// Probe: the newest archived segment must have been stored within this long ago.
    pub max_archive_age: Option<Duration>,
    /// Probe: the newest backup must have finished within this long ago.
    pub max_backup_age: Option<Duration>,
}

impl CheckRequest {
    /// With an age limit, check is a probe of the repository and connects to no server.
    pub fn is_probe(&self) -> bool {
        self.max_archive_age.is_some() || self.max_backup_age.is_some()
    }
}

pub async fn check(repo: &Repo, req: &CheckRequest) -> CheckReport {
    let mut report = CheckReport::default();
    if req.is_probe() {
        if let Some(max) = req.max_backup_age {
            backup_age(repo, max, &mut report).await;
        }
        if let Some(max) = req.max_archive_age {
            archive_age(repo, max, &mut report).await;
        }
        stray_timelines(repo, &mut report).await;
    } else {
        server(repo, req, &mut report).await;
    }
    report
}

/// `pitr check --server` with age limits: the server checks and then the age checks, in one
/// report (without `--server` an age limit makes check a probe of the repository alone).
pub async fn check_server_and_ages(repo: &Repo, req: &CheckRequest) -> CheckReport {
    let mut report = CheckReport::default();
    server(repo, req, &mut report).await;
    if let Some(max) = req.max_backup_age {
        backup_age(repo, max, &mut report).await;
    }
    if let Some(max) = req.max_archive_age {
        archive_age(repo, max, &mut report).await;
    }
    report
}

/// The newest backup's age: none, or older than `max`, is critical; damaged manifests next
/// to a fresh backup are a warning.
async fn backup_age(repo: &Repo, max: Duration, report: &mut CheckReport) {
    let loaded = match BackupManifest::list(repo).await {
        Ok(l) => l,
        Err(e) => {
            return report.push(
                "backup_age",
                Status::Critical,
                format!("list backups: {e:#}"),
            )
        }
    };
    let Some(newest) = loaded.docs.iter().max_by_key(|b| b.stop_time) else {
        return report.push(
            "backup_age",
            Status::Critical,
            format!("no backup in {}", repo.url()),
        );
    };
    let age = (chrono::Utc::now() - newest.stop_time)
        .to_std()
        .unwrap_or_default();
    let said = format!(
        "newest backup {} finished at {} ({} ago; limit {})",
        newest.id,
        format_pg_time(&newest.stop_time),
        format_duration(age),
        format_duration(max)
    );
    if age > max {
        report.push("backup_age", Status::Critical, said);
    } else if !loaded.damaged.is_empty() {
        let keys: Vec<&str> = loaded.damaged.iter().map(|d| d.key.as_str()).collect();
        report.push(
            "backup_age",
            Status::Warning,
            format!("{said}; damaged manifests: {}", keys.join(", ")),
        );
    } else {
        report.push("backup_age", Status::Ok, said);
    }
}

/// When the last file of the timeline the server is on (the archive's newest timeline) was
/// stored: none, or longer ago than `max`, is critical.
async fn archive_age(repo: &Repo, max: Duration, report: &mut CheckReport) {
    let seg_size = match BackupManifest::newest(repo).await {
        Ok(Some(b)) => b.segment_size(),
        _ => pitr_pg::DEFAULT_WAL_SEGMENT_SIZE,
    };
    let newest = match ArchiveIndex::list(repo, seg_size).await {
        Ok(index) => index.last_of_newest_timeline(),
        Err(e) => {
            return report.push(
                "archive_age",
                Status::Critical,
                format!("list archived WAL: {e:#}"),
            )
        }
    };
    let Some(name) = newest else {
        return report.push(
            "archive_age",
            Status::Critical,
            format!("no archived WAL in {}", repo.url()),
        );
    };
    let r = match WalRef::load(repo, &name).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return report.push(
                "archive_age",
                Status::Critical,
                format!("archived WAL {name} vanished while it was read"),
            )
        }
        Err(e) => {
            return report.push(
                "archive_age",
                Status::Critical,
                format!("read the ref of archived WAL {name}: {e:#}"),
            )
        }
    };
    let age = (chrono::Utc::now() - r.archived_at)
        .to_std()
        .unwrap_or_default();
    let said = format!(
        "last archived file of timeline {} ({name}) stored at {} ({} ago; limit {})",
        name.timeline(),
        format_pg_time(&r.archived_at),
        format_duration(age),
        format_duration(max)
    );
    let status = if age > max {
        Status::Critical
    } else {
        Status::Ok
    };
    report.push("archive_age", status, said);
}

/// Archived timelines no backup can reach (a stray fork, e.g. a side-by-side restore that
/// archived here) are a warning, named until retired (`pitr expire --retire-timeline N`).
async fn stray_timelines(repo: &Repo, report: &mut CheckReport) {
    let backups = match BackupManifest::list(repo).await {
        Ok(l) => l.docs,
        Err(e) => return report.push("timelines", Status::Warning, format!("list backups: {e:#}")),
    };
    let seg_size = backups.last().map_or(
        pitr_pg::DEFAULT_WAL_SEGMENT_SIZE,
        BackupManifest::segment_size,
    );
    let index = match ArchiveIndex::list(repo, seg_size).await {
        Ok(i) => i,
        Err(e) => {
            return report.push(
                "timelines",
                Status::Warning,
                format!("list archived WAL: {e:#}"),
            )
        }
    };
    let strays = unreachable_timelines(&backups, &index, &RepoArchive(repo)).await;
    if strays.is_empty() {
        let n = index.known_timelines().len();
        return report.push(
            "timelines",
            Status::Ok,
            format!(
                "every archived timeline is reachable from a backup ({n} timeline{})",
                if n == 1 { "" } else { "s" }
            ),
        );
    }
    let said: Vec<String> = strays
        .iter()
        .map(|s| format!("timeline {}: {}", s.timeline, s.reason))
        .collect();
    report.push(
        "timelines",
        Status::Warning,
        format!(
            "{} (retire with `pitr expire --retire-timeline N`)",
            said.join("; ")
        ),
    );
}

/// The server checks, in order; a failed connection ends them.
async fn server(repo: &Repo, req: &CheckRequest, report: &mut CheckReport) {
    let mut conn = match ConnConfig::parse(req.dbname.as_deref().unwrap_or("")) {
        Ok(c) => c,
        Err(e) => return report.push("connection", Status::Critical, e.to_string()),
    };
    conn.password = conn.password.take().or(req.password.clone());
    // A database connection that also speaks the replication protocol: SHOW and
    // IDENTIFY_SYSTEM as for backup, and SQL for pg_switch_wal().
    conn.replication_database = true;
    let mut client = match ReplicationClient::connect(&conn).await {
        Ok(c) => c,
        Err(e) => {
            return report.push(
                "connection",
                Status::Critical,
                format!("connect to {}: {e}", conn.target()),
            )
        }
    };
    let version = client
        .parameter("server_version")
        .unwrap_or("?")
        .to_string();
    report.push(
        "connection",
        Status::Ok,
        format!(
            "connected to {} (PostgreSQL {version}) as {}",
            client.target(),
            conn.user
        ),
    );

    let mut settings_ok = true;
    match client.show("archive_mode").await {
        Ok(m) if m == "on" || m == "always" => {
            report.push("archive_mode", Status::Ok, format!("archive_mode = {m}"))
        }
        Ok(m) => {
            settings_ok = false;
            report.push(
                "archive_mode",
                Status::Critical,
                format!(
                    "archive_mode = {m}: the server archives nothing (set it to on and restart)"
                ),
            )
        }
        Err(e) => {
            settings_ok = false;
            report.push(
                "archive_mode",
                Status::Critical,
                format!("SHOW archive_mode: {e}"),
            )
        }
    }
    match client.show("wal_level").await {
        Ok(l) if l == "replica" || l == "logical" => {
            report.push("wal_level", Status::Ok, format!("wal_level = {l}"))
        }
        Ok(l) => report.push(
            "wal_level",
            Status::Critical,
            format!(
                "wal_level = {l}: archived WAL cannot restore a base backup (set it to replica)"
            ),
        ),
        Err(e) => report.push(
            "wal_level",
            Status::Critical,
            format!("SHOW wal_level: {e}"),
        ),
    }
    match client.show("archive_command").await {
        Ok(cmd) => {
            let (status, message) = judge_archive_command(&cmd, repo.url());
            if status == Status::Critical {
                settings_ok = false;
            }
            report.push("archive_command", status, message);
        }
        Err(e) => {
            settings_ok = false;
            report.push(
                "archive_command",
                Status::Critical,
                format!("SHOW archive_command: {e}"),
            )
        }
    }

    if settings_ok {
        switch_and_wait(repo, &mut client, req.archive_timeout, report).await;
    } else {
        report.push(
            "archive_push",
            Status::Critical,
            "skipped: with these settings no WAL reaches this repository",
        );
    }

    match (client.identify_system().await, repo_system_identifier(repo).await) {
        (Ok(sys), Ok(Some(ours))) if sys.system_identifier == ours => report.push(
            "system_identifier",
            Status::Ok,
            format!("database system {ours}, as the repository's"),
        ),
        (Ok(sys), Ok(Some(ours))) => report.push(
            "system_identifier",
            Status::Critical,
            format!(
                "the server is database system {}, the repository belongs to {ours}",
                sys.system_identifier
            ),
        ),
        (Ok(sys), Ok(None)) => report.push(
            "system_identifier",
            Status::Warning,
            format!(
                "the repository belongs to no cluster yet (the first archived segment or backup claims it); the server is database system {}",
                sys.system_identifier
            ),
        ),
        (Err(e), _) => report.push(
            "system_identifier",
            Status::Critical,
            format!("IDENTIFY_SYSTEM: {e}"),
        ),
        (_, Err(e)) => report.push(
            "system_identifier",
            Status::Critical,
            format!("read the repository's cluster: {e:#}"),
        ),
    }
    let _ = client.close().await;
}

/// Force a WAL switch (after a restore point, so the segment holds something) and wait until
/// that segment's ref is in the repository.
async fn switch_and_wait(
    repo: &Repo,
    client: &mut ReplicationClient,
    timeout: Duration,
    report: &mut CheckReport,
) {
    let sql = "SELECT pg_create_restore_point('pitr check'); \
               SELECT pg_walfile_name(pg_switch_wal())";
    let segment = match client.simple_query(sql).await {
        Ok(sets) => sets
            .last()
            .and_then(|s| s.rows.first())
            .and_then(|r| r.first().cloned().flatten()),
        Err(e) => {
            return report.push(
                "archive_push",
                Status::Critical,
                format!(
                "switch WAL (pg_switch_wal() needs superuser or EXECUTE on it, and a primary): {e}"
            ),
            )
        }
    };
    let Some(name) = segment.and_then(|s| s.parse::<pitr_pg::WalFileName>().ok()) else {
        return report.push(
            "archive_push",
            Status::Critical,
            "pg_walfile_name(pg_switch_wal()) returned no segment name",
        );
    };
    let began = Instant::now();
    loop {
        match WalRef::load(repo, &name).await {
            Ok(Some(_)) => {
                return report.push(
                    "archive_push",
                    Status::Ok,
                    format!(
                        "switched WAL: segment {name} reached {} in {:.1} s",
                        repo.url(),
                        began.elapsed().as_secs_f64()
                    ),
                )
            }
            Ok(None) => {}
            Err(e) => {
                return report.push(
                    "archive_push",
                    Status::Critical,
                    format!("look for archived WAL {name}: {e:#}"),
                )
            }
        }
        if began.elapsed() >= timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let archiver = client
        .simple_query(
            "SELECT last_archived_wal, last_failed_wal, last_failed_time FROM pg_stat_archiver",
        )
        .await
        .ok()
        .and_then(|sets| sets.into_iter().next())
        .map(|s| {
            let cell = |c| s.get(0, c).unwrap_or("-").to_string();
            format!(
                "; pg_stat_archiver: last archived {}, last failed {} at {}",
                cell("last_archived_wal"),
                cell("last_failed_wal"),
                cell("last_failed_time")
            )
        })
        .unwrap_or_default();
    report.push(
        "archive_push",
        Status::Critical,
        format!(
            "switched WAL: segment {name} did not reach {} within {} (--archive-timeout){archiver}; see the server log for archive_command's errors",
            repo.url(),
            format_duration(timeout)
        ),
    );
}

/// Whether `archive_command` runs `pitr archive-wal` into the repository at `repo_url`.
/// Another `--repo` (or `PITR_REPO=` before the command) is critical, as is a command that is
/// not pitr's; one that names no repository takes it from the server's environment or
/// configuration file, which check cannot see: OK, and the WAL switch shows where it goes.
pub fn judge_archive_command(cmd: &str, repo_url: &str) -> (Status, String) {
    let words = shell_words(cmd);
    let runs_pitr = words.iter().any(|w| {
        std::path::Path::new(w)
            .file_name()
            .is_some_and(|f| f.to_string_lossy().contains("pitr"))
    });
    if cmd.trim().is_empty() || !runs_pitr || !words.iter().any(|w| w == "archive-wal") {
        return (
            Status::Critical,
            format!("archive_command = {cmd:?} does not run pitr archive-wal"),
        );
    }
    let mut named = None;
    for (i, w) in words.iter().enumerate() {
        if let Some(v) = w.strip_prefix("--repo=") {
            named = Some(v.to_string());
        } else if w == "--repo" {
            named = words.get(i + 1).cloned();
        } else if let Some(v) = w.strip_prefix("PITR_REPO=") {
            named = named.or(Some(v.to_string()));
        }
    }
    match named {
        Some(url) if same_repo(&url, repo_url) => (
            Status::Ok,
            format!("archive_command runs pitr archive-wal into {repo_url}"),
        ),
        Some(url) => (
            Status::Critical,
            format!("archive_command archives into {url}, not into this repository {repo_url}: {cmd:?}"),
        ),
        None => (
            Status::Ok,
            format!(
                "archive_command runs pitr archive-wal with the repository of the server's environment or configuration file (the WAL switch shows whether it is {repo_url})"
            ),
        ),
    }
}

/// Two spellings of one repository: `file://` or not, trailing slashes, symbolic links.
fn same_repo(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let s = s.strip_prefix("file://").unwrap_or(s);
        let s = if s.len() > 1 {
            s.trim_end_matches('/')
        } else {
            s
        };
        if s.starts_with('/') {
            std::fs::canonicalize(s)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| s.to_string())
        } else {
            s.to_string()
        }
    };
    norm(a) == norm(b)
}

/// Split a command line as sh would (quotes and backslashes; no expansions).
fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    cur.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => cur.extend(chars.next()),
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.extend(chars.next());
            }
            c if c.is_whitespace() || c == ';' || c == '&' || c == '|' => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_commands_are_judged_by_their_repository() {
        let here = "/var/lib/pitr/repo";
        let ok = |cmd: &str| judge_archive_command(cmd, here).0 == Status::Ok;
        assert!(ok(
            "/usr/bin/pitr --repo /var/lib/pitr/repo archive-wal %p %f"
        ));
        assert!(ok(
            "pitr --repo=file:///var/lib/pitr/repo/ archive-wal %p %f"
        ));
        assert!(ok(
            "'/opt/my pitr/pitr' --repo '/var/lib/pitr/repo' archive-wal \"%p\" %f"
        ));
        assert!(ok("PITR_REPO=/var/lib/pitr/repo pitr archive-wal %p %f"));
        // no repository named: the server's environment decides; the switch tells
        assert!(ok("pitr archive-wal %p %f"));
        assert!(!ok("pitr --repo /elsewhere archive-wal %p %f"));
        assert!(!ok("cp %p /mnt/archive/%f"));
        assert!(!ok("pitr --repo /var/lib/pitr/repo restore-wal %f %p"));
        assert!(!ok(""));
        let (_, why) = judge_archive_command("pitr --repo s3://b/x archive-wal %p %f", here);
        assert!(why.contains("s3://b/x") && why.contains(here), "{why}");
    }

    #[test]
    fn words() {
        assert_eq!(
            shell_words(r#"a 'b c' "d\"e" f\ g;h"#),
            ["a", "b c", "d\"e", "f g", "h"]
        );
    }

    #[test]
    fn worst_status_wins() {
        let mut r = CheckReport::default();
        assert_eq!(r.status(), Status::Ok);
        r.push("a", Status::Warning, "w");
        r.push("b", Status::Ok, "o");
        assert_eq!(r.status(), Status::Warning);
        r.push("c", Status::Critical, "c");
        assert_eq!(r.status(), Status::Critical);
        assert_eq!(
            serde_json::to_value(&r.checks[0]).unwrap()["status"],
            "warning"
        );
    }

    /// The probe needs no server: no backup is critical, an old one too, a fresh one OK.
    #[tokio::test]
    async fn backup_age_probe() {
        use pitr_store::RepoConfig;
        let (repo, _) = Repo::init(
            "memory://check-age",
            RepoConfig::default(),
            &pitr_store::RepoOptions::default(),
        )
        .await
        .unwrap();
        let req = |h: u64| CheckRequest {
            dbname: None,
            password: None,
            archive_timeout: Duration::from_secs(1),
            max_archive_age: None,
            max_backup_age: Some(Duration::from_secs(h * 3600)),
        };
        assert!(req(1).is_probe());
        let r = check(&repo, &req(1)).await;
        assert_eq!(r.status(), Status::Critical, "{r:?}");
        assert!(r.checks[0].message.contains("no backup"), "{r:?}");

        // A backup that finished on 2026-11-26: old for one hour, fresh for a limit of its
        // age today plus 30 days (a fixed limit would turn it stale some year).
        let finished = chrono::DateTime::parse_from_rfc3339("2026-11-26T00:00:01Z").unwrap();
        let fresh_hours = u64::try_from((chrono::Utc::now() - finished.to_utc()).num_hours())
            .unwrap_or(0)
            + 24 * 30;
        let m = crate::verify::tests::manifest("b1", serde_json::json!([]));
        crate::verify::tests::put(&repo, &BackupManifest::key("b1"), &m).await;
        let r = check(&repo, &req(1)).await;
        assert_eq!(r.status(), Status::Critical, "{r:?}");
        assert!(r.checks[0].message.contains("newest backup b1"), "{r:?}");
        let r = check(&repo, &req(fresh_hours)).await;
        assert_eq!(r.status(), Status::Ok, "{r:?}");
        // no WAL archived: the archive probe is critical
        let mut both = req(fresh_hours);
        both.max_archive_age = Some(Duration::from_secs(60));
        let r = check(&repo, &both).await;
        assert_eq!(r.checks.len(), 3);
        assert_eq!(r.checks[1].status, Status::Critical, "{r:?}");
        // and no stray timeline
        assert_eq!(r.checks[2].check, "timelines");
        assert_eq!(r.checks[2].status, Status::Ok, "{r:?}");
    }

    /// `check --max-archive-age` and `info`'s "last" measure the timeline the server is on
    /// (the archive's newest), and pair one file with its own time: a server promoted to
    /// timeline 2 two hours ago that archived only 00000002.history since is stale, whatever
    /// was stored on timeline 1 a minute ago.
    #[tokio::test]
    async fn archive_age_is_the_newest_timelines_last_file_with_its_own_time() {
        use pitr_store::RepoConfig;
        let (repo, _) = Repo::init(
            "memory://check-archive-timeline",
            RepoConfig::default(),
            &pitr_store::RepoOptions::default(),
        )
        .await
        .unwrap();
        let now = chrono::Utc::now();
        let put = |name: &str, ago: chrono::Duration| {
            let r = WalRef {
                name: name.parse().unwrap(),
                size: 0,
                segment_size: None,
                system_identifier: None,
                archived_at: now - ago,
                stored_bytes: 0,
                chunks: Vec::new(),
                source: None,
            };
            let repo = &repo;
            async move {
                let body = serde_json::to_vec(&r).unwrap();
                repo.put_doc(&WalRef::key(&r.name), body.into())
                    .await
                    .unwrap();
            }
        };
        put("000000010000000000000004", chrono::Duration::hours(3)).await;
        put("00000002.history", chrono::Duration::hours(2)).await;
        put("000000010000000000000005", chrono::Duration::minutes(1)).await;

        let req = CheckRequest {
            dbname: None,
            password: None,
            archive_timeout: Duration::from_secs(1),
            max_archive_age: Some(Duration::from_secs(3600)),
            max_backup_age: None,
        };
        let r = check(&repo, &req).await;
        assert_eq!(r.checks[0].status, Status::Critical, "{r:?}");
        assert!(r.checks[0].message.contains("00000002.history"), "{r:?}");

        let info = crate::info::info(&repo).await.unwrap();
        assert_eq!(
            info.wal
                .last_archived
                .as_ref()
                .map(|n| n.as_str().to_string()),
            Some("00000002.history".to_string())
        );
        assert_eq!(
            info.wal.last_archived_at,
            Some(now - chrono::Duration::hours(2))
        );

        // Timeline 2's first segment: now the last file, with its own time (look-ahead
        // stored it before a lower one).
        put("000000020000000000000006", chrono::Duration::minutes(30)).await;
        put("000000020000000000000005", chrono::Duration::minutes(20)).await;
        let r = check(&repo, &req).await;
        assert_eq!(r.checks[0].status, Status::Ok, "{r:?}");
        assert!(
            r.checks[0].message.contains("000000020000000000000006"),
            "{r:?}"
        );
        let info = crate::info::info(&repo).await.unwrap();
        assert_eq!(
            info.wal
                .last_archived
                .as_ref()
                .map(|n| n.as_str().to_string()),
            Some("000000020000000000000006".to_string())
        );
        assert_eq!(
            info.wal.last_archived_at,
            Some(now - chrono::Duration::minutes(30))
        );
    }
}

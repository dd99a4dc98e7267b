//! `pitr restore`: plan, lay the backup down, and configure PostgreSQL to recover to the
//! target — optionally starting it and waiting until it got there.

mod laydown;
pub mod plan;
mod start;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use pitr_store::Repo;

use crate::index::ArchiveIndex;
use crate::progress::Reporter;
use crate::repofile::BackupManifest;
use crate::time::format_pg_time;
use laydown::LayDown;
pub use laydown::LayDownStats;
pub use plan::{Plan, PlannedTablespace, Target, TimelineChoice};
pub use start::{pg_bindir, RecoveryOutcome};

/// What the server does once recovery reached the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetAction {
    Promote,
    Pause,
    Shutdown,
}

/// `pitr restore`.
pub struct RestoreRequest {
    /// The data directory to create (empty or absent unless `delta`).
    pub pgdata: PathBuf,
    pub target: Target,
    /// A record exactly at the target is already past it.
    pub exclusive: bool,
    pub timeline: TimelineChoice,
    pub action: TargetAction,
    /// Backup to restore (default: the newest that finished before the target).
    pub backup: Option<String>,
    /// Reuse files already in the data directory when their content matches.
    pub delta: bool,
    /// Tablespace OID → directory, for relocated tablespaces.
    pub remap: HashMap<u32, PathBuf>,
    /// Plan only; change nothing.
    pub dry_run: bool,
    /// Start PostgreSQL and wait until recovery reached the target.
    pub start: Option<StartOptions>,
}

/// `restore --start`.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// Port to run the server on (default: the restored configuration's).
    pub port: Option<u16>,
    /// Stop the server once recovery is done.
    pub stop_after: bool,
    /// Extra server settings, NAME=VALUE.
    pub pg_options: Vec<String>,
}

/// What a restore did: the plan, and unless it was a dry run, the lay-down and (with
/// `--start`) where recovery stopped.
pub struct RestoreReport {
    pub plan: Plan,
    /// The data directory, absolute.
    pub pgdata: PathBuf,
    pub stats: Option<LayDownStats>,
    pub recovery: Option<RecoveryOutcome>,
}

/// Quote one shell word if it needs it.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_.:=@%+-,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A postgresql.conf string value.
fn conf_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', r"\\").replace('\'', "''"))
}

/// A piece of a `restore_command` or `recovery_end_command` as PostgreSQL reads it: every
/// `%` doubled, so a path or URL holding one is not taken for `%f`, `%p` or `%r`.
fn escape_percent(s: &str) -> String {
    s.replace('%', "%%")
}

/// `restore_command` and `recovery_end_command` running `exe` against the repository at
/// `repo_url`: shell-quoted, then `%`-escaped, with only pitr's own `%f %p` left for
/// PostgreSQL to substitute.
fn recovery_commands(exe: &str, repo_url: &str) -> (String, String) {
    let prefix = format!(
        "{} --repo {}",
        escape_percent(&shell_word(exe)),
        escape_percent(&shell_word(repo_url))
    );
    (
        format!("{prefix} restore-wal %f %p"),
        format!("{prefix} spool-clean pg_wal"),
    )
}

/// Recovery settings, appended to postgresql.auto.conf after removing any earlier ones.
fn recovery_settings(
    repo_url: &str,
    args: &RestoreRequest,
) -> anyhow::Result<Vec<(String, String)>> {
    let exe = std::env::current_exe().context("find the pitr binary's own path")?;
    let exe = exe.canonicalize().unwrap_or(exe);
    Ok(recovery_settings_for(
        &exe.display().to_string(),
        repo_url,
        args,
    ))
}

fn recovery_settings_for(
    exe: &str,
    repo_url: &str,
    args: &RestoreRequest,
) -> Vec<(String, String)> {
    let target = &args.target;
    let (command, cleanup) = recovery_commands(exe, repo_url);
    let mut out = vec![
        ("restore_command".to_string(), conf_value(&command)),
        ("recovery_end_command".to_string(), conf_value(&cleanup)),
    ];
    match target {
        Target::End => {}
        Target::Immediate => out.push(("recovery_target".into(), conf_value("immediate"))),
        Target::Time(t) => out.push((
            "recovery_target_time".into(),
            conf_value(&format_pg_time(t)),
        )),
        Target::Lsn(l) => out.push(("recovery_target_lsn".into(), conf_value(&l.to_string()))),
        Target::Xid(x) => out.push(("recovery_target_xid".into(), conf_value(&x.to_string()))),
        Target::Name(n) => out.push(("recovery_target_name".into(), conf_value(n))),
    }
    if !matches!(target, Target::End | Target::Immediate) {
        out.push((
            "recovery_target_inclusive".into(),
            (!args.exclusive).to_string(),
        ));
    }
    out.push((
        "recovery_target_timeline".into(),
        conf_value(&args.timeline.to_string()),
    ));
    if target != &Target::End {
        let action = match args.action {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        };
        out.push(("recovery_target_action".into(), conf_value(action)));
    }
    out
}

const MARK: &str = "# pitr restore";

fn write_recovery_conf(
    pgdata: &Path,
    settings: &[(String, String)],
    header: &str,
) -> anyhow::Result<()> {
    let dir = laydown::open_dir(pgdata)?;
    let old = laydown::read_at(&dir, pgdata, "postgresql.auto.conf")?.unwrap_or_default();
    let mut text: String = old
        .lines()
        .filter(|l| {
            let key = l.split(['=', ' ', '\t']).next().unwrap_or("").trim();
            !(l.starts_with(MARK) || key == "restore_command" || key.starts_with("recovery_target"))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("{MARK}: {header}\n"));
    for (k, v) in settings {
        text.push_str(&format!("{k} = {v}\n"));
    }
    let mode = if group_access(pgdata) { 0o640 } else { 0o600 };
    laydown::write_durably_at(&dir, pgdata, "postgresql.auto.conf", text.as_bytes(), mode)?;
    laydown::write_durably_at(&dir, pgdata, "recovery.signal", b"", mode)
}

/// Whether the laid-down data directory allows group access (0750), so that the files
/// restore writes itself get 0640 like the rest.
fn group_access(pgdata: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(pgdata).is_ok_and(|m| m.permissions().mode() & 0o050 != 0)
}

/// Point remapped tablespaces at their new directories in `tablespace_map` (PostgreSQL makes
/// the pg_tblspc links from it at startup).
fn rewrite_tablespace_map(pgdata: &Path, remap: &HashMap<u32, PathBuf>) -> anyhow::Result<()> {
    if remap.is_empty() {
        return Ok(());
    }
    let dir = laydown::open_dir(pgdata)?;
    let text = laydown::read_at(&dir, pgdata, "tablespace_map")?.with_context(|| {
        format!(
            "{} is missing: the backup has no tablespace map to remap",
            pgdata.join("tablespace_map").display()
        )
    })?;
    let mut out = String::new();
    for line in text.lines() {
        let oid = line.split(' ').next().and_then(|o| o.parse::<u32>().ok());
        match oid.and_then(|o| remap.get(&o).map(|d| (o, d))) {
            Some((o, d)) => out.push_str(&format!("{o} {}\n", d.display())),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let mode = if group_access(pgdata) { 0o640 } else { 0o600 };
    laydown::write_durably_at(&dir, pgdata, "tablespace_map", out.as_bytes(), mode)
}

/// Plan the restore, and unless it is a dry run lay the backup down, configure recovery and
/// (with `start`) run it.
pub async fn restore(
    repo: &Repo,
    args: RestoreRequest,
    reporter: &dyn Reporter,
) -> anyhow::Result<RestoreReport> {
    let backups = BackupManifest::list(repo).await?;
    // The archive counted in the segment size of the backup the plan will most likely use
    // (every backup of one cluster has the same).
    let seg_size = backups.last().map_or(
        pitr_pg::DEFAULT_WAL_SEGMENT_SIZE,
        BackupManifest::segment_size,
    );
    let index = ArchiveIndex::list(repo, seg_size).await?;
    let mut plan = plan::plan(
        repo.url(),
        &backups,
        &index,
        &plan::RepoArchive(repo),
        plan::PlanRequest {
            target: &args.target,
            exclusive: args.exclusive,
            backup_id: args.backup.as_deref(),
            timeline: &args.timeline,
        },
    )
    .await?;
    let pgdata = std::path::absolute(&args.pgdata)
        .with_context(|| format!("resolve {}", args.pgdata.display()))?;
    let lay = LayDown {
        repo,
        manifest: &plan.manifest,
        pgdata: &pgdata,
        remap: &args.remap,
        delta: args.delta,
        reporter,
    };
    plan.tablespaces = lay.planned_tablespaces()?;
    lay.check_targets()?;
    if args.dry_run {
        return Ok(RestoreReport {
            plan,
            pgdata,
            stats: None,
            recovery: None,
        });
    }
    tracing::info!(
        "restore backup {} into {} for {}",
        plan.backup,
        pgdata.display(),
        plan.target
    );
    let (mut stats, last) = lay.run().await?;
    rewrite_tablespace_map(&pgdata, &args.remap)?;
    let settings = recovery_settings(repo.url(), &args)?;
    write_recovery_conf(
        &pgdata,
        &settings,
        &format!(
            "backup {} at {}",
            plan.backup,
            chrono::Utc::now().to_rfc3339()
        ),
    )?;
    // Only now, with everything else durable, the file PostgreSQL cannot start without.
    lay.finish(last, &mut stats).await?;
    tracing::info!(
        "restore {}: {} files, {} MiB fetched, {} MiB reused in {:.1} s; recovery configured",
        plan.backup,
        stats.files,
        stats.bytes_fetched >> 20,
        stats.bytes_reused >> 20,
        stats.seconds
    );
    let recovery = match &args.start {
        Some(opts) => {
            Some(start::start_and_wait(&pgdata, &plan.manifest, args.action, opts).await?)
        }
        None => None,
    };
    Ok(RestoreReport {
        plan,
        pgdata,
        stats: Some(stats),
        recovery,
    })
}

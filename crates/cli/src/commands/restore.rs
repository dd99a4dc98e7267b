//! `pitr restore`: arguments to a restore request, and the plan, lay-down and recovery
//! outcome as text or JSON.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use pitr_core::restore::{RestoreReport, RestoreRequest, StartOptions, Target};
use pitr_core::time::{format_pg_time, parse_time};
use pitr_store::Repo;

use crate::progress::Shown;
use pitr_settings::cli::{self, RestoreArgs};

/// How the secret this run opened the repository with reaches the restore_command it writes.
pub struct SecretReach<'a> {
    pub secret: Option<&'a pitr_store::Secret>,
    /// restore_command names a file that holds it (`--passphrase-file`, or `--config` whose
    /// file has `passphrase_file`).
    pub written: bool,
    /// `PITR_PASSPHRASE` is set: a server `--start` starts inherits it.
    pub in_environment: bool,
}

pub async fn run(
    url: &str,
    options: &pitr_store::RepoOptions,
    args: RestoreArgs,
    reach: SecretReach<'_>,
    handed_on: pitr_core::restore::HandedOn,
) -> anyhow::Result<()> {
    let json = args.json;
    let start = args.start;
    // What the arguments ask for that cannot be is a usage error (exit 2), found before the
    // repository is opened.
    let req = request(args, handed_on).map_err(pitr_core::UsageError::from)?;
    let repo = Repo::open(url, options).await?;
    let reaches = reach.written || (start && reach.in_environment);
    if let (Some(_), Some(secret), false) = (repo.cipher(), reach.secret, reaches) {
        tracing::warn!(
            "restore_command finds this encrypted repository's secret ({}) only if the \
             server's environment has it; give --passphrase-file FILE (a key file from \
             `pitr key add --key-file`) or passphrase_file in the config file, and restore \
             writes it into restore_command",
            secret.origin()
        );
    }
    let report = pitr_core::restore::restore(&repo, req, &Shown).await?;
    print(&report, json)
}

fn request(
    args: RestoreArgs,
    handed_on: pitr_core::restore::HandedOn,
) -> anyhow::Result<RestoreRequest> {
    let target = target_of(&args)?;
    let timeline = args
        .target_timeline
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--target-timeline {e}"))?;
    let remap = parse_remap(&args.tablespace_map)?;
    Ok(RestoreRequest {
        pgdata: args.pgdata,
        target,
        exclusive: args.target_exclusive,
        timeline,
        action: args.target_action,
        backup: args.backup,
        delta: args.delta,
        remap,
        tablespaces_as_recorded: args.tablespaces_as_recorded,
        dry_run: args.dry_run,
        archive_off: args.archive_mode == cli::ArchiveMode::Off,
        start: args.start.then_some(StartOptions {
            port: args.port,
            stop_after: args.stop_after,
            pg_options: args.pg_option,
        }),
        handed_on,
    })
}

fn target_of(args: &RestoreArgs) -> anyhow::Result<Target> {
    let mut targets = Vec::new();
    if let Some(t) = &args.target_time {
        targets.push(Target::Time(parse_time(t).context("--target-time")?));
    }
    if let Some(l) = &args.target_lsn {
        targets.push(Target::Lsn(l.parse()?));
    }
    if let Some(x) = args.target_xid {
        targets.push(Target::Xid(x));
    }
    if let Some(n) = &args.target_name {
        targets.push(Target::Name(n.clone()));
    }
    if args.target_immediate {
        targets.push(Target::Immediate);
    }
    match targets.len() {
        0 => Ok(Target::End),
        1 => Ok(targets.remove(0)),
        _ => bail!("give at most one of --target-time, --target-lsn, --target-xid, --target-name, --target-immediate"),
    }
}

fn parse_remap(items: &[String]) -> anyhow::Result<HashMap<u32, PathBuf>> {
    let mut out = HashMap::new();
    for item in items {
        let (oid, dir) = item
            .split_once('=')
            .with_context(|| format!("--tablespace-map {item:?}: expected OID=DIR"))?;
        let oid: u32 = oid.parse().with_context(|| {
            format!("--tablespace-map {item:?}: {oid:?} is not a tablespace OID")
        })?;
        let dir = PathBuf::from(dir);
        if !dir.is_absolute() {
            bail!("--tablespace-map {item:?}: the directory must be an absolute path");
        }
        out.insert(oid, dir);
    }
    Ok(out)
}

fn print(report: &RestoreReport, json: bool) -> anyhow::Result<()> {
    let plan = &report.plan;
    let Some(stats) = &report.stats else {
        // --dry-run
        if json {
            outln!("{}", serde_json::to_string_pretty(plan)?);
            return Ok(());
        }
        outln!(
            "backup:    {} (stopped {} at {})",
            plan.backup,
            format_pg_time(&plan.backup_stop_time),
            plan.backup_stop_lsn
        );
        outln!("target:    {}", plan.target);
        let path: Vec<u32> = plan.timeline_path.iter().map(|t| t.0).collect();
        outln!("timeline:  {} (path {:?})", plan.timeline, path);
        for s in &plan.stray_timelines {
            outln!("passed:    timeline {} ({})", s.timeline, s.reason);
        }
        match &plan.wal {
            Some(w) => outln!(
                "wal:       {} .. {} ({} segments in the archive)",
                w.first,
                w.last.as_ref().map_or("-", |l| l.as_str()),
                w.count
            ),
            None => outln!("wal:       only the backup's own"),
        }
        for r in &plan.recoverable {
            outln!(
                "window:    {} .. {} (recoverable target times)",
                format_pg_time(&r.from),
                format_pg_time(&r.to)
            );
        }
        outln!("into:      {}", report.pgdata.display());
        outln!(
            "archive:   archive_mode {} in the restored server",
            plan.archive_mode
        );
        for t in &plan.tablespaces {
            if t.remapped {
                outln!(
                    "tablespace {}: {} (--tablespace-map; the backup's location was {})",
                    t.oid,
                    t.directory.display(),
                    t.location
                );
            } else {
                outln!(
                    "tablespace {}: {} (the backup's location)",
                    t.oid,
                    t.directory.display()
                );
            }
        }
        return Ok(());
    };
    match &report.recovery {
        Some(outcome) if json => outln!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"restore": stats, "recovery": outcome, "archive_mode": plan.archive_mode})
            )?
        ),
        Some(outcome) => outln!("{outcome}"),
        None if json => outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"restore": stats, "plan": plan}))?
        ),
        None => {}
    }
    Ok(())
}

//! `pitr restore`: plan, lay the backup down, and configure PostgreSQL to recover to the
//! target — optionally starting it and waiting until it got there.

mod laydown;
mod plan;
mod start;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use pitr_store::Repo;

use crate::cli::{RestoreArgs, TargetAction};
pub use laydown::sync_dir;
use laydown::LayDown;
pub use plan::{format_pg_time, parse_time, Target, TimelineChoice};

fn target_of(args: &RestoreArgs) -> anyhow::Result<Target> {
    let mut targets = Vec::new();
    if let Some(t) = &args.target_time {
        targets.push(Target::Time(parse_time(t)?));
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

/// Recovery settings, appended to postgresql.auto.conf after removing any earlier ones.
fn recovery_settings(
    repo_url: &str,
    target: &Target,
    args: &RestoreArgs,
    backup_id: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let exe = std::env::current_exe().context("find the pitr binary's own path")?;
    let exe = exe.canonicalize().unwrap_or(exe);
    let command = format!(
        "{} --repo {} restore-wal %f %p",
        shell_word(&exe.display().to_string()),
        shell_word(repo_url)
    );
    let cleanup = format!(
        "{} --repo {} spool-clean pg_wal",
        shell_word(&exe.display().to_string()),
        shell_word(repo_url)
    );
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
            (!args.target_exclusive).to_string(),
        ));
    }
    out.push((
        "recovery_target_timeline".into(),
        conf_value(&args.target_timeline),
    ));
    if target != &Target::End {
        let action = match args.target_action {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        };
        out.push(("recovery_target_action".into(), conf_value(action)));
    }
    let _ = backup_id;
    Ok(out)
}

const MARK: &str = "# pitr restore";

fn write_recovery_conf(
    pgdata: &Path,
    settings: &[(String, String)],
    header: &str,
) -> anyhow::Result<()> {
    let path = pgdata.join("postgresql.auto.conf");
    let old = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
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
    write_durably(&path, text.as_bytes(), 0o600)?;
    write_durably(&pgdata.join("recovery.signal"), b"", 0o600)?;
    sync_dir(pgdata)
}

fn write_durably(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("write {}", path.display()))
}

/// Point remapped tablespaces at their new directories in `tablespace_map` (PostgreSQL makes
/// the pg_tblspc links from it at startup).
fn rewrite_tablespace_map(pgdata: &Path, remap: &HashMap<u32, PathBuf>) -> anyhow::Result<()> {
    if remap.is_empty() {
        return Ok(());
    }
    let path = pgdata.join("tablespace_map");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
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
    write_durably(&path, out.as_bytes(), 0o600)
}

pub async fn restore(repo_url: &str, args: RestoreArgs) -> anyhow::Result<()> {
    let target = target_of(&args)?;
    let timeline: TimelineChoice = args
        .target_timeline
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--target-timeline {e}"))?;
    let remap = parse_remap(&args.tablespace_map)?;
    let repo = Repo::open(repo_url).await?;
    let plan = plan::plan(
        &repo,
        plan::PlanRequest {
            target: &target,
            exclusive: args.target_exclusive,
            backup_id: args.backup.as_deref(),
            timeline: &timeline,
        },
    )
    .await?;
    let pgdata = std::path::absolute(&args.pgdata)
        .with_context(|| format!("resolve {}", args.pgdata.display()))?;
    let lay = LayDown {
        repo: &repo,
        manifest: &plan.manifest,
        pgdata: &pgdata,
        remap: &remap,
        delta: args.delta,
    };
    lay.check_targets()?;
    if args.dry_run {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            println!(
                "backup:    {} (stopped {} at {})",
                plan.backup,
                format_pg_time(&plan.backup_stop_time),
                plan.backup_stop_lsn
            );
            println!("target:    {}", plan.target);
            println!(
                "timeline:  {} (path {:?})",
                plan.timeline, plan.timeline_path
            );
            match &plan.wal {
                Some(w) => println!(
                    "wal:       {} .. {} ({} segments in the archive)",
                    w.first,
                    w.last.as_deref().unwrap_or("-"),
                    w.count
                ),
                None => println!("wal:       only the backup's own"),
            }
            println!("into:      {}", pgdata.display());
        }
        return Ok(());
    }
    tracing::info!(
        "restore backup {} into {} for {}",
        plan.backup,
        pgdata.display(),
        plan.target
    );
    let stats = lay.run().await?;
    rewrite_tablespace_map(&pgdata, &remap)?;
    let settings = recovery_settings(repo.url(), &target, &args, &plan.backup)?;
    write_recovery_conf(
        &pgdata,
        &settings,
        &format!(
            "backup {} at {}",
            plan.backup,
            chrono::Utc::now().to_rfc3339()
        ),
    )?;
    tracing::info!(
        "restore {}: {} files, {} MiB fetched, {} MiB reused in {:.1} s; recovery configured",
        plan.backup,
        stats.files,
        stats.bytes_fetched >> 20,
        stats.bytes_reused >> 20,
        stats.seconds
    );
    if args.start {
        let outcome = start::start_and_wait(&pgdata, &plan.manifest, &args).await?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"restore": stats, "recovery": outcome})
                )?
            );
        } else {
            println!("{outcome}");
        }
    } else if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"restore": stats, "plan": plan}))?
        );
    }
    Ok(())
}

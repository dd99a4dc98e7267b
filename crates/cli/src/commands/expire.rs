//! `pitr expire`: retention and garbage collection; `--dry-run [--json]` prints what would go.

use pitr_core::expire::{expire, ExpireReport, ExpireRequest, Retention};
use pitr_store::Repo;

use pitr_settings::cli::ExpireArgs;

pub async fn run(
    url: &str,
    options: &pitr_store::RepoOptions,
    args: ExpireArgs,
) -> anyhow::Result<()> {
    let repo = Repo::open(url, options).await?;
    if !args.dry_run && args.gc_grace < std::time::Duration::from_secs(600) {
        tracing::warn!(
            "--gc-grace {} s is shorter than archive-wal may take between storing a chunk and \
             naming it (600 s): run this only while nothing archives or backs up",
            args.gc_grace.as_secs()
        );
    }
    let days = |d: u32| chrono::Duration::days(i64::from(d));
    let req = ExpireRequest {
        retention: Retention {
            full: args.options.retain_full,
            days: args.options.retain_days.map(days),
            wal_days: args.options.retain_wal_days.map(days),
        },
        dry_run: args.dry_run,
        gc_grace: args.gc_grace,
        marker_stale: args.marker_stale,
        retire_timelines: args
            .retire_timeline
            .iter()
            .map(|&n| pitr_pg::TimelineId(n))
            .collect(),
    };
    let report = expire(&repo, &req).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report)?;
    }
    Ok(())
}

fn print_text(r: &ExpireReport) -> anyhow::Result<()> {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    for b in &r.backups {
        outln!(
            "{verb} backup {} (finished {})",
            b.id,
            b.stop_time.format("%Y-%m-%d %H:%M:%S%:z")
        );
    }
    for t in &r.retired_timelines {
        outln!("{verb} stray timeline {t} (its history file and WAL)");
    }
    if r.dry_run {
        for w in &r.wal {
            outln!("{verb} WAL {}", w.key);
        }
        for c in &r.chunks {
            outln!("{verb} chunk {} ({} bytes)", c.key, c.bytes);
        }
        for s in &r.staging {
            outln!("{verb} staging file {} ({} bytes)", s.key, s.bytes);
        }
    }
    if let Some(why) = &r.chunks_skipped {
        outln!("chunks not collected: {why}");
    }
    for m in &r.stale_markers {
        outln!("ignored stale backup marker {m}");
    }
    outln!(
        "kept {} backups{}; {verb} {} backups, {} WAL files, {} chunks, {} staging files; \
         {} bytes {}{}",
        r.kept.len(),
        if r.pinned.is_empty() {
            String::new()
        } else {
            format!(" ({} pinned: {})", r.pinned.len(), r.pinned.join(", "))
        },
        r.backups.len(),
        r.wal.len(),
        r.chunks.len(),
        r.staging.len(),
        r.bytes_freed,
        if r.dry_run { "would be freed" } else { "freed" },
        if r.chunks_in_grace > 0 {
            format!(
                "; {} unreferenced chunks younger than the grace period stay",
                r.chunks_in_grace
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

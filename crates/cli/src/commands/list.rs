//! `pitr list [--json]`: backups, oldest first.

use std::collections::BTreeSet;

use pitr_core::repofile::{load_pins, BackupManifest};
use pitr_core::time::format_time;
use pitr_store::Repo;

use pitr_settings::cli::ListArgs;

pub async fn run(
    url: &str,
    options: &pitr_store::RepoOptions,
    args: ListArgs,
) -> anyhow::Result<()> {
    let repo = Repo::open(url, options).await?;
    // A damaged manifest is named on stderr; the others are listed.
    let backups = BackupManifest::list(&repo).await?.warn_damaged();
    let pinned: BTreeSet<String> = load_pins(&repo)
        .await?
        .warn_damaged()
        .into_iter()
        .map(|p| p.id)
        .collect();
    if args.json {
        let list: Vec<_> = backups
            .iter()
            .map(|b| {
                let mut s = b.summary();
                s["pinned"] = pinned.contains(&b.id).into();
                s
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if backups.is_empty() {
        outln!("no backups in {}", repo.url());
        return Ok(());
    }
    outln!(
        "{:<17} {:<29} {:<29} {:>9} {:>9} {:>4} {:<6}  wal",
        "id",
        "start",
        "stop",
        "size MiB",
        "new MiB",
        "tli",
        "pinned"
    );
    for b in &backups {
        outln!(
            "{:<17} {:<29} {:<29} {:>9} {:>9} {:>4} {:<6}  {}..{}",
            b.id,
            format_time(&b.start_time),
            format_time(&b.stop_time),
            b.size_bytes >> 20,
            b.stored_bytes >> 20,
            b.timeline.0,
            if pinned.contains(&b.id) { "yes" } else { "" },
            b.wal_start,
            b.wal_stop
        );
    }
    Ok(())
}

//! `pitr info [--json]`: the repository summary.

use pitr_core::info::Info;
use pitr_core::time::{format_time, parse_time};
use pitr_store::Repo;

use pitr_settings::cli::InfoArgs;

pub async fn run(
    url: &str,
    options: &pitr_store::RepoOptions,
    args: InfoArgs,
) -> anyhow::Result<()> {
    let repo = Repo::open(url, options).await?;
    let info = pitr_core::info::info(&repo).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print_text(&info)?;
    }
    Ok(())
}

/// A backup summary's RFC 3339 time in the form `list` prints and `--target-time` takes.
fn shown(v: &serde_json::Value) -> String {
    let s = v.as_str().unwrap_or("");
    parse_time(s).map_or_else(|_| s.to_string(), |t| format_time(&t))
}

fn print_text(info: &Info) -> anyhow::Result<()> {
    outln!("repository:  {}", info.repository);
    if let Some(s) = &info.system_identifier {
        outln!("system:      {s}");
    }
    outln!(
        "chunks:      {} bytes stored (chunk size {}, zstd level {})",
        info.stored_bytes,
        info.chunk_size,
        info.compression_level
    );
    match &info.cipher {
        Some(c) => outln!(
            "encryption:  {c}, keyed chunk IDs ({}), format {}",
            pitr_store::CHUNK_ID,
            info.format_version
        ),
        None => outln!("encryption:  none (format {})", info.format_version),
    }
    outln!("backups:     {}", info.backups.len());
    for b in &info.backups {
        outln!(
            "  {}  {} .. {}  {} MiB ({} MiB new)",
            b["id"].as_str().unwrap_or(""),
            shown(&b["start_time"]),
            shown(&b["stop_time"]),
            b["size_bytes"].as_u64().unwrap_or(0) >> 20,
            b["stored_bytes"].as_u64().unwrap_or(0) >> 20,
        );
    }
    for r in &info.recoverable {
        outln!(
            "recoverable: {} .. {}",
            format_time(&r.from),
            format_time(&r.to)
        );
    }
    let w = &info.wal;
    outln!(
        "wal:         {} files, {} bytes raw, {} bytes stored",
        w.files,
        w.raw_bytes,
        w.stored_bytes
    );
    if let (Some(n), Some(t)) = (&w.last_archived, &w.last_archived_at) {
        let age = w
            .last_archived_age_seconds
            .map_or(String::new(), |s| format!(" ({s} s ago)"));
        outln!("last:        {n} at {}{age}", format_time(t));
    }
    for t in &w.timelines {
        outln!(
            "timeline {}:  {} .. {} ({} segments{})",
            t.timeline,
            t.first,
            t.last,
            t.segments,
            if t.gaps.is_empty() {
                String::new()
            } else {
                format!(", {} gaps", t.gaps.len())
            }
        );
        for [a, b] in &t.gaps {
            outln!("  missing:   {a} .. {b}");
        }
    }
    if !w.history_files.is_empty() {
        let names: Vec<&str> = w.history_files.iter().map(|n| n.as_str()).collect();
        outln!("history:     {}", names.join(", "));
    }
    for d in &info.damaged {
        outln!("damaged:     {}: {}", d.key, d.error);
    }
    Ok(())
}

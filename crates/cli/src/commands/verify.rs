//! `pitr verify`: one line per problem on stdout (or one JSON object with `--json`), exit 1
//! when there is any.

use anyhow::bail;
use pitr_core::verify::{RestoreTest, VerifyRequest};
use pitr_store::Repo;

use crate::progress::Shown;
use pitr_settings::cli::VerifyArgs;

pub async fn run(
    url: &str,
    options: &pitr_store::RepoOptions,
    args: VerifyArgs,
    handed_on: pitr_core::restore::HandedOn,
) -> anyhow::Result<()> {
    let timeline: pitr_core::restore::TimelineChoice = args
        .target_timeline
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--target-timeline {e}"))?;
    let repo = Repo::open(url, options).await?;
    let report = pitr_core::verify::verify(
        &repo,
        VerifyRequest {
            backup: args.backup,
            max_age: args.max_age,
            restore_test: args.restore_test.then_some(RestoreTest {
                scratch: args.options.scratch,
                port: args.port,
                check_sql: args.options.check_sql,
                immediate: args.target_immediate,
                handed_on,
                timeline: Some(timeline),
            }),
        },
        &Shown,
    )
    .await?;
    if args.json {
        let mut doc = serde_json::to_value(&report)?;
        doc["ok"] = report.ok().into();
        doc["repository"] = repo.url().into();
        outln!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for p in &report.problems {
            outln!("{p}");
        }
        for w in &report.warnings {
            outln!("warning: {w}");
        }
        for t in &report.tablespaces {
            outln!(
                "backup {} tablespace {}: recorded location {:?} (a restore uses it only with \
                 --tablespaces-as-recorded; else --tablespace-map {}=DIR)",
                t.backup,
                t.oid,
                t.location,
                t.oid
            );
        }
        if let Some(t) = &report.restore_test {
            outln!(
                "restore test: backup {} restored in {:.1} s, recovered to {} in {:.1} s{}",
                t.backup,
                t.restore_seconds,
                t.target,
                t.recovery_seconds,
                t.recovery
                    .as_ref()
                    .map_or(String::new(), |r| format!(" ({r})"))
            );
            for c in &t.checks {
                outln!(
                    "restore test check {:?}: {}",
                    c.check,
                    if c.ok { "ok" } else { "FAILED" }
                );
            }
        }
    }
    let n = report.problems.len();
    if n > 0 {
        bail!(
            "verify found {n} problem{} in {}",
            if n == 1 { "" } else { "s" },
            repo.url()
        );
    }
    if !args.json {
        outln!(
            "verified {} backups and {} archived WAL files ({} MiB of chunks): no problems",
            report.backups,
            report.wal_files,
            report.bytes >> 20
        );
    }
    Ok(())
}

//! `pitr verify [--backup ID]`: one line per problem on stdout, exit 1 when there is any.

use anyhow::bail;
use pitr_core::verify::VerifyRequest;
use pitr_store::Repo;

use crate::cli::VerifyArgs;

pub async fn run(url: &str, args: VerifyArgs) -> anyhow::Result<()> {
    let repo = Repo::open(url).await?;
    let report = pitr_core::verify::verify(
        &repo,
        VerifyRequest {
            backup: args.backup,
        },
    )
    .await?;
    for p in &report.problems {
        println!("{p}");
    }
    let n = report.problems.len();
    if n > 0 {
        bail!(
            "verify found {n} problem{} in {}",
            if n == 1 { "" } else { "s" },
            repo.url()
        );
    }
    println!(
        "verified {} backups and {} archived WAL files ({} MiB of chunks): no problems",
        report.backups,
        report.wal_files,
        report.bytes >> 20
    );
    Ok(())
}

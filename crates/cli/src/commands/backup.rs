//! `pitr backup`: prints the backup ID once its manifest is committed.

use pitr_core::backup::BackupRequest;
use pitr_store::Repo;

use pitr_core::config::Checkpoint;

use crate::progress::Shown;
use pitr_settings::cli::BackupArgs;

pub async fn run(
    url: &str,
    options: &pitr_store::RepoOptions,
    args: BackupArgs,
    password: Option<String>,
) -> anyhow::Result<()> {
    let repo = Repo::open(url, options).await?;
    let req = BackupRequest {
        dbname: args.options.dbname,
        password,
        checkpoint: args.options.checkpoint.unwrap_or(Checkpoint::Spread).into(),
        label: args.label,
        max_rate: args.options.max_rate,
    };
    let manifest = pitr_core::backup::backup(&repo, req, &Shown).await?;
    outln!("{}", manifest.id);
    Ok(())
}

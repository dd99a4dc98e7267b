//! `pitr backup`: prints the backup ID once its manifest is committed.

use pitr_core::backup::BackupRequest;
use pitr_protocol::CheckpointMode;
use pitr_store::Repo;

use crate::cli::{BackupArgs, Checkpoint};
use crate::progress::Shown;

pub async fn run(
    url: &str,
    options: &pitr_store::RepoOptions,
    args: BackupArgs,
    password: Option<String>,
) -> anyhow::Result<()> {
    let repo = Repo::open(url, options).await?;
    let req = BackupRequest {
        dbname: args.dbname,
        password,
        checkpoint: match args.checkpoint.unwrap_or(Checkpoint::Spread) {
            Checkpoint::Fast => CheckpointMode::Fast,
            Checkpoint::Spread => CheckpointMode::Spread,
        },
        label: args.label,
        max_rate: args.max_rate,
    };
    let manifest = pitr_core::backup::backup(&repo, req, &Shown).await?;
    println!("{}", manifest.id);
    Ok(())
}

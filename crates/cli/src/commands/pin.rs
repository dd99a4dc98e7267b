//! `pitr pin ID` / `pitr unpin ID`: keep a backup whatever the retention says, or not.

use pitr_core::repofile::pin;
use pitr_store::Repo;

use pitr_settings::cli::PinArgs;

pub async fn pin(
    url: &str,
    options: &pitr_store::RepoOptions,
    args: PinArgs,
) -> anyhow::Result<()> {
    let repo = Repo::open(url, options).await?;
    if pin::pin(&repo, &args.id).await? {
        outln!("pinned {}", args.id);
    } else {
        outln!("{} was already pinned", args.id);
    }
    Ok(())
}

pub async fn unpin(
    url: &str,
    options: &pitr_store::RepoOptions,
    args: PinArgs,
) -> anyhow::Result<()> {
    let repo = Repo::open(url, options).await?;
    if pin::unpin(&repo, &args.id).await? {
        outln!("unpinned {}", args.id);
    } else {
        outln!("{} was not pinned", args.id);
    }
    Ok(())
}

//! `pitr init`: create a repository (encrypted or not), or find it already there with the
//! same settings.

use anyhow::bail;
use pitr_store::{InitOutcome, Repo, RepoConfig, RepoOptions};

/// Create the repository at `url` with `config` (again with the same settings is fine). A
/// local repository is not created as root unless `allow_root`: its files would belong to
/// root, and PostgreSQL's archive_command, running as the server's user, could not write them.
/// With `encryption` (the first slot's passphrase, its label and Argon2id cost) the
/// repository is encrypted.
pub async fn init(
    url: &str,
    options: &RepoOptions,
    config: RepoConfig,
    encryption: Option<(pitr_store::Secret, &str, pitr_store::KdfCost)>,
    allow_root: bool,
) -> anyhow::Result<()> {
    if crate::instance::running_as_root() && !allow_root && pitr_store::Location::is_local_url(url)
    {
        bail!(
            "refusing to create repository {url} as root: its files would belong to root and \
             PostgreSQL's archive_command could not write them; run `pitr init` as the user \
             PostgreSQL runs as (e.g. `sudo -u postgres pitr init`), or pass --allow-root"
        );
    }
    let (_, outcome) = match &encryption {
        Some((secret, label, cost)) => {
            Repo::init_encrypted(url, config, options, secret, label, *cost).await?
        }
        None => Repo::init(url, config, options).await?,
    };
    match outcome {
        InitOutcome::Created if encryption.is_some() => tracing::info!(
            "created encrypted repository {url} ({}); keep the passphrase safe, and consider \
             `pitr key export` into a safe: without a key slot's secret or the exported key \
             nothing in it can be read",
            pitr_store::CIPHER
        ),
        InitOutcome::Created => tracing::info!("created repository {url}"),
        InitOutcome::AlreadyInitialized => {
            tracing::info!("repository {url} already exists with these settings")
        }
    }
    Ok(())
}

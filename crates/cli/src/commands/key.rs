//! `pitr key list|add|remove|export`: the key slots of an encrypted repository.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context};
use pitr_settings::config::{read_secret_file, Env};
use pitr_store::{Repo, Secret};

use pitr_settings::cli::{KeyAddArgs, KeyCommand};

pub async fn run(
    url: &str,
    options: &pitr_store::RepoOptions,
    command: KeyCommand,
    env: &Env,
) -> anyhow::Result<()> {
    let repo = Repo::open(url, options).await?;
    if repo.cipher().is_none() {
        bail!("repository {url} is not encrypted: it has no key slots (pitr init --encryption makes an encrypted one)");
    }
    match command {
        KeyCommand::List { json } => list(&repo, json).await,
        KeyCommand::Add(args) => add(&repo, args, env).await,
        KeyCommand::Remove { id } => {
            repo.key_remove(&id).await?;
            tracing::info!("removed key slot {id} of {url}");
            Ok(())
        }
        KeyCommand::Export { output } => export(&repo, output.as_deref()),
    }
}

async fn list(repo: &Repo, json: bool) -> anyhow::Result<()> {
    let slots = repo.key_slots().await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&slots)?);
        return Ok(());
    }
    outln!(
        "{:<16}  {:<10}  {:<25}  {:<6}  label",
        "id",
        "kind",
        "created",
        "in use"
    );
    for s in slots {
        outln!(
            "{:<16}  {:<10}  {:<25}  {:<6}  {}",
            s.id,
            s.kind,
            pitr_core::time::format_time(&s.created),
            if s.in_use { "yes" } else { "" },
            s.label
        );
    }
    Ok(())
}

async fn add(repo: &Repo, args: KeyAddArgs, env: &Env) -> anyhow::Result<()> {
    if let Some(path) = &args.key_file {
        // Claim the file first: nothing is added when it cannot be written.
        let mut file = create_private(path)?;
        let (slot, text) = repo.key_add_key_file(&args.label).await?;
        fill(&mut file, path, &text)?;
        tracing::info!(
            "added key slot {} (key file {}); give it to archive_command and restore_command \
             as passphrase_file or the systemd credential pitr-passphrase",
            slot.id,
            path.display()
        );
        outln!("{}", slot.id);
        return Ok(());
    }
    let new = match (&args.new_passphrase_file, env.get("PITR_NEW_PASSPHRASE")) {
        (Some(p), _) => Secret::new(
            read_secret_file(p)?,
            format!("--new-passphrase-file {}", p.display()),
        ),
        (None, Some(v)) => Secret::new(v, "PITR_NEW_PASSPHRASE"),
        (None, None) => match crate::prompt::new_passphrase("the new key slot")? {
            Some(s) => s,
            None => bail!(
                "pitr key add needs --new-passphrase-file FILE, PITR_NEW_PASSPHRASE, \
                 --key-file FILE, or a terminal to ask at"
            ),
        },
    };
    let slot = repo
        .key_add_passphrase(&new, &args.label, args.kdf.cost())
        .await?;
    tracing::info!("added passphrase key slot {}", slot.id);
    outln!("{}", slot.id);
    Ok(())
}

fn export(repo: &Repo, output: Option<&Path>) -> anyhow::Result<()> {
    let text = repo.key_export()?;
    tracing::warn!(
        "this is the repository's master key: it opens everything in it whatever the key slots \
         say; keep it offline, in a safe. Losing every key slot and this export loses the \
         repository"
    );
    match output {
        Some(path) => fill(&mut create_private(path)?, path, &text)?,
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(())
}

/// Write a secret into the file [`create_private`] made, durably.
fn fill(file: &mut std::fs::File, path: &Path, text: &str) -> anyhow::Result<()> {
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .with_context(|| format!("write {}", path.display()))
}

/// A new file only its owner can read; an existing one is never overwritten.
fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {} (it must not exist yet)", path.display()))
}

//! Pins, `pins/<backup id>.json`: a pinned backup is kept whatever the retention says. A
//! separate small document, so that the manifest stays create-only; `pitr unpin` deletes it.

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use pitr_store::{layout, DocWrite, Repo};
use serde::{Deserialize, Serialize};

use super::{BackupManifest, Damaged, Loaded};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// The backup it keeps.
    pub id: String,
    pub pinned_at: chrono::DateTime<chrono::Utc>,
}

/// Whether `id` can be a backup ID: what `pitr backup` makes (`20261126T140300Z`, maybe with a
/// `-2` suffix), never a path.
pub fn check_backup_id(id: &str) -> anyhow::Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with(['.', '-'])
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!("{id:?} is not a backup ID (see `pitr list`)");
    }
    Ok(())
}

impl Pin {
    pub fn key(id: &str) -> String {
        layout::pin(id)
    }
}

/// Pin backup `id`: it must exist. True when this call pinned it, false when it already was.
pub async fn pin(repo: &Repo, id: &str) -> anyhow::Result<bool> {
    check_backup_id(id)?;
    if repo.get_doc(&BackupManifest::key(id)).await?.is_none() {
        bail!("no backup {id} in {} (see `pitr list`)", repo.url());
    }
    let body = serde_json::to_vec(&Pin {
        id: id.to_string(),
        pinned_at: chrono::Utc::now(),
    })?;
    match repo.put_doc(&Pin::key(id), body.into()).await? {
        DocWrite::Created => Ok(true),
        DocWrite::Exists(_) => Ok(false),
    }
}

/// Unpin backup `id`. True when it was pinned.
pub async fn unpin(repo: &Repo, id: &str) -> anyhow::Result<bool> {
    check_backup_id(id)?;
    let key = Pin::key(id);
    if repo.get_doc(&key).await?.is_none() {
        return Ok(false);
    }
    repo.delete_docs(&[key]).await?;
    Ok(true)
}

/// Every pin of the repository, and the pins that are damaged (do not parse, or are stored
/// under another backup's key).
pub async fn load_pins(repo: &Repo) -> anyhow::Result<Loaded<Pin>> {
    let keys: Vec<String> = repo
        .list(layout::PINS_PREFIX)
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.ends_with(".json"))
        .collect();
    type Read = Option<Result<bytes::Bytes, Damaged>>;
    let bodies: Vec<(String, Read)> = futures::stream::iter(keys)
        .map(|key| async move { anyhow::Ok((key.clone(), super::read_doc(repo, &key).await?)) })
        .buffered(16)
        .try_collect()
        .await?;
    let mut out = Loaded::default();
    for (key, body) in bodies {
        let Some(body) = out.body(body) else { continue };
        let parsed = serde_json::from_slice::<Pin>(&body)
            .with_context(|| format!("parse {key}"))
            .and_then(|p| {
                check_backup_id(&p.id)?;
                if Pin::key(&p.id) != key {
                    bail!("it pins backup {}, not the one its key names", p.id);
                }
                Ok(p)
            });
        match parsed {
            Ok(p) => out.docs.push(p),
            Err(e) => out.damaged.push(Damaged::new(&key, &e)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids_are_never_paths() {
        for ok in ["20261126T140300Z", "20261126T140300Z-2"] {
            check_backup_id(ok).unwrap();
        }
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b"] {
            assert!(check_backup_id(bad).is_err(), "{bad:?}");
        }
    }
}

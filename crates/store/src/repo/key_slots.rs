//! Key administration of an encrypted repository (`pitr key …`): listing, adding and
//! removing key slots, and exporting the master key.

use super::{DocWrite, Unlocked};
use crate::keyslot::{KdfCost, KeySlot, Secret, SecretKind, SlotInfo, MAX_PASSPHRASE_SLOTS};
use crate::{layout, Repo, Result, StoreError};

/// The key slots of an encrypted repository (`pitr key …`).
impl Repo {
    fn key_error(&self, detail: impl Into<String>) -> StoreError {
        StoreError::Key {
            url: self.url().to_string(),
            detail: detail.into(),
        }
    }

    fn unlocked(&self) -> Result<&Unlocked> {
        self.unlocked
            .as_deref()
            .ok_or_else(|| self.key_error("the repository is not encrypted (it has no keys)"))
    }

    fn repository_id(&self) -> &str {
        &self
            .config
            .encryption
            .as_ref()
            .expect("an unlocked repository has encryption settings")
            .repository_id
    }

    pub(super) async fn put_slot(&self, slot: &KeySlot) -> Result<()> {
        let key = layout::key_slot(&slot.id);
        let body = serde_json::to_vec_pretty(slot).expect("slot serializes");
        match self.put_doc(&key, body.into()).await? {
            DocWrite::Created => Ok(()),
            DocWrite::Exists(_) => Err(self.key_error(format!("{key} exists already"))),
        }
    }

    /// Every key slot, in key order, and the ones that are damaged (key and why): a damaged
    /// slot opens nothing, and must not keep the others from opening.
    pub(super) async fn slots(&self) -> Result<(Vec<KeySlot>, Vec<(String, String)>)> {
        let (mut good, mut damaged) = (Vec::new(), Vec::new());
        for listed in self.list_objects(layout::KEYS_PREFIX).await? {
            if listed.staging {
                continue;
            }
            let Some(body) = self.get_doc(&listed.key).await? else {
                continue;
            };
            match KeySlot::parse(&listed.key, &body) {
                Ok(slot) => good.push(slot),
                Err(detail) => damaged.push((listed.key, detail)),
            }
        }
        Ok((good, damaged))
    }

    /// Key slots that cannot be read (key and why); `pitr verify` reports them.
    pub async fn damaged_key_slots(&self) -> Result<Vec<(String, String)>> {
        if self.config.encryption.is_none() {
            return Ok(Vec::new());
        }
        Ok(self.slots().await?.1)
    }

    /// The key slots, the one that opened this repository marked.
    pub async fn key_slots(&self) -> Result<Vec<SlotInfo>> {
        let unlocked = self.unlocked()?;
        Ok(self
            .slots()
            .await?
            .0
            .iter()
            .map(|s| s.info(unlocked.slot.as_deref() == Some(s.id.as_str())))
            .collect())
    }

    /// Add a passphrase slot for `passphrase` (Argon2id at `cost`).
    pub async fn key_add_passphrase(
        &self,
        passphrase: &Secret,
        label: &str,
        cost: KdfCost,
    ) -> Result<SlotInfo> {
        let master = self.unlocked()?.master.clone();
        if !matches!(
            passphrase.kind().map_err(|d| self.key_error(d))?,
            SecretKind::Passphrase
        ) {
            return Err(self.key_error(format!(
                "{} holds a key file or an exported key, not a new passphrase",
                passphrase.origin()
            )));
        }
        let (slots, _) = self.slots().await?;
        if slots.iter().filter(|s| s.kind() == "passphrase").count() >= MAX_PASSPHRASE_SLOTS {
            return Err(self.key_error(format!(
                "the repository has {MAX_PASSPHRASE_SLOTS} passphrase slots, the most an unlock \
                 tries; remove one first (pitr key remove)"
            )));
        }
        let (id, label, pass) = (
            self.repository_id().to_string(),
            label.to_string(),
            passphrase.clone(),
        );
        let slot = tokio::task::spawn_blocking(move || {
            KeySlot::passphrase(&id, &label, pass.expose(), cost, &master)
        })
        .await
        .expect("key derivation does not panic")
        .map_err(|d| self.key_error(d))?;
        self.put_slot(&slot).await?;
        Ok(slot.info(false))
    }

    /// Add a key-file slot: returns it and the key file's text (256 random bits), which opens
    /// the repository without a passphrase's deliberately slow derivation.
    pub async fn key_add_key_file(
        &self,
        label: &str,
    ) -> Result<(SlotInfo, zeroize::Zeroizing<String>)> {
        let master = self.unlocked()?.master.clone();
        let (slot, text) = KeySlot::key_file(self.repository_id(), label, &master)
            .map_err(|d| self.key_error(d))?;
        self.put_slot(&slot).await?;
        Ok((slot.info(false), text))
    }

    /// Remove key slot `id`; the last slot is never removed (that would lose the repository).
    pub async fn key_remove(&self, id: &str) -> Result<()> {
        self.unlocked()?;
        let (slots, _) = self.slots().await?;
        if !slots.iter().any(|s| s.id == id) {
            return Err(self.key_error(format!("no key slot {id:?} (pitr key list shows them)")));
        }
        if slots.len() == 1 {
            return Err(self.key_error(format!(
                "{id} is the last key slot: removing it would make the repository unreadable; \
                 add another first (pitr key add)"
            )));
        }
        self.delete_docs(&[layout::key_slot(id)]).await?;
        Ok(())
    }

    /// The unwrapped master key as text, for a safe: with it (`pitr-master-key-v1:…` given as
    /// the passphrase) the repository opens even when every slot is lost.
    pub fn key_export(&self) -> Result<zeroize::Zeroizing<String>> {
        Ok(crate::keyslot::export_text(&self.unlocked()?.master))
    }
}

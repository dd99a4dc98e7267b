//! Creating and opening a repository: `init` (plain and encrypted), `open`, and unlocking an
//! encrypted one with a passphrase, a key file or an exported master key.

use std::sync::Arc;

use super::config::{parse_config, validate};
use super::{DocWrite, EncryptionConfig, RepoConfig, Unlocked, ENCRYPTED_FORMAT_VERSION};
use crate::crypto::{Keys, MasterKey};
use crate::keyslot::{KdfCost, KeySlot, Secret, SecretKind, MAX_PASSPHRASE_SLOTS};
use crate::{crypto, layout, Location, Repo, RepoOptions, Result, StoreError};

#[derive(Debug, PartialEq, Eq)]
pub enum InitOutcome {
    Created,
    AlreadyInitialized,
}

impl Repo {
    /// Create the repository at `url` (reached with `options`; its secret is not used: an
    /// encrypted repository is made by [`Repo::init_encrypted`]). Running it again with the
    /// same settings is fine.
    pub async fn init(
        url: &str,
        config: RepoConfig,
        options: &RepoOptions,
    ) -> Result<(Repo, InitOutcome)> {
        validate(url, &config)?;
        let location = Location::connect(url, true, &options.remote)?;
        let body = serde_json::to_vec_pretty(&config).expect("config serializes");
        let repo = Repo::new(location, config.clone(), None, options.jobs());
        match repo.put_doc(layout::CONFIG, body.into()).await? {
            DocWrite::Created => Ok((repo, InitOutcome::Created)),
            DocWrite::Exists(existing) => {
                let found: RepoConfig =
                    serde_json::from_slice(&existing).map_err(|e| StoreError::Corrupt {
                        key: layout::CONFIG.into(),
                        detail: e.to_string(),
                    })?;
                if found == config {
                    Ok((repo, InitOutcome::AlreadyInitialized))
                } else if found.encryption.is_some() {
                    Err(StoreError::ConfigMismatch {
                        url: url.to_string(),
                        detail: "it is encrypted; asked for an unencrypted one".into(),
                    })
                } else {
                    Err(StoreError::ConfigMismatch {
                        url: url.to_string(),
                        detail: format!(
                            "it has chunk size {}, WAL chunk size {}, compression level {}, format {}; asked for {}, {}, {}, {}",
                            found.chunk_size,
                            found.wal_chunk_size,
                            found.compression_level,
                            found.format_version,
                            config.chunk_size,
                            config.wal_chunk_size,
                            config.compression_level,
                            config.format_version
                        ),
                    })
                }
            }
        }
    }

    /// Create an encrypted repository at `url` with `config`'s settings: a new random master
    /// key, wrapped in a first key slot under `passphrase` (Argon2id at `cost`). Running it
    /// again with the same settings and a passphrase that opens the repository is fine.
    pub async fn init_encrypted(
        url: &str,
        mut config: RepoConfig,
        options: &RepoOptions,
        passphrase: &Secret,
        label: &str,
        cost: KdfCost,
    ) -> Result<(Repo, InitOutcome)> {
        let key_err = |detail: String| StoreError::Key {
            url: url.to_string(),
            detail,
        };
        if !matches!(passphrase.kind().map_err(key_err)?, SecretKind::Passphrase) {
            return Err(key_err(format!(
                "a new repository's first key slot needs a passphrase; {} holds a key file or \
                 an exported key",
                passphrase.origin()
            )));
        }
        cost.validate().map_err(key_err)?;
        let location = Location::connect(url, true, &options.remote)?;
        let jobs = options.jobs();
        let raw = Repo::new(location.clone(), RepoConfig::default(), None, jobs);
        if let Some(existing) = raw.get_doc(layout::CONFIG).await? {
            let found = parse_config(url, &existing)?;
            let Some(enc) = &found.encryption else {
                return Err(StoreError::ConfigMismatch {
                    url: url.to_string(),
                    detail: "it is not encrypted; asked for an encrypted one".into(),
                });
            };
            let unlocked = unlock(&raw, url, &existing, &found, enc, passphrase, options).await?;
            if !found.same_settings(&config) {
                return Err(StoreError::ConfigMismatch {
                    url: url.to_string(),
                    detail: format!(
                        "it has chunk size {}, WAL chunk size {}, compression level {}; asked for {}, {}, {}",
                        found.chunk_size,
                        found.wal_chunk_size,
                        found.compression_level,
                        config.chunk_size,
                        config.wal_chunk_size,
                        config.compression_level
                    ),
                });
            }
            return Ok((
                Repo::new(location, found, Some(unlocked), jobs),
                InitOutcome::AlreadyInitialized,
            ));
        }
        let master = MasterKey::generate();
        let keys = Arc::new(Keys::derive(&master));
        config.format_version = ENCRYPTED_FORMAT_VERSION;
        config.encryption = Some(EncryptionConfig {
            cipher: crypto::CIPHER.into(),
            chunk_id: crypto::CHUNK_ID.into(),
            repository_id: hex::encode(crypto::random::<16>()),
            mac: String::new(),
        });
        let mac = hex::encode(keys.config_mac(&config.canonical()));
        config.encryption.as_mut().expect("just set").mac = mac;
        validate(url, &config)?;
        let repository_id = config
            .encryption
            .as_ref()
            .expect("set")
            .repository_id
            .clone();
        let slot = {
            let (pass, label) = (passphrase.clone(), label.to_string());
            let master = master.clone();
            tokio::task::spawn_blocking(move || {
                KeySlot::passphrase(&repository_id, &label, pass.expose(), cost, &master)
            })
            .await
            .expect("key derivation does not panic")
            .map_err(key_err)?
        };
        // The slot first: a crash before the configuration leaves a slot nothing opens (a new
        // init makes a new key), never a configuration no slot opens.
        raw.put_slot(&slot).await?;
        let body = serde_json::to_vec_pretty(&config).expect("config serializes");
        if let DocWrite::Exists(_) = raw.put_doc(layout::CONFIG, body.into()).await? {
            return Err(StoreError::ConfigMismatch {
                url: url.to_string(),
                detail: "another pitr init created it at the same time; run init again".into(),
            });
        }
        let unlocked = Arc::new(Unlocked {
            keys,
            master,
            slot: Some(slot.id.clone()),
        });
        Ok((
            Repo::new(location, config, Some(unlocked), jobs),
            InitOutcome::Created,
        ))
    }

    /// Open an existing repository, reading its configuration: reached with `options.remote`,
    /// an encrypted one unlocked with `options.secret` (`None`: it must be unencrypted; keys
    /// are derived once per `options` however often it is opened), `options.jobs` chunks in
    /// flight.
    pub async fn open(url: &str, options: &RepoOptions) -> Result<Repo> {
        let location = Location::connect(url, false, &options.remote)?;
        let jobs = options.jobs();
        let reader = Repo::new(location, RepoConfig::default(), None, jobs);
        let body = match reader.get_doc(layout::CONFIG).await? {
            Some(b) => b,
            None => {
                return Err(StoreError::NotInitialized {
                    url: url.to_string(),
                })
            }
        };
        let config = parse_config(url, &body)?;
        let unlocked = match (&config.encryption, options.secret.as_ref()) {
            (None, None) => None,
            (None, Some(s)) => {
                return Err(StoreError::NotEncrypted {
                    url: url.to_string(),
                    origin: s.origin().to_string(),
                })
            }
            (Some(_), None) => {
                return Err(StoreError::KeyRequired {
                    url: url.to_string(),
                })
            }
            (Some(enc), Some(secret)) => {
                Some(unlock(&reader, url, &body, &config, enc, secret, options).await?)
            }
        };
        // Chunks are written with the configuration's compression level.
        Ok(Repo::new(reader.location, config, unlocked, jobs))
    }
}

/// Find the master key `secret` opens and check it against the configuration's tag; the
/// result is cached in `options` (and its clones).
async fn unlock(
    raw: &Repo,
    url: &str,
    config_body: &[u8],
    config: &RepoConfig,
    enc: &EncryptionConfig,
    secret: &Secret,
    options: &RepoOptions,
) -> Result<Arc<Unlocked>> {
    let cache_key = (
        url.to_string(),
        config_body.to_vec(),
        *blake3::hash(secret.expose().as_bytes()).as_bytes(),
    );
    if let Some(u) = options.unlocked.get(&cache_key) {
        return Ok(u);
    }
    let key_err = |detail: String| StoreError::Key {
        url: url.to_string(),
        detail,
    };
    let kind = secret.kind().map_err(key_err)?;
    let canonical = config.canonical();
    let tag = hex::decode(&enc.mac).expect("validated");
    let check = |master: MasterKey, slot: Option<String>| -> Result<Arc<Unlocked>> {
        let keys = Keys::derive(&master);
        if !keys.config_mac_matches(&canonical, &tag) {
            return Err(StoreError::Corrupt {
                key: layout::CONFIG.into(),
                detail: match &slot {
                    Some(s) => format!(
                        "fails authentication with the key slot {s} opens: the configuration \
                         was changed, or the slot was not written by this repository's owner"
                    ),
                    None => "fails authentication with the exported key given: the \
                             configuration was changed, or the key is another repository's"
                        .into(),
                },
            });
        }
        Ok(Arc::new(Unlocked {
            keys: Arc::new(keys),
            master,
            slot,
        }))
    };
    let wrong = |tried: String| StoreError::WrongKey {
        url: url.to_string(),
        origin: secret.origin().to_string(),
        tried,
    };
    let unlocked = match kind {
        SecretKind::Master(master) => check(master, None)?,
        SecretKind::KeyFile { ref slot, .. } => {
            let key = layout::key_slot(slot);
            let Some(body) = raw.get_doc(&key).await? else {
                return Err(wrong(format!(
                    "its slot {key} is not there: removed, or the key file is another \
                     repository's"
                )));
            };
            let s = KeySlot::parse(&key, &body).map_err(|detail| StoreError::Corrupt {
                key: key.clone(),
                detail,
            })?;
            let master = s
                .open(&enc.repository_id, &kind, secret.expose())
                .ok_or_else(|| {
                    wrong(format!(
                        "{key} does not open with it: damaged, or the key file is another \
                         repository's"
                    ))
                })?;
            check(master, Some(s.id))?
        }
        SecretKind::Passphrase => {
            let mut found = None;
            let mut tried = Vec::new();
            let (slots, damaged) = raw.slots().await?;
            for (key, detail) in &damaged {
                tracing::warn!("{key}: damaged key slot skipped: {detail}");
            }
            // Each passphrase slot costs an Argon2id run (bounded by `KeySlot::parse`): try
            // at most MAX_PASSPHRASE_SLOTS of them.
            let passphrase_slots: Vec<KeySlot> = slots
                .into_iter()
                .filter(|s| s.kind() == "passphrase")
                .collect();
            let untried = passphrase_slots.len().saturating_sub(MAX_PASSPHRASE_SLOTS);
            for s in passphrase_slots.into_iter().take(MAX_PASSPHRASE_SLOTS) {
                tried.push(layout::key_slot(&s.id));
                let (s2, id, secret2) = (s.clone(), enc.repository_id.clone(), secret.clone());
                let opened = tokio::task::spawn_blocking(move || {
                    s2.open(&id, &SecretKind::Passphrase, secret2.expose())
                })
                .await
                .expect("key derivation does not panic");
                if let Some(master) = opened {
                    found = Some(check(master, Some(s.id))?);
                    break;
                }
            }
            found.ok_or_else(|| {
                let mut why = if tried.is_empty() {
                    "it has no passphrase slot; a key file or an exported key opens it".into()
                } else {
                    format!("wrong passphrase; tried {}", tried.join(", "))
                };
                if untried > 0 {
                    why.push_str(&format!(
                        "; {untried} more passphrase slots not tried (at most \
                         {MAX_PASSPHRASE_SLOTS} are: remove unused ones with `pitr key \
                         remove`, opening with a key file or an exported key)"
                    ));
                }
                for (key, detail) in &damaged {
                    why.push_str(&format!("; refused {key}: {detail}"));
                }
                wrong(why)
            })?
        }
    };
    options.unlocked.put(cache_key, Arc::clone(&unlocked));
    Ok(unlocked)
}

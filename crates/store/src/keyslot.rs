//! Key slots (`keys/<id>.json`): the master key of an encrypted repository, wrapped under a
//! key derived from a passphrase (Argon2id, memory-hard, parameters stored in the slot) or
//! from a generated key file (256 random bits: HKDF is enough, and it costs microseconds, so
//! PostgreSQL's one-process-per-segment archive_command stays fast). Several slots may wrap
//! the same master key, as with LUKS or restic: a passphrase is rotated by adding a slot and
//! removing the old one, without re-encrypting anything.
//!
//! Slots are read before the repository is unlocked, so they are plain JSON; everything in
//! them (name, label, creation time, KDF and its parameters) is bound to the wrapped key as
//! associated data, and a slot that unwraps a key which does not authenticate `config.json` is
//! refused: a slot someone wrote with a key of their own opens nothing.
//!
//! Secrets reach pitr as text (a variable, a file, a systemd credential) and are told apart by
//! their form: `pitr-key-v1:<slot>:<64 hex>` is a key file, `pitr-master-key-v1:<64 hex>` an
//! exported master key, anything else a passphrase.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{self, MasterKey};

const KEY_FILE_PREFIX: &str = "pitr-key-v1:";
const MASTER_KEY_PREFIX: &str = "pitr-master-key-v1:";

/// A secret and where it came from (named in errors, never its value).
#[derive(Clone)]
pub struct Secret {
    value: Zeroizing<String>,
    origin: String,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(from {})", self.origin)
    }
}

/// What a secret is, by its form.
#[derive(Debug)]
pub(crate) enum SecretKind {
    Passphrase,
    KeyFile {
        slot: String,
        key: Zeroizing<[u8; 32]>,
    },
    Master(MasterKey),
}

impl Secret {
    /// `value` as read from `origin` (e.g. "PITR_PASSPHRASE", "--passphrase-file /etc/x");
    /// one trailing newline (as `echo` or an editor leave) is not part of it.
    pub fn new(value: impl Into<String>, origin: impl Into<String>) -> Secret {
        let mut value = Zeroizing::new(value.into());
        if value.ends_with('\n') {
            value.pop();
            if value.ends_with('\r') {
                value.pop();
            }
        }
        Secret {
            value,
            origin: origin.into(),
        }
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub(crate) fn expose(&self) -> &str {
        &self.value
    }

    pub(crate) fn kind(&self) -> Result<SecretKind, String> {
        let v = self.value.as_str();
        if let Some(rest) = v.strip_prefix(KEY_FILE_PREFIX) {
            let bad = || {
                format!(
                    "{}: not a pitr key file (pitr-key-v1:<slot>:<64 hex digits>)",
                    self.origin
                )
            };
            let (slot, hex) = rest.split_once(':').ok_or_else(bad)?;
            if !valid_slot_id(slot) {
                return Err(bad());
            }
            return Ok(SecretKind::KeyFile {
                slot: slot.to_string(),
                key: Zeroizing::new(hex32(hex).ok_or_else(bad)?),
            });
        }
        if let Some(hex) = v.strip_prefix(MASTER_KEY_PREFIX) {
            let key = hex32(hex).ok_or_else(|| {
                format!(
                    "{}: not an exported master key (pitr-master-key-v1:<64 hex digits>)",
                    self.origin
                )
            })?;
            return Ok(SecretKind::Master(MasterKey::from_bytes(key)));
        }
        if v.is_empty() {
            return Err(format!("{}: the passphrase is empty", self.origin));
        }
        Ok(SecretKind::Passphrase)
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// A slot ID: 16 lowercase hex digits.
pub fn valid_slot_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The text of an exported master key (`pitr key export`).
pub(crate) fn export_text(master: &MasterKey) -> Zeroizing<String> {
    Zeroizing::new(format!(
        "{MASTER_KEY_PREFIX}{}\n",
        hex::encode(master.bytes())
    ))
}

/// The cost of a new passphrase slot's Argon2id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfCost {
    pub memory_kib: u32,
    pub iterations: u32,
}

impl Default for KdfCost {
    /// 64 MiB and 3 passes: RFC 9106's second recommended setting, about 0.2 s here.
    fn default() -> Self {
        KdfCost {
            memory_kib: 64 << 10,
            iterations: 3,
        }
    }
}

/// Bounds on a passphrase slot's Argon2id, the same for a slot pitr creates and a slot it
/// reads: a slot is untrusted input (anyone who can write `keys/` can add one), and each slot
/// tried costs one Argon2id run, so pitr never runs one dearer than it would itself create.
/// At most 1 GiB, 16 passes, and 4 GiB × passes in all (e.g. 1 GiB × 4, 256 MiB × 16): about
/// 20 times the default's work.
const MIN_MEMORY_KIB: u32 = 8 << 10;
pub const MAX_MEMORY_KIB: u32 = 1 << 20;
pub const MAX_ITERATIONS: u32 = 16;
pub const MAX_WORK_KIB: u64 = 4 << 20;

/// The most passphrase slots one unlock tries (in key order), and the most a repository is
/// given by `pitr key add`: a hostile writer cannot make an unlock run Argon2id without
/// bound by adding slots.
pub const MAX_PASSPHRASE_SLOTS: usize = 16;

impl KdfCost {
    /// Whether pitr would create (and so will run) an Argon2id of this cost.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_MEMORY_KIB..=MAX_MEMORY_KIB).contains(&self.memory_kib) {
            return Err(format!(
                "Argon2id memory {} KiB is outside {MIN_MEMORY_KIB}..={MAX_MEMORY_KIB} KiB",
                self.memory_kib
            ));
        }
        if !(1..=MAX_ITERATIONS).contains(&self.iterations) {
            return Err(format!(
                "Argon2id iterations {} outside 1..={MAX_ITERATIONS}",
                self.iterations
            ));
        }
        let work = u64::from(self.memory_kib) * u64::from(self.iterations);
        if work > MAX_WORK_KIB {
            return Err(format!(
                "Argon2id memory × iterations {} KiB × {} is above {MAX_WORK_KIB} KiB (the \
                 most pitr creates)",
                self.memory_kib, self.iterations
            ));
        }
        Ok(())
    }
}

/// How a slot's key-encryption key is derived.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "algorithm", deny_unknown_fields)]
pub enum Kdf {
    /// From a passphrase.
    #[serde(rename = "argon2id")]
    Argon2id {
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
        salt: String,
    },
    /// From a generated key file.
    #[serde(rename = "hkdf-sha256")]
    HkdfSha256 { salt: String },
}

/// `keys/<id>.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeySlot {
    pub id: String,
    /// Free text to tell slots apart ("dba", "archive key on db1").
    pub label: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub kdf: Kdf,
    nonce: String,
    wrapped_key: String,
}

/// What `pitr key list` shows of a slot.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SlotInfo {
    pub id: String,
    /// "passphrase" or "key-file".
    pub kind: &'static str,
    pub label: String,
    pub created: chrono::DateTime<chrono::Utc>,
    /// The slot this process unlocked the repository with.
    pub in_use: bool,
}

impl KeySlot {
    pub fn kind(&self) -> &'static str {
        match self.kdf {
            Kdf::Argon2id { .. } => "passphrase",
            Kdf::HkdfSha256 { .. } => "key-file",
        }
    }

    /// Parse and check a slot read from `key`: its ID matches its name, every field has its
    /// form, and the KDF's cost is within bounds.
    pub fn parse(key: &str, body: &[u8]) -> Result<KeySlot, String> {
        let slot: KeySlot = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if crate::layout::key_slot(&slot.id) != key || !valid_slot_id(&slot.id) {
            return Err(format!(
                "holds slot {:?}, not the one its name says",
                slot.id
            ));
        }
        if slot.label.len() > 200 || slot.label.chars().any(char::is_control) {
            return Err("label longer than 200 characters or with control characters".into());
        }
        let salt = match &slot.kdf {
            Kdf::Argon2id {
                memory_kib,
                iterations,
                parallelism,
                salt,
            } => {
                KdfCost {
                    memory_kib: *memory_kib,
                    iterations: *iterations,
                }
                .validate()?;
                if !(1..=16).contains(parallelism) {
                    return Err(format!("Argon2id parallelism {parallelism} outside 1..=16"));
                }
                salt
            }
            Kdf::HkdfSha256 { salt } => salt,
        };
        if hex32(salt).is_none() {
            return Err("salt is not 64 hex digits".into());
        }
        if slot.nonce_bytes().is_none() || slot.wrapped_bytes().is_none() {
            return Err("nonce or wrapped key of the wrong form".into());
        }
        Ok(slot)
    }

    fn nonce_bytes(&self) -> Option<[u8; 12]> {
        let mut out = [0u8; 12];
        hex::decode_to_slice(&self.nonce, &mut out).ok()?;
        Some(out)
    }

    fn wrapped_bytes(&self) -> Option<Vec<u8>> {
        hex::decode(&self.wrapped_key)
            .ok()
            .filter(|w| w.len() == 48)
    }

    fn salt(&self) -> [u8; 32] {
        let s = match &self.kdf {
            Kdf::Argon2id { salt, .. } | Kdf::HkdfSha256 { salt } => salt,
        };
        hex32(s).expect("checked by parse")
    }

    /// Everything the wrapped key is bound to.
    fn context(&self, repository_id: &str) -> Vec<u8> {
        let kdf = serde_json::to_string(&self.kdf).expect("KDF serializes");
        format!(
            "pitr key slot v1\0{repository_id}\0{}\0{}\0{}\0{kdf}",
            self.id,
            self.label,
            self.created.to_rfc3339()
        )
        .into_bytes()
    }

    /// A new passphrase slot wrapping `master`.
    pub(crate) fn passphrase(
        repository_id: &str,
        label: &str,
        passphrase: &str,
        cost: KdfCost,
        master: &MasterKey,
    ) -> Result<KeySlot, String> {
        cost.validate()?;
        let kdf = Kdf::Argon2id {
            memory_kib: cost.memory_kib,
            iterations: cost.iterations,
            parallelism: 1,
            salt: hex::encode(crypto::random::<32>()),
        };
        let mut slot = KeySlot::blank(label, kdf)?;
        let kek = slot.passphrase_kek(passphrase)?;
        slot.seal(repository_id, &kek, master);
        Ok(slot)
    }

    /// A new key-file slot wrapping `master`, and the key file's text.
    pub(crate) fn key_file(
        repository_id: &str,
        label: &str,
        master: &MasterKey,
    ) -> Result<(KeySlot, Zeroizing<String>), String> {
        let kdf = Kdf::HkdfSha256 {
            salt: hex::encode(crypto::random::<32>()),
        };
        let mut slot = KeySlot::blank(label, kdf)?;
        let secret = Zeroizing::new(crypto::random::<32>());
        let kek = crypto::kek_from_key_file(&secret, &slot.salt());
        slot.seal(repository_id, &kek, master);
        let text = Zeroizing::new(format!(
            "{KEY_FILE_PREFIX}{}:{}\n",
            slot.id,
            hex::encode(&secret[..])
        ));
        Ok((slot, text))
    }

    fn blank(label: &str, kdf: Kdf) -> Result<KeySlot, String> {
        if label.len() > 200 || label.chars().any(char::is_control) {
            return Err(
                "a slot label is at most 200 characters, without control characters".into(),
            );
        }
        let now = chrono::Utc::now();
        Ok(KeySlot {
            id: hex::encode(crypto::random::<8>()),
            label: label.to_string(),
            // Whole seconds: the context must read back exactly as written.
            created: chrono::DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now),
            kdf,
            nonce: String::new(),
            wrapped_key: String::new(),
        })
    }

    fn seal(&mut self, repository_id: &str, kek: &[u8; 32], master: &MasterKey) {
        let nonce = crypto::random::<12>();
        self.nonce = hex::encode(nonce);
        self.wrapped_key = hex::encode(crypto::wrap(
            kek,
            nonce,
            &self.context(repository_id),
            master,
        ));
    }

    fn passphrase_kek(&self, passphrase: &str) -> Result<Zeroizing<[u8; 32]>, String> {
        let Kdf::Argon2id {
            memory_kib,
            iterations,
            parallelism,
            ..
        } = self.kdf
        else {
            return Err("not a passphrase slot".into());
        };
        let params = argon2::Params::new(memory_kib, iterations, parallelism, Some(32))
            .map_err(|e| format!("Argon2id parameters: {e}"))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase.as_bytes(), &self.salt(), &mut out[..])
            .map_err(|e| format!("Argon2id: {e}"))?;
        Ok(out)
    }

    /// The master key, when `secret` opens this slot.
    pub(crate) fn open(
        &self,
        repository_id: &str,
        secret: &SecretKind,
        passphrase: &str,
    ) -> Option<MasterKey> {
        let kek = match (secret, &self.kdf) {
            (SecretKind::Passphrase, Kdf::Argon2id { .. }) => {
                self.passphrase_kek(passphrase).ok()?
            }
            (SecretKind::KeyFile { slot, key }, Kdf::HkdfSha256 { .. }) if *slot == self.id => {
                crypto::kek_from_key_file(key, &self.salt())
            }
            _ => return None,
        };
        crypto::unwrap(
            &kek,
            self.nonce_bytes()?,
            &self.context(repository_id),
            &self.wrapped_bytes()?,
        )
    }

    pub fn info(&self, in_use: bool) -> SlotInfo {
        SlotInfo {
            id: self.id.clone(),
            kind: self.kind(),
            label: self.label.clone(),
            created: self.created,
            in_use,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: KdfCost = KdfCost {
        memory_kib: 8 << 10,
        iterations: 1,
    };

    #[test]
    fn slots_open_with_their_secret_only() {
        let master = MasterKey::generate();
        let slot = KeySlot::passphrase("repo1", "dba", "correct horse", CHEAP, &master).unwrap();
        let body = serde_json::to_vec(&slot).unwrap();
        let key = crate::layout::key_slot(&slot.id);
        let slot = KeySlot::parse(&key, &body).unwrap();
        let pass = Secret::new("correct horse\n", "test");
        let kind = pass.kind().unwrap();
        let opened = slot.open("repo1", &kind, pass.expose()).unwrap();
        assert_eq!(opened.bytes(), master.bytes());
        assert!(slot.open("repo1", &kind, "wrong horse").is_none());
        // bound to its repository
        assert!(slot.open("repo2", &kind, pass.expose()).is_none());
        // a cheaper KDF written in by someone else no longer unwraps
        let mut cheaper = slot.clone();
        if let Kdf::Argon2id { iterations, .. } = &mut cheaper.kdf {
            *iterations = 2;
        }
        assert!(cheaper.open("repo1", &kind, pass.expose()).is_none());
        // stored under another slot's name
        assert!(KeySlot::parse("keys/0000000000000000.json", &body).is_err());

        let (kslot, text) = KeySlot::key_file("repo1", "archiver", &master).unwrap();
        let secret = Secret::new(text.as_str(), "file");
        let kind = secret.kind().unwrap();
        assert!(matches!(kind, SecretKind::KeyFile { .. }));
        assert_eq!(
            kslot.open("repo1", &kind, secret.expose()).unwrap().bytes(),
            master.bytes()
        );
        // a key file opens only its own slot, a passphrase no key-file slot
        assert!(slot.open("repo1", &kind, secret.expose()).is_none());
        assert!(kslot
            .open("repo1", &SecretKind::Passphrase, secret.expose())
            .is_none());
    }

    #[test]
    fn hostile_slots_are_refused_before_any_work() {
        let master = MasterKey::generate();
        let slot = KeySlot::passphrase("r", "", "pw", CHEAP, &master).unwrap();
        let key = crate::layout::key_slot(&slot.id);
        let mut v = serde_json::to_value(&slot).unwrap();
        v["kdf"]["memory_kib"] = serde_json::json!(u32::MAX);
        let e = KeySlot::parse(&key, &serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(e.contains("memory"), "{e}");
        assert!(KeySlot::parse(&key, b"{}").is_err());
    }

    /// A slot may ask for no more Argon2id work than pitr itself would create: the issue's
    /// 4 GiB and 64 passes, either alone, or a product above the bound, is refused by
    /// `parse` (before any work), and `passphrase` refuses to create the same.
    #[test]
    fn slot_kdf_cost_is_bounded_by_what_pitr_creates() {
        let master = MasterKey::generate();
        let slot = KeySlot::passphrase("r", "", "pw", CHEAP, &master).unwrap();
        let key = crate::layout::key_slot(&slot.id);
        let with = |memory_kib: u32, iterations: u32| {
            let mut v = serde_json::to_value(&slot).unwrap();
            v["kdf"]["memory_kib"] = serde_json::json!(memory_kib);
            v["kdf"]["iterations"] = serde_json::json!(iterations);
            KeySlot::parse(&key, &serde_json::to_vec(&v).unwrap())
        };
        let max_memory = MAX_MEMORY_KIB;
        let max_passes = MAX_ITERATIONS;
        for (memory, passes, word) in [
            (4 << 20, 1, "memory"),
            (8 << 10, 64, "iterations"),
            (4 << 20, 64, "memory"),
            (max_memory, 5, "memory × iterations"),
            (512 << 10, max_passes, "memory × iterations"),
        ] {
            let e = with(memory, passes).unwrap_err();
            assert!(e.contains(word), "{memory} KiB × {passes}: {e}");
            let cost = KdfCost {
                memory_kib: memory,
                iterations: passes,
            };
            assert!(cost.validate().is_err(), "pitr would create {cost:?}");
        }
        // the dearest slots pitr creates still read
        for (memory, passes) in [(max_memory, 4), (256 << 10, max_passes)] {
            with(memory, passes).unwrap();
            KdfCost {
                memory_kib: memory,
                iterations: passes,
            }
            .validate()
            .unwrap();
        }
    }

    #[test]
    fn secret_forms() {
        assert!(matches!(
            Secret::new("pw", "x").kind(),
            Ok(SecretKind::Passphrase)
        ));
        assert!(Secret::new("\n", "x").kind().unwrap_err().contains("empty"));
        let e = Secret::new("pitr-key-v1:zz:00", "--passphrase-file /k")
            .kind()
            .err()
            .unwrap();
        assert!(e.contains("/k") && e.contains("not a pitr key file"), "{e}");
        let m = MasterKey::generate();
        let t = export_text(&m);
        match Secret::new(t.as_str(), "x").kind() {
            Ok(SecretKind::Master(k)) => assert_eq!(k.bytes(), m.bytes()),
            _ => panic!("an exported key reads back"),
        }
    }
}

//! Encryption at rest: the keys of an encrypted repository and the sealing of its objects.
//!
//! One random 256-bit master key per repository. Three keys are derived from it with
//! HKDF-SHA256 (each under its own label), once per process:
//! - the chunk-ID key: a chunk's ID is the keyed BLAKE3 of its plaintext, so names tell
//!   nothing about content to someone without the key (dedup still works inside the repository);
//! - the object key: every object body (chunks, documents) is sealed with AES-256-GCM under a
//!   key of its own, HKDF-Expand of the object key with a fresh random 256-bit salt stored in
//!   the object's header, and a zero nonce (each per-object key seals exactly one message). Two
//!   objects share a key only if their salts collide: for 2^48 objects about 2^-161, so the
//!   scheme has no practical object limit, unlike random 96-bit GCM nonces under one key. The
//!   object's key in the repository (its name) and the header are the associated data, so a
//!   body moved to another name fails authentication;
//! - the config key: HMAC-SHA256 over `config.json`'s fields, so none of them can be changed.
//!
//! The master key is stored only wrapped, in key slots (`keys/<id>.json`, see `keyslot.rs`).
//! Layout of a sealed body (docs/format.md, "Encryption"):
//! `PTRE` · version 1 · cipher 1 · 2 reserved bytes · 32-byte salt · ciphertext · 16-byte tag.

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf::{self, Prk, HKDF_SHA256};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::chunk::ChunkId;

/// The cipher, as `config.json` and `pitr info` name it.
pub const CIPHER: &str = "aes-256-gcm-hkdf-sha256";
/// How chunk IDs are made in an encrypted repository.
pub const CHUNK_ID: &str = "blake3-keyed";

const MAGIC: &[u8; 4] = b"PTRE";
const SEAL_VERSION: u8 = 1;
const CIPHER_AES256GCM_HKDF: u8 = 1;
const SALT_LEN: usize = 32;
/// Bytes before the ciphertext.
pub const SEALED_HEADER_LEN: usize = 8 + SALT_LEN;
/// Bytes a sealed body has beyond its plaintext.
pub const SEAL_OVERHEAD: usize = SEALED_HEADER_LEN + 16;

/// A repository's master key. Never written anywhere unwrapped, except by `pitr key export`.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn generate() -> MasterKey {
        MasterKey(Zeroizing::new(random()))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        MasterKey(Zeroizing::new(bytes))
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// `N` bytes from the operating system's random source.
pub fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .expect("the operating system's random source works");
    out
}

/// 32 bytes of HKDF-Expand output.
struct Out32;
impl hkdf::KeyType for Out32 {
    fn len(&self) -> usize {
        32
    }
}

/// HKDF-Expand of a uniformly random key under `label`.
fn expand(key: &[u8; 32], label: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let prk = Prk::new_less_safe(HKDF_SHA256, key);
    let mut out = Zeroizing::new([0u8; 32]);
    prk.expand(label, Out32)
        .and_then(|okm| okm.fill(&mut out[..]))
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// The working keys of an unlocked repository, derived once per process from the master key.
pub struct Keys {
    id_key: Zeroizing<[u8; 32]>,
    object: Prk,
    config: hmac::Key,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    pub fn derive(master: &MasterKey) -> Keys {
        let m = master.bytes();
        let object = expand(m, &[b"pitr v2 object key"]);
        let config = expand(m, &[b"pitr v2 config mac"]);
        Keys {
            id_key: expand(m, &[b"pitr v2 chunk id"]),
            object: Prk::new_less_safe(HKDF_SHA256, &object[..]),
            config: hmac::Key::new(hmac::HMAC_SHA256, &config[..]),
        }
    }

    /// A chunk's ID: the keyed BLAKE3 of its plaintext.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.id_key, data).as_bytes())
    }

    /// The tag that authenticates `config.json`'s fields.
    pub fn config_mac(&self, canonical: &[u8]) -> [u8; 32] {
        hmac::sign(&self.config, canonical)
            .as_ref()
            .try_into()
            .expect("HMAC-SHA256 is 32 bytes")
    }

    /// Whether `tag` authenticates `canonical` (constant time).
    pub fn config_mac_matches(&self, canonical: &[u8], tag: &[u8]) -> bool {
        hmac::verify(&self.config, canonical, tag).is_ok()
    }

    fn object_key(&self, salt: &[u8]) -> LessSafeKey {
        let key: UnboundKey = self
            .object
            .expand(&[b"pitr v2 object", salt], &AES_256_GCM)
            .expect("AES-256 key length is a valid HKDF output length")
            .into();
        LessSafeKey::new(key)
    }

    /// Seal `plain` as the object named `name`: a new header (fresh salt) is written to `out`,
    /// then `plain` encrypted in place, then the tag. `write_plain` appends the plaintext to
    /// `out` (so a chunk is compressed straight into the buffer it is encrypted in).
    pub fn seal_with(&self, name: &str, out: &mut Vec<u8>, write_plain: impl FnOnce(&mut Vec<u8>)) {
        let start = out.len();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[SEAL_VERSION, CIPHER_AES256GCM_HKDF, 0, 0]);
        out.extend_from_slice(&random::<SALT_LEN>());
        let body = out.len();
        write_plain(out);
        let header: [u8; SEALED_HEADER_LEN] = out[start..body].try_into().expect("header length");
        let key = self.object_key(&header[8..]);
        let aad = associated_data(&header, name);
        let tag = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key([0; 12]), Aad::from(aad), {
                &mut out[body..]
            })
            .expect("a chunk is far below GCM's message size limit");
        out.extend_from_slice(tag.as_ref());
    }

    /// [`Keys::seal_with`] of bytes at hand.
    pub fn seal(&self, name: &str, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plain.len() + SEAL_OVERHEAD);
        self.seal_with(name, &mut out, |o| o.extend_from_slice(plain));
        out
    }

    /// Check and decrypt the object named `name` in place; returns the plaintext's range in
    /// `body`. Any change to the body, or a body stored under another name, fails.
    pub fn open_in_place(
        &self,
        name: &str,
        body: &mut [u8],
    ) -> Result<std::ops::Range<usize>, String> {
        if body.len() < SEAL_OVERHEAD || &body[..4] != MAGIC {
            return Err(
                "not an encrypted pitr object (bad header): the repository is encrypted".into(),
            );
        }
        if body[4] != SEAL_VERSION || body[5] != CIPHER_AES256GCM_HKDF {
            return Err(format!(
                "unknown encrypted object version {} or cipher {}",
                body[4], body[5]
            ));
        }
        let header: [u8; SEALED_HEADER_LEN] =
            body[..SEALED_HEADER_LEN].try_into().expect("header length");
        let key = self.object_key(&header[8..]);
        let aad = associated_data(&header, name);
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(aad),
                &mut body[SEALED_HEADER_LEN..],
            )
            .map_err(|_| {
                "fails authentication: the object was changed, damaged, or stored under another \
                 name"
                    .to_string()
            })?;
        let n = plain.len();
        Ok(SEALED_HEADER_LEN..SEALED_HEADER_LEN + n)
    }

    /// [`Keys::open_in_place`] into a new buffer.
    pub fn open(&self, name: &str, body: &[u8]) -> Result<Vec<u8>, String> {
        let mut buf = body.to_vec();
        let range = self.open_in_place(name, &mut buf)?;
        buf.truncate(range.end);
        buf.drain(..range.start);
        Ok(buf)
    }
}

/// The header and the object's name, length-prefixed so that no two (header, name) pairs
/// give the same bytes.
fn associated_data(header: &[u8; SEALED_HEADER_LEN], name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(SEALED_HEADER_LEN + 8 + name.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(&(name.len() as u64).to_le_bytes());
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// Wrap (encrypt and authenticate) the master key under a key-encryption key, binding
/// `context` (the slot's name, kind and KDF parameters) so none of them can be swapped.
pub fn wrap(kek: &[u8; 32], nonce: [u8; 12], context: &[u8], master: &MasterKey) -> Vec<u8> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, kek).expect("32-byte key"));
    let mut buf = master.bytes().to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(context),
        &mut buf,
    )
    .expect("32 bytes seal");
    buf
}

/// The master key a slot wraps, or `None` when `kek` is not the slot's key (or the slot was
/// changed).
pub fn unwrap(
    kek: &[u8; 32],
    nonce: [u8; 12],
    context: &[u8],
    wrapped: &[u8],
) -> Option<MasterKey> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, kek).expect("32-byte key"));
    let mut buf = Zeroizing::new(wrapped.to_vec());
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context),
            &mut buf[..],
        )
        .ok()?;
    let bytes: [u8; 32] = plain.try_into().ok()?;
    Some(MasterKey::from_bytes(bytes))
}

/// HKDF of a high-entropy secret (a generated key file): no stretching needed.
pub fn kek_from_key_file(secret: &[u8; 32], salt: &[u8]) -> Zeroizing<[u8; 32]> {
    let prk = hkdf::Salt::new(HKDF_SHA256, salt).extract(secret);
    let mut out = Zeroizing::new([0u8; 32]);
    prk.expand(&[b"pitr v2 key-file slot"], Out32)
        .and_then(|okm| okm.fill(&mut out[..]))
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_objects_open_only_under_their_name_and_unchanged() {
        let keys = Keys::derive(&MasterKey::generate());
        let plain = b"pg_authid secret row".repeat(10);
        let sealed = keys.seal("chunks/ab/abc", &plain);
        assert_eq!(sealed.len(), plain.len() + SEAL_OVERHEAD);
        assert!(!sealed
            .windows(b"pg_authid".len())
            .any(|w| w == b"pg_authid"));
        assert_eq!(keys.open("chunks/ab/abc", &sealed).unwrap(), plain);
        // another name: moved or swapped
        assert!(keys.open("chunks/ab/abd", &sealed).is_err());
        // every byte flipped in turn
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(keys.open("chunks/ab/abc", &bad).is_err(), "byte {i}");
        }
        // truncated
        assert!(keys.open("chunks/ab/abc", &sealed[..20]).is_err());
        // another repository's key
        let other = Keys::derive(&MasterKey::generate());
        assert!(other.open("chunks/ab/abc", &sealed).is_err());
        // two seals of the same bytes differ (fresh salt)
        assert_ne!(keys.seal("x", &plain), keys.seal("x", &plain));
    }

    #[test]
    fn chunk_ids_are_keyed() {
        let (a, b) = (
            Keys::derive(&MasterKey::generate()),
            Keys::derive(&MasterKey::generate()),
        );
        let data = b"PG_VERSION 15\n";
        assert_eq!(a.chunk_id(data), a.chunk_id(data));
        assert_ne!(a.chunk_id(data), b.chunk_id(data));
        assert_ne!(a.chunk_id(data), ChunkId::of(data));
    }

    #[test]
    fn wrapped_keys_unwrap_only_with_their_kek_and_context() {
        let master = MasterKey::generate();
        let kek = random::<32>();
        let nonce = random::<12>();
        let w = wrap(&kek, nonce, b"slot a", &master);
        assert_eq!(
            unwrap(&kek, nonce, b"slot a", &w).unwrap().bytes(),
            master.bytes()
        );
        assert!(unwrap(&kek, nonce, b"slot b", &w).is_none());
        assert!(unwrap(&random::<32>(), nonce, b"slot a", &w).is_none());
        let mut bad = w.clone();
        bad[0] ^= 1;
        assert!(unwrap(&kek, nonce, b"slot a", &bad).is_none());
    }
}

//! Chunk identity and the on-store encoding of a chunk body.
//!
//! Body = 16-byte header (`PTRC`, format version, codec, 2 reserved bytes, uncompressed length
//! u64 LE) followed by the raw or zstd-compressed bytes. The key is the SHA-256 of the
//! uncompressed bytes, re-checked on every read.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

pub const CHUNK_HEADER_LEN: usize = 16;
const MAGIC: &[u8; 4] = b"PTRC";
const CHUNK_VERSION: u8 = 1;
const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;
/// No chunk is larger than this; a header claiming more is corrupt (and must not make us
/// allocate it).
const MAX_CHUNK_LEN: u64 = 1 << 30;

/// The SHA-256 of a chunk's uncompressed bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn of(data: &[u8]) -> Self {
        ChunkId(Sha256::digest(data).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Object key of this chunk below the repository root: `chunks/ab/abcd…`.
    pub fn key(&self) -> String {
        crate::layout::chunk(self)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.to_hex())
    }
}

impl FromStr for ChunkId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("{s:?} is not a chunk ID (64 lowercase hex digits)"));
        }
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| format!("{s:?} is not a chunk ID (64 lowercase hex digits)"))?;
        Ok(ChunkId(out))
    }
}

impl serde::Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The BLAKE3 of a chunk's bytes: a second name, as collision-resistant as the SHA-256 ID but
/// several times cheaper to take, kept beside each chunk of a backup so that the next backup
/// recognises an unchanged chunk without hashing it with SHA-256 again. Never a key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(data: &[u8]) -> Self {
        Fingerprint(*blake3::hash(data).as_bytes())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", hex::encode(self.0))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(serde::de::Error::custom(format!(
                "{s:?} is not a fingerprint (64 lowercase hex digits)"
            )));
        }
        hex::decode_to_slice(&s, &mut out).map_err(|_| {
            serde::de::Error::custom(format!(
                "{s:?} is not a fingerprint (64 lowercase hex digits)"
            ))
        })?;
        Ok(Fingerprint(out))
    }
}

/// Encode a chunk body: zstd at `level`, or raw when compression does not pay.
pub fn encode_chunk(data: &[u8], level: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len_bound(data.len()));
    encode_chunk_into(&mut out, data, level);
    out
}

/// The most bytes [`encode_chunk`] makes of `len` bytes: a buffer this large up front is
/// never reallocated (and copied) while a chunk is compressed into it.
pub fn encoded_len_bound(len: usize) -> usize {
    CHUNK_HEADER_LEN + zstd::zstd_safe::compress_bound(len).max(len)
}

/// [`encode_chunk`], appended to `out` (an encrypted body's buffer, after its header).
pub fn encode_chunk_into(out: &mut Vec<u8>, data: &[u8], level: i32) {
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.push(CHUNK_VERSION);
    out.push(CODEC_ZSTD);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    // One compression context per thread: creating one per chunk costs more than compressing
    // a small chunk. The compressed bytes go straight after the header, into `out`: a second
    // buffer would be fresh memory to fault in and copy out of, per chunk.
    let payload = out.len();
    out.reserve(encoded_len_bound(data.len()) - CHUNK_HEADER_LEN);
    let compressed = COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, comp) = c.as_mut()?;
        let mut cursor = std::io::Cursor::new(&mut *out);
        cursor.set_position(payload as u64);
        comp.compress_to_buffer(data, &mut cursor).ok()
    });
    match compressed {
        Some(n) if n < data.len() && out.len() == payload + n => {}
        _ => {
            out.truncate(payload);
            out[start + 5] = CODEC_RAW;
            out.extend_from_slice(data);
        }
    }
}

/// Decode a chunk body and check that it hashes to `id`. Any mismatch is corruption.
pub fn decode_chunk(id: &ChunkId, body: &[u8]) -> Result<Vec<u8>, String> {
    decode_chunk_with(id, body, ChunkId::of)
}

/// [`decode_chunk`] with the repository's chunk-ID function (keyed in an encrypted one).
pub fn decode_chunk_with(
    id: &ChunkId,
    body: &[u8],
    chunk_id: impl Fn(&[u8]) -> ChunkId,
) -> Result<Vec<u8>, String> {
    if body.len() < CHUNK_HEADER_LEN || &body[..4] != MAGIC {
        return Err("not a pitr chunk (bad header)".into());
    }
    if body[4] != CHUNK_VERSION {
        return Err(format!("unknown chunk format version {}", body[4]));
    }
    let len = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
    if len > MAX_CHUNK_LEN {
        return Err(format!("header claims {len} bytes"));
    }
    let payload = &body[CHUNK_HEADER_LEN..];
    let data = match body[5] {
        CODEC_RAW => payload.to_vec(),
        CODEC_ZSTD => {
            thread_local! {
                static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                    const { std::cell::RefCell::new(None) };
            }
            // One context per thread, as for compression.
            DECOMPRESSOR.with(|d| {
                let mut d = d.borrow_mut();
                if d.is_none() {
                    *d = Some(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?);
                }
                let d = d.as_mut().expect("just set");
                d.decompress(payload, len as usize)
                    .map_err(|e| format!("zstd: {e}"))
            })?
        }
        other => return Err(format!("unknown codec {other}")),
    };
    if data.len() as u64 != len {
        return Err(format!("{} bytes, header says {len}", data.len()));
    }
    let actual = chunk_id(&data);
    if actual != *id {
        return Err(format!("content hashes to {actual}"));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_compressed_and_raw() {
        let text = b"WAL WAL WAL ".repeat(1000);
        let id = ChunkId::of(&text);
        let body = encode_chunk(&text, 1);
        assert_eq!(body[5], CODEC_ZSTD);
        assert!(body.len() < text.len() / 10);
        assert_eq!(decode_chunk(&id, &body).unwrap(), text);

        // incompressible bytes are stored raw
        let mut x = 0x1234_5678_9abc_def0u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let body = encode_chunk(&noise, 1);
        assert_eq!(body[5], CODEC_RAW);
        assert_eq!(decode_chunk(&ChunkId::of(&noise), &body).unwrap(), noise);
    }

    #[test]
    fn detects_flipped_bytes_and_wrong_key() {
        let text = b"hello chunk".repeat(100);
        let id = ChunkId::of(&text);
        let mut body = encode_chunk(&text, 3);
        let other = ChunkId::of(b"other");
        assert!(decode_chunk(&other, &body)
            .unwrap_err()
            .contains("hashes to"));
        let last = body.len() - 1;
        body[last] ^= 0xFF;
        assert!(decode_chunk(&id, &body).is_err());
        assert!(decode_chunk(&id, b"short").is_err());
    }

    #[test]
    fn id_hex_and_key() {
        let id = ChunkId::of(b"");
        assert_eq!(
            id.to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(id.key(), format!("chunks/e3/{}", id.to_hex()));
        // and the other rows of docs/format.md's key table
        use crate::layout;
        assert_eq!(
            layout::wal_ref("00000001", "000000010000000000000003"),
            "wal/00000001/000000010000000000000003.json"
        );
        assert_eq!(
            layout::backup("20261126T000000Z"),
            "backups/20261126T000000Z.json"
        );
        assert_eq!(
            (layout::CONFIG, layout::CLUSTER),
            ("config.json", "cluster.json")
        );
        assert_eq!(
            [
                layout::CHUNKS_PREFIX,
                layout::WAL_PREFIX,
                layout::BACKUPS_PREFIX
            ],
            ["chunks/", "wal/", "backups/"]
        );
        assert_eq!(id.to_hex().parse::<ChunkId>().unwrap(), id);
        assert!("E3B0".parse::<ChunkId>().is_err());
    }
}

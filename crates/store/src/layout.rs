//! Every object key of the repository, one function or constant per row of the key table in
//! docs/format.md, so that the layout is written down in code exactly once. Keys are relative
//! to the repository root (a directory, or a bucket prefix); the store adds the prefix.
//!
//! The store stays PostgreSQL-agnostic: a WAL ref's group (the timeline, 8 hex digits) and
//! name are strings the caller has already validated.

use crate::ChunkId;

/// The repository's configuration, written once by `init`.
pub const CONFIG: &str = "config.json";

/// The one PostgreSQL system the repository belongs to.
pub const CLUSTER: &str = "cluster.json";

/// Prefix of every chunk body, for listing.
pub const CHUNKS_PREFIX: &str = "chunks/";

/// Prefix of every WAL ref, for listing.
pub const WAL_PREFIX: &str = "wal/";

/// Prefix of every backup manifest, for listing.
pub const BACKUPS_PREFIX: &str = "backups/";

/// Prefix of every pin, for listing.
pub const PINS_PREFIX: &str = "pins/";

/// Prefix of every key slot of an encrypted repository, for listing.
pub const KEYS_PREFIX: &str = "keys/";

/// Prefix of every in-progress marker (a running backup's), for listing.
pub const MARKERS_PREFIX: &str = "markers/";

/// A chunk body: `chunks/<first 2 hex digits>/<64 hex digits>`.
pub fn chunk(id: &ChunkId) -> String {
    let h = id.to_hex();
    format!("{CHUNKS_PREFIX}{}/{h}", &h[..2])
}

/// A WAL ref: `wal/<group>/<name>.json`, the group being the timeline in 8 hex digits.
pub fn wal_ref(group: &str, name: &str) -> String {
    format!("{WAL_PREFIX}{group}/{name}.json")
}

/// A backup manifest: `backups/<id>.json`.
pub fn backup(id: &str) -> String {
    format!("{BACKUPS_PREFIX}{id}.json")
}

/// A pin: `pins/<backup id>.json` keeps that backup whatever the retention says.
pub fn pin(id: &str) -> String {
    format!("{PINS_PREFIX}{id}.json")
}

/// A running backup's marker: `markers/backup-<name>.json`, written before its first chunk
/// and removed after its manifest; garbage collection deletes no chunk while one is live.
pub fn backup_marker(name: &str) -> String {
    format!("{MARKERS_PREFIX}backup-{name}.json")
}

/// A key slot of an encrypted repository: `keys/<16 hex digits>.json`, the master key wrapped
/// under a passphrase or a key file. Never sealed: it is read before the repository is open.
pub fn key_slot(id: &str) -> String {
    format!("{KEYS_PREFIX}{id}.json")
}

/// Whether the object at `key` is stored as written even in an encrypted repository
/// (`config.json`, authenticated by its own tag, and the key slots).
pub fn is_unsealed(key: &str) -> bool {
    key == CONFIG || key.starts_with(KEYS_PREFIX)
}

/// The most bytes a document at `key` may take as stored (sealed or not); a larger one is
/// refused before it is read, whatever the backend. A backup manifest lists about 160 bytes
/// per MiB of the cluster's data, so 2 GiB is a backup of some 12 TiB; every other document
/// (WAL refs, `cluster.json`, `config.json`, key slots, pins, markers) is a few KiB.
pub fn max_doc_len(key: &str) -> u64 {
    let plain: u64 = if key.starts_with(BACKUPS_PREFIX) {
        2 << 30
    } else {
        16 << 20
    };
    plain + crate::crypto::SEAL_OVERHEAD as u64
}

//! Object keys (placeholder until the store's keys module lands).

pub const CONFIG: &str = "config.json";
pub const CLUSTER: &str = "cluster.json";
pub const CHUNKS: &str = "chunks/";
pub const WAL: &str = "wal/";
pub const BACKUPS: &str = "backups/";

pub fn wal_ref(group: &str, name: &str) -> String {
    format!("wal/{group}/{name}.json")
}

pub fn backup(id: &str) -> String {
    format!("backups/{id}.json")
}

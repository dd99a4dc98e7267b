//! `pitr backup`: a base backup over the replication protocol, streamed into the store.

// Wired to the command once the replication client lands.
#[allow(dead_code)]
pub mod tar;

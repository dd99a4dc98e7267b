//! Values of settings that core's requests take and that the binary's command line and
//! configuration file both parse: one enum per concept, here or beside the request that takes
//! it (`restore::TargetAction`). `clap::ValueEnum` is derived behind the `clap` feature, which
//! only the binary enables: core itself reads no command line, no configuration file and no
//! environment; every input arrives in a request.

use serde::Deserialize;

/// The backup's checkpoint (`--checkpoint`, `[backup] checkpoint = "fast" | "spread"`).
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Checkpoint {
    Fast,
    Spread,
}

impl From<Checkpoint> for pitr_protocol::CheckpointMode {
    /// The protocol's word for it (`BASE_BACKUP (CHECKPOINT '…')`).
    fn from(c: Checkpoint) -> Self {
        match c {
            Checkpoint::Fast => pitr_protocol::CheckpointMode::Fast,
            Checkpoint::Spread => pitr_protocol::CheckpointMode::Spread,
        }
    }
}

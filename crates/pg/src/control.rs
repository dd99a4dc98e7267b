//! The part of `global/pg_control` pitr needs: the cluster's system identifier, its first field.

use std::io::Read;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is too short to be pg_control")]
    TooShort { path: String },
}

/// Read the system identifier from `<data_dir>/global/pg_control`. Returns `Ok(None)` when the
/// file does not exist (the caller is not running inside a data directory).
pub fn read_system_identifier(data_dir: &Path) -> Result<Option<u64>, ControlError> {
    let path = data_dir.join("global").join("pg_control");
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ControlError::Io {
                path: path.display().to_string(),
                source,
            })
        }
    };
    let mut buf = [0u8; 8];
    match f.read_exact(&mut buf) {
        Ok(()) => Ok(Some(u64::from_le_bytes(buf))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ControlError::TooShort {
            path: path.display().to_string(),
        }),
        Err(source) => Err(ControlError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// What `pg_control` says the cluster is doing (`DBState`, its field after the system
/// identifier and the two version numbers, the same place in every supported version). Only
/// the server writes it, so it is the server's own word on how it stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    Starting,
    ShutDown,
    ShutDownInRecovery,
    ShuttingDown,
    InCrashRecovery,
    InArchiveRecovery,
    InProduction,
    Other(u32),
}

impl std::fmt::Display for ClusterState {
    /// pg_controldata's words.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterState::Starting => f.write_str("starting up"),
            ClusterState::ShutDown => f.write_str("shut down"),
            ClusterState::ShutDownInRecovery => f.write_str("shut down in recovery"),
            ClusterState::ShuttingDown => f.write_str("shutting down"),
            ClusterState::InCrashRecovery => f.write_str("in crash recovery"),
            ClusterState::InArchiveRecovery => f.write_str("in archive recovery"),
            ClusterState::InProduction => f.write_str("in production"),
            ClusterState::Other(n) => write!(f, "unrecognized status code {n}"),
        }
    }
}

impl ClusterState {
    /// The state from the first bytes of `pg_control`.
    pub fn parse(control: &[u8]) -> Option<ClusterState> {
        let raw = u32::from_le_bytes(control.get(16..20)?.try_into().ok()?);
        Some(match raw {
            0 => ClusterState::Starting,
            1 => ClusterState::ShutDown,
            2 => ClusterState::ShutDownInRecovery,
            3 => ClusterState::ShuttingDown,
            4 => ClusterState::InCrashRecovery,
            5 => ClusterState::InArchiveRecovery,
            6 => ClusterState::InProduction,
            n => ClusterState::Other(n),
        })
    }
}

/// Read the cluster state from `<data_dir>/global/pg_control`; `Ok(None)` when the file does
/// not exist.
pub fn read_cluster_state(data_dir: &Path) -> Result<Option<ClusterState>, ControlError> {
    let path = data_dir.join("global").join("pg_control");
    let mut head = [0u8; 20];
    let read = std::fs::File::open(&path).and_then(|mut f| f.read_exact(&mut head));
    match read {
        Ok(()) => Ok(ClusterState::parse(&head)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ControlError::TooShort {
            path: path.display().to_string(),
        }),
        Err(source) => Err(ControlError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_states_by_their_codes() {
        let mut head = [0u8; 20];
        for (code, want) in [
            (2u32, ClusterState::ShutDownInRecovery),
            (5, ClusterState::InArchiveRecovery),
            (6, ClusterState::InProduction),
            (9, ClusterState::Other(9)),
        ] {
            head[16..20].copy_from_slice(&code.to_le_bytes());
            assert_eq!(ClusterState::parse(&head), Some(want));
        }
        assert_eq!(ClusterState::parse(&head[..19]), None);
        assert_eq!(
            ClusterState::ShutDownInRecovery.to_string(),
            "shut down in recovery"
        );
    }
}

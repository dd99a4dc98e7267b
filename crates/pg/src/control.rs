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

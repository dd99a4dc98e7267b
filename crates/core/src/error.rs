//! The failures a caller must tell apart. Everything else is an `anyhow::Error` whose message
//! names the object; the binary maps these to exit statuses in its one table.

/// "This file is not in the archive": for restore_command, the normal end of recovery.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not in the archive")]
pub struct NotArchived(pub String);

/// `pitr check` found a problem: the worst check's status (warning or critical).
#[derive(Debug, thiserror::Error)]
#[error("check: {0}")]
pub struct CheckFailed(pub crate::check::Status);

/// How a failed command should end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The WAL file asked for is not archived (restore-wal).
    NotArchived,
    /// `pitr check`: a check ended with a warning.
    Warning,
    /// `pitr check`: a check ended critical.
    Critical,
    /// Anything else: bad input, a damaged or unreachable repository, a server error.
    Fatal,
}

impl Failure {
    pub fn of(err: &anyhow::Error) -> Failure {
        if err.downcast_ref::<NotArchived>().is_some() {
            Failure::NotArchived
        } else if let Some(CheckFailed(status)) = err.downcast_ref::<CheckFailed>() {
            match status {
                crate::check::Status::Warning => Failure::Warning,
                _ => Failure::Critical,
            }
        } else {
            Failure::Fatal
        }
    }
}

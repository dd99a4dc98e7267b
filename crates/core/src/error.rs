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

/// The command line asked for something that cannot be (a time that does not parse,
/// conflicting targets, a malformed `OID=DIR`): a usage error, like those clap refuses, but
/// found once the arguments are read as values.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    /// `err` as a usage error, its message kept whole.
    pub fn from(err: anyhow::Error) -> anyhow::Error {
        anyhow::Error::new(UsageError(format!("{err:#}")))
    }
}

/// How a failed command should end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The WAL file asked for is not archived (restore-wal).
    NotArchived,
    /// `pitr check`: a check ended with a warning.
    Warning,
    /// `pitr check`: a check ended critical.
    Critical,
    /// The arguments asked for something that cannot be ([`UsageError`]).
    Usage,
    /// Anything else: bad input, a damaged or unreachable repository, a server error.
    Fatal,
}

impl Failure {
    pub fn of(err: &anyhow::Error) -> Failure {
        if err.downcast_ref::<NotArchived>().is_some() {
            Failure::NotArchived
        } else if err.downcast_ref::<UsageError>().is_some() {
            Failure::Usage
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

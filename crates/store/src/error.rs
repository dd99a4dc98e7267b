//! Store errors: callers must tell "not there" from "corrupt" from "backend trouble", and know
//! whether a retry can help.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key}: not found in the repository")]
    NotFound { key: String },
    #[error("{key}: corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("{key}: {source}")]
    Backend {
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("repository URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("no pitr repository at {url} (config.json missing): run `pitr init` first")]
    NotInitialized { url: String },
    #[error("repository at {url} already exists with other settings: {detail}")]
    ConfigMismatch { url: String, detail: String },
    /// An encrypted repository, and no secret to open it with.
    #[error("repository {url} is encrypted: give its passphrase or key file (PITR_PASSPHRASE, --passphrase-file FILE, passphrase_file in the configuration file, or the systemd credential pitr-passphrase)")]
    KeyRequired { url: String },
    /// The secret given opens no key slot.
    #[error("repository {url}: the secret from {origin} opens none of its key slots ({tried})")]
    WrongKey {
        url: String,
        origin: String,
        /// Which slots were tried, or why none was.
        tried: String,
    },
    /// A secret was given for a repository that is not encrypted.
    #[error("repository {url} is not encrypted, but a passphrase or key file is given ({origin}); refusing, in case its config.json was replaced: remove the passphrase setting to use an unencrypted repository")]
    NotEncrypted { url: String, origin: String },
    /// A key operation that cannot be done (bad secret, last slot, unknown slot).
    #[error("repository {url}: {detail}")]
    Key { url: String, detail: String },
    /// The operating system refused access to a local object: the message says whose it is.
    #[error("cannot open {path} ({owner}): permission denied; run pitr as the repository's owner")]
    PermissionDenied { path: String, owner: String },
    #[error("{key}: {source}")]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },
    /// A task storing or fetching chunks ended without an answer (it panicked, or the runtime
    /// is shutting down).
    #[error("{what}: {source}")]
    Task {
        what: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl StoreError {
    /// Whether trying the same operation again may succeed (network trouble, throttling).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Backend { source, .. } => matches!(
                source,
                object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
            ),
            _ => false,
        }
    }

    pub(crate) fn backend(key: impl Into<String>, source: object_store::Error) -> Self {
        let key = key.into();
        match source {
            object_store::Error::NotFound { .. } => StoreError::NotFound { key },
            source => StoreError::Backend { key, source },
        }
    }
}

//! What opening a repository needs besides its URL, given explicitly: [`RepoOptions`]. Nothing
//! here is process-wide; a command builds one value and hands it to every open.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::repo::Unlocked;
use crate::Secret;

/// Chunks in flight by default: enough to overlap every fsync or network round trip of a
/// 16 MiB WAL segment in 1 MiB chunks.
pub const DEFAULT_JOBS: usize = 16;

/// How to reach and unlock a repository: given to [`crate::Repo::open`], [`crate::Repo::init`]
/// and [`crate::Location::connect`].
#[derive(Clone, Default)]
pub struct RepoOptions {
    /// Options for a cloud backend: `object_store` configuration keys (`aws_endpoint`,
    /// `aws_region`, `aws_secret_access_key`, `google_service_account`,
    /// `azure_storage_account_name`, `allow_http`, …) with their values. The environment's
    /// `AWS_*`, `GOOGLE_*` and `AZURE_*` variables still apply and beat these.
    pub remote: Vec<(String, String)>,
    /// The secret an encrypted repository is unlocked with (`None`: it must be unencrypted).
    pub secret: Option<Secret>,
    /// Chunks in flight at once (`None` or 0: [`DEFAULT_JOBS`]).
    pub jobs: Option<usize>,
    /// Repositories unlocked through these options (and their clones), so that keys are
    /// derived once however often a command opens its repository.
    pub unlocked: UnlockCache,
}

/// Unlocked keys by URL, configuration and a digest of the secret, shared by clones.
#[derive(Clone, Default)]
pub struct UnlockCache(Arc<Mutex<HashMap<UnlockKey, Arc<Unlocked>>>>);

/// A repository's URL, its `config.json` and a digest of the secret that unlocked it.
pub(crate) type UnlockKey = (String, Vec<u8>, [u8; 32]);

impl UnlockCache {
    pub(crate) fn get(&self, key: &UnlockKey) -> Option<Arc<Unlocked>> {
        self.0.lock().expect("unlock cache lock").get(key).cloned()
    }

    pub(crate) fn put(&self, key: UnlockKey, unlocked: Arc<Unlocked>) {
        self.0
            .lock()
            .expect("unlock cache lock")
            .insert(key, unlocked);
    }
}

impl RepoOptions {
    /// Options with this secret and nothing else (local repositories, tests).
    pub fn with_secret(secret: Option<Secret>) -> RepoOptions {
        RepoOptions {
            secret,
            ..RepoOptions::default()
        }
    }

    /// Chunks in flight at once.
    pub fn jobs(&self) -> usize {
        self.jobs.filter(|&n| n > 0).unwrap_or(DEFAULT_JOBS)
    }
}

impl fmt::Debug for RepoOptions {
    /// Option names and the secret's origin; never a value (they hold credentials).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.remote.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("RepoOptions")
            .field("remote", &keys)
            .field("secret", &self.secret.as_ref().map(Secret::origin))
            .field("jobs", &self.jobs)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_value() {
        let o = RepoOptions {
            remote: vec![("aws_secret_access_key".into(), "hunter2".into())],
            secret: Some(Secret::new("swordfish", "PITR_PASSPHRASE")),
            jobs: Some(0),
            ..RepoOptions::default()
        };
        let shown = format!("{o:?}");
        assert!(shown.contains("aws_secret_access_key") && shown.contains("PITR_PASSPHRASE"));
        assert!(
            !shown.contains("hunter2") && !shown.contains("swordfish"),
            "{shown}"
        );
        assert_eq!(o.jobs(), DEFAULT_JOBS);
    }
}

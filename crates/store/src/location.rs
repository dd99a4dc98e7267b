//! [`Location`]: where a repository lives, from its URL: the `object_store` store, the key
//! prefix inside it and, for a local directory, its root. Local directories are built by
//! hand because `parse_url` leaves fsync off, and pitr's promise is durability on success.
//! Cloud backends take their options (endpoint, region, credentials) from the caller
//! ([`crate::RepoOptions::remote`]) and from the environment, which wins.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStore;

use crate::{Result, StoreError};

/// Where a repository lives.
#[derive(Debug, Clone)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    /// Key prefix inside the store (`s3://bucket/prefix` → `prefix`).
    pub prefix: Path,
    /// The URL as the user gave it, for messages.
    pub url: String,
    /// Local root directory, for file repositories.
    pub local_root: Option<PathBuf>,
}

impl Location {
    /// Whether `url` names a local directory (a bare absolute path or `file://`).
    pub fn is_local_url(url: &str) -> bool {
        url.starts_with('/') || url.starts_with("file://")
    }

    /// The directory a local repository URL names (`/path` or `file:///path`); `None` for any
    /// other kind of URL, an error for a local one that names no absolute path.
    pub fn local_path(url: &str) -> Result<Option<PathBuf>> {
        let bad = |reason: &str| StoreError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if url.starts_with('/') {
            Ok(Some(PathBuf::from(url)))
        } else if let Some(rest) = url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(bad(
                    "file URLs need an absolute path (file:///var/lib/pitr)",
                ));
            }
            let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
            Ok(Some(
                parsed.to_file_path().map_err(|_| bad("not a local path"))?,
            ))
        } else {
            Ok(None)
        }
    }

    /// Connect to the repository at `url`; `options` configure a cloud backend
    /// ([`crate::RepoOptions::remote`]; the environment's `AWS_*`/`GOOGLE_*`/`AZURE_*`
    /// variables are applied after them). With `create`, a missing local directory is made.
    pub fn connect(url: &str, create: bool, options: &[(String, String)]) -> Result<Location> {
        let bad = |reason: &str| StoreError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if url.is_empty() {
            return Err(bad("empty; give --repo or set PITR_REPO"));
        }
        if let Some(root) = Self::local_path(url)? {
            return Self::local(url, root, create);
        }
        if url.starts_with("memory://") {
            // Test plumbing, not an option channel: one in-memory store per URL for the
            // life of the process, so that tests can open the same repository twice.
            static MEMORY: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
            let mut stores = MEMORY
                .get_or_init(Default::default)
                .lock()
                .expect("memory store registry lock");
            let store = Arc::clone(stores.entry(url.to_string()).or_default());
            return Ok(Location {
                store,
                prefix: Path::default(),
                url: url.to_string(),
                local_root: None,
            });
        }
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        match parsed.scheme() {
            "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" => {}
            "" => return Err(bad("relative paths are not allowed; use an absolute path")),
            other => {
                return Err(bad(&format!(
                    "unsupported scheme {other:?} (file, s3, gs, az)"
                )))
            }
        }
        // The configured options first, then the environment (AWS_*, GOOGLE_*, AZURE_*):
        // the builder applies them in order, so a variable beats the configuration file.
        let opts = options.iter().cloned().chain(
            std::env::vars()
                .filter(|(k, _)| {
                    k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
                })
                .map(|(k, v)| (k.to_ascii_lowercase(), v)),
        );
        let (store, prefix) =
            object_store::parse_url_opts(&parsed, opts).map_err(|e| bad(&e.to_string()))?;
        Ok(Location {
            store: Arc::from(store),
            prefix,
            url: url.to_string(),
            local_root: None,
        })
    }

    fn local(url: &str, root: PathBuf, create: bool) -> Result<Location> {
        let io = |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::PermissionDenied {
                StoreError::PermissionDenied {
                    path: root.display().to_string(),
                    owner: crate::backend::local::owner_and_mode(&root),
                }
            } else {
                StoreError::Io {
                    key: root.display().to_string(),
                    source,
                }
            }
        };
        if create {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(crate::backend::local::DIR_MODE)
                .create(&root)
                .map_err(io)?;
            // A directory made beforehand (by an administrator, under another umask) becomes
            // private too, when it is ours to change.
            let meta = std::fs::metadata(&root).map_err(io)?;
            // SAFETY: geteuid has no preconditions.
            let ours = meta.uid() == unsafe { libc::geteuid() };
            if ours && meta.mode() & 0o077 != 0 {
                std::fs::set_permissions(
                    &root,
                    std::fs::Permissions::from_mode(crate::backend::local::DIR_MODE),
                )
                .map_err(io)?;
            }
        }
        match std::fs::metadata(&root) {
            Ok(m) if m.is_dir() => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(io(e)),
            _ => {
                return Err(StoreError::NotInitialized {
                    url: url.to_string(),
                })
            }
        }
        let store = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| StoreError::backend(root.display().to_string(), e))?
            .with_fsync(true);
        Ok(Location {
            store: Arc::new(store),
            prefix: Path::default(),
            url: url.to_string(),
            local_root: Some(root),
        })
    }

    /// Full object path of `key` below the repository prefix.
    pub fn path(&self, key: &str) -> Path {
        if self.prefix.as_ref().is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{}", self.prefix.as_ref(), key))
        }
    }

    /// `key` relative to the repository prefix, for a listed object.
    pub fn key_of<'a>(&self, path: &'a Path) -> &'a str {
        let p = path.as_ref();
        let prefix = self.prefix.as_ref();
        if prefix.is_empty() {
            p
        } else {
            p.strip_prefix(prefix)
                .map(|s| s.trim_start_matches('/'))
                .unwrap_or(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_store_is_built_with_fsync() {
        let dir = tempfile::tempdir().unwrap();
        for url in [
            dir.path().to_str().unwrap().to_string(),
            format!("file://{}", dir.path().display()),
        ] {
            let b = Location::connect(&url, false, &[]).unwrap();
            let debug = format!("{:?}", b.store);
            assert!(debug.contains("fsync: true"), "{url}: {debug}");
            assert_eq!(b.local_root.as_deref(), Some(dir.path()));
        }
    }

    #[test]
    fn bad_urls_are_one_clear_error() {
        for url in ["", "relative/dir", "file://relative", "ftp://x/y"] {
            let e = Location::connect(url, false, &[]).unwrap_err();
            assert!(matches!(e, StoreError::BadUrl { .. }), "{url}: {e}");
        }
        let e = Location::connect("/nonexistent/pitr-repo", false, &[]).unwrap_err();
        assert!(matches!(e, StoreError::NotInitialized { .. }), "{e}");
    }

    #[test]
    fn prefix_is_applied() {
        let region = [("aws_region".to_string(), "us-east-1".to_string())];
        let b = Location::connect("s3://bucket/some/prefix", false, &region).unwrap();
        assert_eq!(b.path("config.json").as_ref(), "some/prefix/config.json");
        let p = b.path("chunks/ab/abcd");
        assert_eq!(b.key_of(&p), "chunks/ab/abcd");
    }

    /// Options handed in explicitly reach the cloud backend's builder.
    #[test]
    fn remote_options_are_applied() {
        let opts = vec![
            ("aws_region".to_string(), "eu-west-3".to_string()),
            ("aws_endpoint".to_string(), "http://127.0.0.1:9".to_string()),
            ("allow_http".to_string(), "true".to_string()),
        ];
        let b = Location::connect("s3://bucket/p", false, &opts).unwrap();
        let debug = format!("{:?}", b.store);
        assert!(debug.contains("http://127.0.0.1:9"), "{debug}");
    }
}

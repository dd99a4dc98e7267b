//! Paths inside a data directory or tablespace directory, as backup manifests store them and
//! as the lay-down joins them: validated where they enter (from the server's tar stream, or
//! parsed back from the repository), so nothing later can be steered outside its directory.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A relative path: one or more non-empty components separated by single `/`, none of them `.`
/// or `..`, no NUL byte, not absolute.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(String);

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a safe relative path (absolute, empty, `.`, `..`, `//` or NUL)")]
pub struct RelPathError(pub String);

impl RelPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path's components, in order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl FromStr for RelPath {
    type Err = RelPathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let safe = !s.is_empty()
            && !s.contains('\0')
            && s.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
        if safe {
            Ok(RelPath(s.to_string()))
        } else {
            Err(RelPathError(s.to_string()))
        }
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<std::path::Path> for RelPath {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_relative_paths() {
        for ok in [
            "PG_VERSION",
            "base/1/1259",
            "pg_wal/000000010000000000000002",
            "a.b/..c",
        ] {
            assert_eq!(ok.parse::<RelPath>().unwrap().as_str(), ok);
        }
        for bad in [
            "",
            ".",
            "/etc/passwd",
            "a//b",
            "a/",
            "../x",
            "a/../b",
            "./a",
            "a/.",
            "a\0b",
        ] {
            assert!(bad.parse::<RelPath>().is_err(), "{bad:?} accepted");
        }
        assert!(serde_json::from_str::<RelPath>("\"../../etc\"").is_err());
        let p: RelPath = serde_json::from_str("\"base/1\"").unwrap();
        assert_eq!(p.components().collect::<Vec<_>>(), ["base", "1"]);
    }
}

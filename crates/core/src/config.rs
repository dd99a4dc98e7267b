//! The configuration file (`/etc/pitr/pitr.toml`, `--config`, `PITR_CONFIG`): every setting a
//! flag or a variable can set, typed, checked key by key (an unknown key is an error naming the
//! nearest valid one), with secrets read from a file or a systemd credential. A flag beats a
//! variable beats the file; the values found here are handed to the commands as plain values.
//! Which flag a value stands in for is the binary's business (`crates/cli/src/config.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// The log line format a file may set (`log_format = "text" | "json"`).
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The backup's checkpoint a file may set (`checkpoint = "fast" | "spread"`).
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Checkpoint {
    Fast,
    Spread,
}

/// Read when neither `--config` nor `PITR_CONFIG` names a file, if it exists.
pub const DEFAULT_PATH: &str = "/etc/pitr/pitr.toml";

/// The file as written. Sections other commands own (`[expire]`, `[verify]`) are typed here
/// too, so that a typo in them is caught whichever command runs.
#[derive(Deserialize, Default, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Repository URL (`--repo`, `PITR_REPO`).
    pub repo: Option<String>,
    /// Chunks in flight at once (`PITR_JOBS`).
    pub jobs: Option<usize>,
    /// Log line format on stderr (`--log-format`).
    pub log_format: Option<LogFormat>,
    /// The passphrase or key file of an encrypted repository, as a file (`--passphrase-file`
    /// and `PITR_PASSPHRASE` beat it).
    pub passphrase_file: Option<PathBuf>,
    /// The same from a systemd credential (default: `pitr-passphrase`, when present).
    pub passphrase_credential: Option<String>,
    #[serde(default)]
    pub s3: S3,
    #[serde(default)]
    pub gcs: Gcs,
    #[serde(default)]
    pub azure: Azure,
    #[serde(default)]
    pub init: Init,
    #[serde(default)]
    pub archive_wal: ArchiveWal,
    #[serde(default)]
    pub restore_wal: RestoreWal,
    #[serde(default)]
    pub backup: Backup,
    #[serde(default)]
    pub expire: Expire,
    #[serde(default)]
    pub verify: Verify,
}

/// `[s3]`: options of an `s3://` repository (`AWS_*` variables beat them).
#[derive(Deserialize, Default, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S3 {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub secret_access_key_file: Option<PathBuf>,
    pub secret_access_key_credential: Option<String>,
    pub session_token: Option<String>,
    pub session_token_file: Option<PathBuf>,
    pub session_token_credential: Option<String>,
    /// Path-style (false, the default) or virtual-hosted-style requests.
    pub virtual_hosted_style_request: Option<bool>,
    /// Plain HTTP to the endpoint (test servers only).
    pub allow_http: Option<bool>,
    /// Server-side encryption the bucket applies on top of pitr's own (never instead of it):
    /// `"AES256"` (SSE-S3), `"aws:kms"` (SSE-KMS) or `"aws:kms:dsse"`.
    pub server_side_encryption: Option<String>,
    /// The KMS key for `aws:kms`/`aws:kms:dsse` (ID or ARN).
    pub sse_kms_key_id: Option<String>,
    /// Use the bucket's S3 Bucket Key for SSE-KMS.
    pub sse_bucket_key_enabled: Option<bool>,
}

/// `[gcs]`: options of a `gs://` repository (`GOOGLE_*` variables beat them).
#[derive(Deserialize, Default, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Gcs {
    /// Path of the service account's JSON key file.
    pub service_account_file: Option<PathBuf>,
    /// The JSON key itself, from a systemd credential.
    pub service_account_key_credential: Option<String>,
    /// Another endpoint (test servers).
    pub base_url: Option<String>,
    pub allow_http: Option<bool>,
}

/// `[azure]`: options of an `az://` repository (`AZURE_*` variables beat them).
#[derive(Deserialize, Default, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Azure {
    pub account: Option<String>,
    pub access_key: Option<String>,
    pub access_key_file: Option<PathBuf>,
    pub access_key_credential: Option<String>,
    pub endpoint: Option<String>,
    pub use_emulator: Option<bool>,
    pub allow_http: Option<bool>,
}

/// `[init]`: the settings `pitr init` gives a new repository.
#[derive(Deserialize, Default, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Init {
    pub compression_level: Option<i32>,
    /// `"1M"`, `"512K"`, or bytes.
    pub chunk_size: Option<String>,
    pub wal_chunk_size: Option<String>,
}

/// `[archive_wal]`.
#[derive(Deserialize, Default, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArchiveWal {
    pub lookahead: Option<usize>,
}

/// `[restore_wal]`.
#[derive(Deserialize, Default, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RestoreWal {
    pub prefetch: Option<usize>,
}

/// `[backup]`: how `pitr backup` reaches the server.
#[derive(Deserialize, Default, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// libpq connection string or URL (`--dbname`); better without a password in it.
    pub dbname: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_credential: Option<String>,
    pub checkpoint: Option<Checkpoint>,
    pub max_rate: Option<u32>,
}

/// `[expire]`: retention, read by `pitr expire` (flags beat it).
#[derive(Deserialize, Default, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expire {
    /// Keep this many newest full backups.
    pub retain_full: Option<u32>,
    /// Keep every backup younger than this many days.
    pub retain_days: Option<u32>,
    /// Keep archived WAL this many days even where no kept backup needs it.
    pub retain_wal_days: Option<u32>,
}

/// `[verify]`: what `pitr verify --restore-test` runs on the scratch instance.
#[derive(Deserialize, Default, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    /// SQL statements that must succeed (one string or a list).
    #[serde(default, deserialize_with = "one_or_many")]
    pub check_sql: Vec<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Every key the file may hold, by table (`""` is the top level). Checked against the types
/// above by the tests.
const KEYS: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "repo",
            "jobs",
            "log_format",
            "passphrase_file",
            "passphrase_credential",
            "s3",
            "gcs",
            "azure",
            "init",
            "archive_wal",
            "restore_wal",
            "backup",
            "expire",
            "verify",
        ],
    ),
    (
        "s3",
        &[
            "endpoint",
            "region",
            "access_key_id",
            "secret_access_key",
            "secret_access_key_file",
            "secret_access_key_credential",
            "session_token",
            "session_token_file",
            "session_token_credential",
            "virtual_hosted_style_request",
            "allow_http",
            "server_side_encryption",
            "sse_kms_key_id",
            "sse_bucket_key_enabled",
        ],
    ),
    (
        "gcs",
        &[
            "service_account_file",
            "service_account_key_credential",
            "base_url",
            "allow_http",
        ],
    ),
    (
        "azure",
        &[
            "account",
            "access_key",
            "access_key_file",
            "access_key_credential",
            "endpoint",
            "use_emulator",
            "allow_http",
        ],
    ),
    (
        "init",
        &["compression_level", "chunk_size", "wal_chunk_size"],
    ),
    ("archive_wal", &["lookahead"]),
    ("restore_wal", &["prefetch"]),
    (
        "backup",
        &[
            "dbname",
            "password_file",
            "password_credential",
            "checkpoint",
            "max_rate",
        ],
    ),
    ("expire", &["retain_full", "retain_days", "retain_wal_days"]),
    ("verify", &["check_sql"]),
];

/// What the binary runs with: the file (if any) and what was resolved from it.
#[derive(Debug, Default)]
pub struct Settings {
    /// The file read, if any.
    pub path: Option<PathBuf>,
    pub file: ConfigFile,
    /// Where secret files and credentials are looked up (`$CREDENTIALS_DIRECTORY`).
    credentials_dir: Option<PathBuf>,
}

/// The process environment, passed in so that tests can give their own.
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    pub fn process() -> Env {
        Env {
            vars: std::env::vars().collect(),
        }
    }

    /// An environment of these variables only (tests).
    pub fn of(pairs: &[(&str, &str)]) -> Env {
        Env {
            vars: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }
}

impl Settings {
    /// Reads the configuration file `config` names (`--config`/`PITR_CONFIG`), or
    /// [`DEFAULT_PATH`] when it exists.
    pub fn load(config: Option<&Path>, env: &Env) -> anyhow::Result<Settings> {
        let credentials_dir = env.get("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        let (path, explicit) = match config {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Settings {
                    path: None,
                    file: ConfigFile::default(),
                    credentials_dir,
                })
            }
            Err(e) => {
                return Err(e).with_context(|| format!("read config file {}", path.display()))
            }
        };
        let file = parse(&text).with_context(|| format!("config file {}", path.display()))?;
        // Absolute, because it is handed on (restore_command runs in the data directory).
        let path = std::path::absolute(&path).unwrap_or(path);
        Ok(Settings {
            path: Some(path),
            file,
            credentials_dir,
        })
    }

    /// The repository URL: `flag` (`--repo` or `PITR_REPO`), else `repo = "…"`.
    pub fn repo_url(&self, flag: Option<&str>) -> anyhow::Result<String> {
        if let Some(repo) = flag {
            return Ok(repo.to_string());
        }
        match (&self.file.repo, &self.path) {
            (Some(repo), _) => Ok(repo.clone()),
            (None, Some(path)) => bail!(
                "no repository given: config file {} has no repo = \"...\" (or use --repo URL, PITR_REPO)",
                path.display()
            ),
            (None, None) => bail!(
                "no repository given: use --repo URL, PITR_REPO, or repo = \"...\" in {DEFAULT_PATH}"
            ),
        }
    }

    /// `PITR_JOBS`, else `jobs = N`. A variable that is not a positive number stands for the
    /// default (0), as it always did, rather than for the file's value.
    pub fn jobs(&self, env: &Env) -> Option<usize> {
        match env.get("PITR_JOBS") {
            Some(v) => Some(v.parse().unwrap_or(0)),
            None => self.file.jobs,
        }
    }

    /// The backup connection's password from `[backup] password_file`/`password_credential`,
    /// unless `PGPASSWORD` is set (a variable beats the file).
    pub fn pg_password(&self, env: &Env) -> anyhow::Result<Option<String>> {
        if env.get("PGPASSWORD").is_some() {
            return Ok(None);
        }
        let b = &self.file.backup;
        self.secret(
            "backup.password",
            None,
            &b.password_file,
            &b.password_credential,
        )
    }

    /// Options for a cloud repository at `url`, as `object_store` configuration keys, with
    /// secrets read from their files or credentials.
    pub fn remote_options(&self, url: &str) -> anyhow::Result<Vec<(String, String)>> {
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        let mut out = Vec::new();
        let mut put = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                out.push((key.to_string(), v));
            }
        };
        let flag = |b: Option<bool>| b.map(|b| b.to_string());
        match scheme {
            "s3" | "s3a" => {
                let s = &self.file.s3;
                put("aws_endpoint", s.endpoint.clone());
                put("aws_region", s.region.clone());
                put("aws_access_key_id", s.access_key_id.clone());
                put(
                    "aws_secret_access_key",
                    self.secret(
                        "s3.secret_access_key",
                        s.secret_access_key.as_deref(),
                        &s.secret_access_key_file,
                        &s.secret_access_key_credential,
                    )?,
                );
                put(
                    "aws_session_token",
                    self.secret(
                        "s3.session_token",
                        s.session_token.as_deref(),
                        &s.session_token_file,
                        &s.session_token_credential,
                    )?,
                );
                put(
                    "aws_virtual_hosted_style_request",
                    flag(s.virtual_hosted_style_request),
                );
                put("allow_http", flag(s.allow_http));
                match s.server_side_encryption.as_deref() {
                    None | Some("AES256" | "aws:kms" | "aws:kms:dsse") => {}
                    Some(other) => bail!(
                        "s3.server_side_encryption = {other:?}: use \"AES256\" (SSE-S3), \
                         \"aws:kms\" (SSE-KMS) or \"aws:kms:dsse\""
                    ),
                }
                if s.sse_kms_key_id.is_some()
                    && !matches!(
                        s.server_side_encryption.as_deref(),
                        Some("aws:kms" | "aws:kms:dsse")
                    )
                {
                    bail!("s3.sse_kms_key_id needs server_side_encryption = \"aws:kms\"");
                }
                put(
                    "aws_server_side_encryption",
                    s.server_side_encryption.clone(),
                );
                put("aws_sse_kms_key_id", s.sse_kms_key_id.clone());
                put("aws_sse_bucket_key_enabled", flag(s.sse_bucket_key_enabled));
            }
            "gs" => {
                let g = &self.file.gcs;
                put(
                    "google_service_account",
                    g.service_account_file
                        .as_ref()
                        .map(|p| self.relative(p).display().to_string()),
                );
                put(
                    "google_service_account_key",
                    self.secret(
                        "gcs.service_account_key",
                        None,
                        &None,
                        &g.service_account_key_credential,
                    )?,
                );
                put("google_base_url", g.base_url.clone());
                put("allow_http", flag(g.allow_http));
            }
            "az" | "azure" | "abfs" | "abfss" => {
                let a = &self.file.azure;
                put("azure_storage_account_name", a.account.clone());
                put(
                    "azure_storage_account_key",
                    self.secret(
                        "azure.access_key",
                        a.access_key.as_deref(),
                        &a.access_key_file,
                        &a.access_key_credential,
                    )?,
                );
                put("azure_storage_endpoint", a.endpoint.clone());
                put("azure_storage_use_emulator", flag(a.use_emulator));
                put("allow_http", flag(a.allow_http));
            }
            _ => {}
        }
        Ok(out)
    }

    /// The secret that opens an encrypted repository, first found of: `flag_file`
    /// (`--passphrase-file`, `PITR_PASSPHRASE_FILE`), `PITR_PASSPHRASE`, the file's
    /// `passphrase_file` or `passphrase_credential`, the systemd credential `pitr-passphrase`.
    /// Never from the command line itself. `None`: repositories must be unencrypted.
    pub fn passphrase(
        &self,
        flag_file: Option<&Path>,
        env: &Env,
    ) -> anyhow::Result<Option<pitr_store::Secret>> {
        if let Some(path) = flag_file {
            let text = read_secret_file(path)?;
            return Ok(Some(pitr_store::Secret::new(
                text,
                format!("--passphrase-file {}", path.display()),
            )));
        }
        if let Some(v) = env.get("PITR_PASSPHRASE") {
            return Ok(Some(pitr_store::Secret::new(v, "PITR_PASSPHRASE")));
        }
        let f = &self.file;
        if f.passphrase_file.is_some() && f.passphrase_credential.is_some() {
            bail!("give only one of passphrase_file, passphrase_credential");
        }
        if let (Some(p), Some(config)) = (&f.passphrase_file, &self.path) {
            let path = self.relative(p);
            let text = read_secret_file(&path)?;
            let origin = format!("passphrase_file {} in {}", path.display(), config.display());
            return Ok(Some(pitr_store::Secret::new(text, origin)));
        }
        if let Some(v) = self.secret("passphrase", None, &None, &f.passphrase_credential)? {
            let name = f.passphrase_credential.as_deref().unwrap_or_default();
            let origin = format!("systemd credential {name}");
            return Ok(Some(pitr_store::Secret::new(v, origin)));
        }
        if let Some(dir) = &self.credentials_dir {
            let path = dir.join(DEFAULT_CREDENTIAL);
            if path.exists() {
                let text = read_secret_file(&path)?;
                return Ok(Some(pitr_store::Secret::new(
                    text,
                    format!("systemd credential {DEFAULT_CREDENTIAL}"),
                )));
            }
        }
        Ok(None)
    }

    /// A secret given inline, as `<name>_file`, or as `<name>_credential` (a file in
    /// `$CREDENTIALS_DIRECTORY`, systemd's `LoadCredential=`); at most one of them.
    pub fn secret(
        &self,
        name: &str,
        inline: Option<&str>,
        file: &Option<PathBuf>,
        credential: &Option<String>,
    ) -> anyhow::Result<Option<String>> {
        let given = usize::from(inline.is_some())
            + usize::from(file.is_some())
            + usize::from(credential.is_some());
        if given > 1 {
            bail!("give only one of {name}, {name}_file, {name}_credential");
        }
        if let Some(v) = inline {
            return Ok(Some(v.to_string()));
        }
        let path = match (file, credential) {
            (Some(f), _) => self.relative(f),
            (_, Some(c)) => {
                if c.is_empty() || c.contains('/') || c == "." || c == ".." {
                    bail!("{name}_credential = {c:?}: a credential is a plain name");
                }
                let Some(dir) = &self.credentials_dir else {
                    bail!(
                        "{name}_credential = {c:?}: $CREDENTIALS_DIRECTORY is not set \
                         (LoadCredential={c}:/path in the systemd unit sets it)"
                    );
                };
                dir.join(c)
            }
            (None, None) => return Ok(None),
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("read {name} from {}", path.display()))?;
        let value = text.trim_end_matches(['\n', '\r']).to_string();
        if value.is_empty() {
            bail!("{name}: {} is empty", path.display());
        }
        Ok(Some(value))
    }

    /// A path from the file, relative to the file's directory.
    fn relative(&self, p: &Path) -> PathBuf {
        match self.path.as_ref().and_then(|c| c.parent()) {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }
}

/// The systemd credential an encrypted repository's secret is read from when nothing else
/// names one (`LoadCredentialEncrypted=pitr-passphrase:…`).
pub const DEFAULT_CREDENTIAL: &str = "pitr-passphrase";

/// A passphrase or key file's text, its trailing line ends left out; an empty one, or one
/// other users may read, is refused.
pub fn read_secret_file(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read the passphrase from {}", path.display()))?;
    let meta = std::fs::metadata(path)?;
    if meta.mode() & 0o004 != 0 {
        bail!(
            "{}: the passphrase file is readable by every user (mode {:04o}); chmod o-r it",
            path.display(),
            meta.mode() & 0o7777
        );
    }
    let value = text.trim_end_matches(['\n', '\r']).to_string();
    if value.is_empty() {
        bail!("{}: the passphrase file is empty", path.display());
    }
    Ok(value)
}

/// The file's text as a configuration: every key known (else an error naming the nearest
/// valid one), then typed.
pub fn parse(text: &str) -> anyhow::Result<ConfigFile> {
    let table: toml::Table = toml::from_str(text)?;
    check_keys(&table)?;
    Ok(toml::from_str(text)?)
}

fn check_keys(table: &toml::Table) -> anyhow::Result<()> {
    let known = |section: &str| {
        KEYS.iter()
            .find(|(s, _)| *s == section)
            .map_or(&[][..], |(_, k)| *k)
    };
    for (key, value) in table {
        if !known("").contains(&key.as_str()) {
            bail!("unknown key {key:?}{}", suggestion("", key));
        }
        if let (Some(sub), true) = (value.as_table(), KEYS.iter().any(|(s, _)| s == key)) {
            for k in sub.keys() {
                if !known(key).contains(&k.as_str()) {
                    bail!("unknown key \"{key}.{k}\"{}", suggestion(key, k));
                }
            }
        }
    }
    Ok(())
}

/// `; did you mean "…"?` for the valid key nearest `key` (in its own table, or the same name
/// in another table), or the list of valid keys.
fn suggestion(section: &str, key: &str) -> String {
    let here = KEYS
        .iter()
        .find(|(s, _)| *s == section)
        .map_or(&[][..], |(_, k)| *k);
    // The right key in the wrong table: `lookahead = 8` at the top means [archive_wal].
    for (s, keys) in KEYS {
        if *s != section && keys.contains(&key) {
            let full = if s.is_empty() {
                key.to_string()
            } else {
                format!("{s}.{key}")
            };
            return format!("; did you mean \"{full}\" (key {key} in [{s}])?");
        }
    }
    let best = here
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .min()
        .filter(|(d, k)| *d <= (k.len().max(key.len()) / 3).max(2));
    match best {
        Some((_, k)) if section.is_empty() => format!("; did you mean \"{k}\"?"),
        Some((_, k)) => format!("; did you mean \"{section}.{k}\"?"),
        None => format!("; valid keys here: {}", here.join(", ")),
    }
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// contrib/pitr.toml names every key (commented out as `#key = …`), and each is a field.
    #[test]
    fn the_example_holds_every_key() {
        let text = include_str!("../../../contrib/pitr.toml");
        parse(text).unwrap();
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if !rest.starts_with([' ', '#']) && !rest.is_empty() => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let table: toml::Table = toml::from_str(&uncommented).unwrap();
        let cfg = parse(&uncommented).unwrap();
        assert_ne!(cfg, ConfigFile::default());
        for (section, keys) in KEYS {
            for key in *keys {
                let present = if section.is_empty() {
                    table.contains_key(*key)
                } else {
                    table[*section].as_table().unwrap().contains_key(*key)
                };
                assert!(present, "contrib/pitr.toml lacks {section}.{key}");
            }
        }
    }

    /// --passphrase-file beats PITR_PASSPHRASE beats the file's passphrase_file beats the
    /// default systemd credential; each names where it came from, never its value; a file
    /// every user can read is refused.
    #[test]
    fn passphrase_sources_in_order() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let private = |name: &str, text: &str| {
            let p = write(dir.path(), name, text);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            p
        };
        let flag = private("flag-pass", "from flag\n");
        private("file-pass", "from file\n");
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        let cred = write(&creds, DEFAULT_CREDENTIAL, "from credential\n");
        std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o400)).unwrap();
        let config = write(dir.path(), "pitr.toml", "passphrase_file = \"file-pass\"\n");
        let creds_env = ("CREDENTIALS_DIRECTORY", creds.to_str().unwrap());
        let env = Env::of(&[("PITR_PASSPHRASE", "from env"), creds_env]);
        let s = Settings::load(Some(&config), &env).unwrap();
        let got = s.passphrase(Some(&flag), &env).unwrap().unwrap();
        assert!(got.origin().contains("--passphrase-file"), "{got:?}");
        let got = s.passphrase(None, &env).unwrap().unwrap();
        assert_eq!(got.origin(), "PITR_PASSPHRASE");
        let env = Env::of(&[creds_env]);
        let got = s.passphrase(None, &env).unwrap().unwrap();
        assert!(got.origin().contains("file-pass"), "{got:?}");
        let bare = Settings::load(None, &env).unwrap();
        let got = bare.passphrase(None, &env).unwrap().unwrap();
        assert_eq!(got.origin(), "systemd credential pitr-passphrase");
        assert!(!format!("{got:?}").contains("from credential"));
        let none = Settings::load(None, &Env::of(&[])).unwrap();
        assert!(none.passphrase(None, &Env::of(&[])).unwrap().is_none());
        let open = write(dir.path(), "open-pass", "x\n");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = bare.passphrase(Some(&open), &env).unwrap_err().to_string();
        assert!(e.contains("readable by every user"), "{e}");
    }

    /// Server-side encryption settings reach object_store's S3 keys, checked first.
    #[test]
    fn s3_server_side_encryption_options() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write(
            dir.path(),
            "ok.toml",
            "[s3]\nserver_side_encryption = \"aws:kms\"\nsse_kms_key_id = \"k1\"\n\
             sse_bucket_key_enabled = true\n",
        );
        let s = Settings::load(Some(&ok), &Env::of(&[])).unwrap();
        let opts = s.remote_options("s3://b/p").unwrap();
        for (k, v) in [
            ("aws_server_side_encryption", "aws:kms"),
            ("aws_sse_kms_key_id", "k1"),
            ("aws_sse_bucket_key_enabled", "true"),
        ] {
            assert!(opts.contains(&(k.to_string(), v.to_string())), "{opts:?}");
        }
        let bad = write(
            dir.path(),
            "bad.toml",
            "[s3]\nserver_side_encryption = \"rot13\"\n",
        );
        let s = Settings::load(Some(&bad), &Env::of(&[])).unwrap();
        let e = s.remote_options("s3://b/p").unwrap_err().to_string();
        assert!(e.contains("rot13"), "{e}");
        let kms_only = write(dir.path(), "k.toml", "[s3]\nsse_kms_key_id = \"k1\"\n");
        let s = Settings::load(Some(&kms_only), &Env::of(&[])).unwrap();
        assert!(s.remote_options("s3://b/p").is_err());
    }

    #[test]
    fn unknown_keys_name_the_nearest() {
        let e = parse("repo = \"/r\"\nrepos = 1\n").unwrap_err().to_string();
        assert!(
            e.contains("\"repos\"") && e.contains("did you mean \"repo\""),
            "{e}"
        );
        let e = parse("[s3]\nregoin = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("did you mean \"s3.region\""), "{e}");
        let e = parse("lookahead = 4\n").unwrap_err().to_string();
        assert!(e.contains("archive_wal.lookahead"), "{e}");
        let e = parse("[backup]\nzzzzzzzzzz = 1\n").unwrap_err().to_string();
        assert!(e.contains("valid keys here: dbname"), "{e}");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "ab"), 2);
    }

    #[test]
    fn secrets_from_a_file_and_a_credential() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "s3-secret", "file-secret\n");
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        write(&creds, "pg-password", "cred-password\n");
        let path = write(
            dir.path(),
            "pitr.toml",
            "repo = \"s3://bucket/p\"\n[s3]\nregion = \"eu-west-1\"\n\
             secret_access_key_file = \"s3-secret\"\n\
             [backup]\npassword_credential = \"pg-password\"\n",
        );
        let env = Env::of(&[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())]);
        let s = Settings::load(Some(&path), &env).unwrap();
        let opts = s.remote_options("s3://bucket/p").unwrap();
        assert!(opts.contains(&("aws_region".into(), "eu-west-1".into())));
        assert!(opts.contains(&("aws_secret_access_key".into(), "file-secret".into())));
        assert_eq!(
            s.pg_password(&env).unwrap().as_deref(),
            Some("cred-password")
        );
        // PGPASSWORD beats the file.
        let env2 = Env::of(&[("PGPASSWORD", "x")]);
        assert_eq!(s.pg_password(&env2).unwrap(), None);
        // Without $CREDENTIALS_DIRECTORY the credential is an error that says how to set it.
        let s = Settings::load(Some(&path), &Env::of(&[])).unwrap();
        let e = s.pg_password(&Env::of(&[])).unwrap_err().to_string();
        assert!(e.contains("CREDENTIALS_DIRECTORY"), "{e}");
        // Two sources for one secret is refused.
        let both = write(
            dir.path(),
            "both.toml",
            "[s3]\nsecret_access_key = \"a\"\nsecret_access_key_file = \"b\"\n",
        );
        let s = Settings::load(Some(&both), &Env::of(&[])).unwrap();
        assert!(s.remote_options("s3://b/p").is_err());
        // A credential name cannot leave the directory.
        let s = Settings {
            credentials_dir: Some(creds.clone()),
            ..Settings::default()
        };
        assert!(s
            .secret("x", None, &None, &Some("../s3-secret".into()))
            .is_err());
    }
}

//! A cloud repository's options (`[s3]`, `[gcs]`, `[azure]` in the configuration file) and
//! their mapping to `object_store`'s configuration keys: the one place that knows those keys.
//! Where a secret comes from (inline, a file, a systemd credential) is the caller's business:
//! [`object_store_options`] asks for each through `secret`. Relative paths are the caller's to
//! resolve too ([`S3::rebase`] and the like).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `[s3]`: options of an `s3://` repository (`AWS_*` variables beat them).
#[derive(Deserialize, Default, Debug, Clone, PartialEq)]
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
    /// Server-side encryption the bucket applies on top of pitr's own (never instead of
    /// it): `"AES256"` (SSE-S3), `"aws:kms"` (SSE-KMS) or `"aws:kms:dsse"`.
    pub server_side_encryption: Option<String>,
    /// The KMS key for `aws:kms`/`aws:kms:dsse` (ID or ARN).
    pub sse_kms_key_id: Option<String>,
    /// Use the bucket's S3 Bucket Key for SSE-KMS.
    pub sse_bucket_key_enabled: Option<bool>,
}

/// `[gcs]`: options of a `gs://` repository (`GOOGLE_*` variables beat them).
#[derive(Deserialize, Default, Debug, Clone, PartialEq)]
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
#[derive(Deserialize, Default, Debug, Clone, PartialEq)]
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

/// A setting that cannot work (named by its key).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RemoteError(pub String);

fn invalid<E: From<RemoteError>>(detail: String) -> E {
    RemoteError(detail).into()
}

/// Where one secret may come from, as the file names it: `name` given inline, as
/// `<name>_file` or as `<name>_credential`.
pub struct SecretSources<'a> {
    /// The key without its suffix (`s3.secret_access_key`).
    pub name: &'a str,
    pub inline: Option<&'a str>,
    pub file: &'a Option<PathBuf>,
    pub credential: &'a Option<String>,
}

/// Options for a cloud repository at `url`, as `object_store` configuration keys (see
/// [`crate::RepoOptions::remote`]); each secret's value comes from `secret`. Only the
/// table of `url`'s scheme is read (a broken `[s3]` does not stop a local repository).
pub fn object_store_options<E: From<RemoteError>>(
    url: &str,
    s3: &S3,
    gcs: &Gcs,
    azure: &Azure,
    secret: &mut dyn FnMut(SecretSources<'_>) -> Result<Option<String>, E>,
) -> Result<Vec<(String, String)>, E> {
    let remote = Tables { s3, gcs, azure };
    let mut secret = |name, inline, file, credential| {
        secret(SecretSources {
            name,
            inline,
            file,
            credential,
        })
    };
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
            let s = &remote.s3;
            put("aws_endpoint", s.endpoint.clone());
            put("aws_region", s.region.clone());
            put("aws_access_key_id", s.access_key_id.clone());
            put(
                "aws_secret_access_key",
                secret(
                    "s3.secret_access_key",
                    s.secret_access_key.as_deref(),
                    &s.secret_access_key_file,
                    &s.secret_access_key_credential,
                )?,
            );
            put(
                "aws_session_token",
                secret(
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
                Some(other) => {
                    return Err(invalid(format!(
                        "s3.server_side_encryption = {other:?}: use \"AES256\" (SSE-S3), \
                         \"aws:kms\" (SSE-KMS) or \"aws:kms:dsse\""
                    )))
                }
            }
            if s.sse_kms_key_id.is_some()
                && !matches!(
                    s.server_side_encryption.as_deref(),
                    Some("aws:kms" | "aws:kms:dsse")
                )
            {
                return Err(invalid(
                    "s3.sse_kms_key_id needs server_side_encryption = \"aws:kms\"".into(),
                ));
            }
            put(
                "aws_server_side_encryption",
                s.server_side_encryption.clone(),
            );
            put("aws_sse_kms_key_id", s.sse_kms_key_id.clone());
            put("aws_sse_bucket_key_enabled", flag(s.sse_bucket_key_enabled));
        }
        "gs" => {
            let g = &remote.gcs;
            put(
                "google_service_account",
                g.service_account_file
                    .as_ref()
                    .map(|p| p.display().to_string()),
            );
            put(
                "google_service_account_key",
                secret(
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
            let a = &remote.azure;
            put("azure_storage_account_name", a.account.clone());
            put(
                "azure_storage_account_key",
                secret(
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

struct Tables<'a> {
    s3: &'a S3,
    gcs: &'a Gcs,
    azure: &'a Azure,
}

fn rebase_path(p: &mut Option<PathBuf>, dir: &Path) {
    if let Some(path) = p {
        if path.is_relative() {
            *path = dir.join(&*path);
        }
    }
}

impl S3 {
    /// Relative paths made relative to `dir` (the configuration file's directory).
    pub fn rebase(&mut self, dir: &Path) {
        rebase_path(&mut self.secret_access_key_file, dir);
        rebase_path(&mut self.session_token_file, dir);
    }
}

impl Gcs {
    /// Relative paths made relative to `dir` (the configuration file's directory).
    pub fn rebase(&mut self, dir: &Path) {
        rebase_path(&mut self.service_account_file, dir);
    }
}

impl Azure {
    /// Relative paths made relative to `dir` (the configuration file's directory).
    pub fn rebase(&mut self, dir: &Path) {
        rebase_path(&mut self.access_key_file, dir);
    }
}

//! TLS for the connection: rustls configured per `sslmode`, and the `tls-server-end-point`
//! channel-binding hash SCRAM-SHA-256-PLUS needs.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::Digest;

use crate::config::{default_root_cert, SslMode};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration for `mode` (which must want TLS).
pub(crate) fn client_config(
    mode: SslMode,
    rootcert: Option<&Path>,
) -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("set up TLS: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            Arc::new(AcceptAnyCert { provider })
        }
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let path = match rootcert {
                Some(p) => p.to_path_buf(),
                None => default_root_cert().ok_or_else(|| {
                    format!("sslmode={mode} needs sslrootcert (no home directory to look in)")
                })?,
            };
            let roots = load_roots(&path)?;
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("root certificates from {}: {e}", path.display()))?;
            if mode == SslMode::VerifyFull {
                inner
            } else {
                Arc::new(IgnoreHostName { inner })
            }
        }
    };
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // PostgreSQL 17+ checks the ALPN protocol when the client offers one; older servers
    // ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let data = std::fs::read(path)
        .map_err(|e| format!("read root certificate {}: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut data.as_slice()) {
        let cert = cert.map_err(|e| format!("parse root certificate {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("use root certificate from {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("no certificates in {}", path.display()));
    }
    Ok(roots)
}

/// The name to present (SNI) and, for verify-full, to check the certificate against.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("{host:?} is not a valid TLS server name"))
}

/// `sslmode=require`: encrypt, but accept whatever certificate the server shows (libpq's
/// behaviour without a root certificate). Handshake signatures are still checked.
#[derive(Debug)]
struct AcceptAnyCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to a trusted root, the name does not matter.
#[derive(Debug)]
struct IgnoreHostName {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for IgnoreHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // webpki checks the name only after the chain, so this error means the chain is good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// RFC 5929 `tls-server-end-point`: the server certificate hashed with the hash of its
/// signature algorithm (SHA-256 for MD5 and SHA-1). `None` when the algorithm has no single
/// hash (Ed25519, RSA-PSS) or the certificate cannot be parsed: the caller then does SCRAM
/// without channel binding.
pub(crate) fn server_end_point_hash(cert_der: &[u8]) -> Option<Vec<u8>> {
    const OID_PREFIX_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const OID_PREFIX_ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let oid = signature_algorithm_oid(cert_der)?;
    enum Hash {
        Sha224,
        Sha256,
        Sha384,
        Sha512,
    }
    let hash = if let Some(rest) = oid.strip_prefix(OID_PREFIX_RSA) {
        match rest {
            [0x04] | [0x05] | [0x0b] => Hash::Sha256, // md5, sha1, sha256 WithRSAEncryption
            [0x0c] => Hash::Sha384,
            [0x0d] => Hash::Sha512,
            [0x0e] => Hash::Sha224,
            _ => return None,
        }
    } else if let Some(rest) = oid.strip_prefix(OID_PREFIX_ECDSA) {
        match rest {
            [0x01] => Hash::Sha256, // ecdsa-with-SHA1
            [0x03, 0x01] => Hash::Sha224,
            [0x03, 0x02] => Hash::Sha256,
            [0x03, 0x03] => Hash::Sha384,
            [0x03, 0x04] => Hash::Sha512,
            _ => return None,
        }
    } else {
        return None;
    };
    Some(match hash {
        Hash::Sha224 => sha2::Sha224::digest(cert_der).to_vec(),
        Hash::Sha256 => sha2::Sha256::digest(cert_der).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(cert_der).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(cert_der).to_vec(),
    })
}

/// The OID bytes of `Certificate.signatureAlgorithm.algorithm` (DER).
fn signature_algorithm_oid(der: &[u8]) -> Option<&[u8]> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE, … }
    let (tag, cert, _) = der_element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, _tbs, rest) = der_element(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, alg, _) = der_element(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der_element(alg)?;
    (tag == 0x06).then_some(oid)
}

/// (tag, contents, rest) of the DER element at the start of `buf`.
fn der_element(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = buf.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_signature_algorithm() {
        // SEQUENCE { SEQUENCE {}, SEQUENCE { OID sha256WithRSAEncryption, NULL }, BIT STRING }
        let cert = [
            0x30, 0x15, 0x30, 0x00, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d,
            0x01, 0x01, 0x0b, 0x05, 0x00, 0x03, 0x02, 0x00, 0x00,
        ];
        assert_eq!(
            signature_algorithm_oid(&cert),
            Some(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b][..])
        );
        assert_eq!(
            server_end_point_hash(&cert),
            Some(sha2::Sha256::digest(cert).to_vec())
        );
        assert_eq!(server_end_point_hash(&cert[..10]), None);
    }
}

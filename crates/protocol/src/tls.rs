//! TLS for the connection: rustls configured per `sslmode`, and the `tls-server-end-point`
//! channel-binding hash SCRAM-SHA-256-PLUS needs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
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
            Arc::new(VerifyAgainstRoots::new(
                &path,
                mode == SslMode::VerifyFull,
                provider,
            )?)
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

/// The trust anchors in the PEM file at `path`, and the certificates themselves (DER).
fn load_roots(path: &Path) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), String> {
    let data = std::fs::read(path)
        .map_err(|e| format!("read root certificate {}: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    let mut certs = Vec::new();
    for cert in rustls_pemfile::certs(&mut data.as_slice()) {
        let cert = cert.map_err(|e| format!("parse root certificate {}: {e}", path.display()))?;
        roots
            .add(cert.clone())
            .map_err(|e| format!("use root certificate from {}: {e}", path.display()))?;
        certs.push(cert);
    }
    if roots.is_empty() {
        return Err(format!("no certificates in {}", path.display()));
    }
    Ok((roots, certs))
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

/// `sslmode=verify-ca` and `verify-full`: the chain must lead to a certificate from
/// `sslrootcert`; for verify-full the certificate must also name the host.
///
/// webpki refuses a server certificate that is itself one of the roots when it is marked
/// `CA:TRUE` (`CaUsedAsEndEntity`; `openssl req -x509` sets that) or, not being self-issued,
/// has no issuer among the roots (`UnknownIssuer`). libpq (OpenSSL) accepts a server whose
/// self-signed certificate is used as its own root, and PostgreSQL's documentation sets up
/// exactly that, so for those two errors only, a certificate byte-for-byte identical to one
/// from `sslrootcert` is accepted, after checking its validity period and (verify-full) name.
#[derive(Debug)]
struct VerifyAgainstRoots {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    /// The certificates of `sslrootcert`, as loaded.
    root_certs: Vec<CertificateDer<'static>>,
    /// verify-full: the certificate must be valid for the server name.
    check_name: bool,
}

impl VerifyAgainstRoots {
    fn new(
        rootcert: &Path,
        check_name: bool,
        provider: Arc<CryptoProvider>,
    ) -> Result<VerifyAgainstRoots, String> {
        let (roots, root_certs) = load_roots(rootcert)?;
        let inner =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("root certificates from {}: {e}", rootcert.display()))?;
        Ok(VerifyAgainstRoots {
            inner,
            root_certs,
            check_name,
        })
    }

    /// The checks for a server certificate that is one of the roots: the user trusts that
    /// very certificate, so what is left is its validity period and, for verify-full, its
    /// names.
    fn verify_trusted_end_entity(
        &self,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let (not_before, not_after) = validity(end_entity).ok_or(CertificateError::BadEncoding)?;
        let at = |secs: i64| {
            UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
        };
        let time = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        if time < not_before {
            return Err(CertificateError::NotValidYetContext {
                time: now,
                not_before: at(not_before),
            }
            .into());
        }
        if time > not_after {
            return Err(CertificateError::ExpiredContext {
                time: now,
                not_after: at(not_after),
            }
            .into());
        }
        if self.check_name {
            let parsed = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_name(&parsed, server_name)?;
        }
        Ok(())
    }
}

/// Whether webpki's `error` may come only from the end-entity certificate being one of the
/// roots: `CaUsedAsEndEntity` (rustls passes it on as an opaque `Other` error, whose text is
/// the variant name) or `UnknownIssuer`. webpki reports an expired certificate before either.
fn may_be_a_trusted_end_entity(error: &CertificateError) -> bool {
    match error {
        CertificateError::UnknownIssuer => true,
        CertificateError::Other(other) => other.0.to_string() == "CaUsedAsEndEntity",
        _ => false,
    }
}

impl ServerCertVerifier for VerifyAgainstRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let err = match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => return Ok(verified),
            Err(err) => err,
        };
        match &err {
            // webpki checks the name only after the chain, so this error means the chain is good.
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) if !self.check_name => Ok(ServerCertVerified::assertion()),
            rustls::Error::InvalidCertificate(cert_err)
                if may_be_a_trusted_end_entity(cert_err)
                    && self
                        .root_certs
                        .iter()
                        .any(|root| root.as_ref() == end_entity.as_ref()) =>
            {
                self.verify_trusted_end_entity(end_entity, server_name, now)?;
                Ok(ServerCertVerified::assertion())
            }
            _ => Err(err),
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

/// `(notBefore, notAfter)` of a certificate (DER), in seconds since the Unix epoch.
fn validity(der: &[u8]) -> Option<(i64, i64)> {
    // TBSCertificate ::= SEQUENCE { version [0] EXPLICIT OPTIONAL, serialNumber INTEGER,
    //   signature AlgorithmIdentifier, issuer Name, validity Validity, … }
    let (tag, cert, _) = der_element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, tbs, _) = der_element(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (mut tag, mut body, mut rest) = der_element(tbs)?;
    if tag == 0xa0 {
        (tag, body, rest) = der_element(rest)?;
    }
    for expected in [0x02, 0x30, 0x30] {
        if tag != expected {
            return None;
        }
        (tag, body, rest) = der_element(rest)?;
    }
    if tag != 0x30 {
        return None;
    }
    // Validity ::= SEQUENCE { notBefore Time, notAfter Time }
    let (tag, not_before, after) = der_element(body)?;
    let not_before = der_time(tag, not_before)?;
    let (tag, not_after, _) = der_element(after)?;
    let not_after = der_time(tag, not_after)?;
    Some((not_before, not_after))
}

/// A DER `UTCTime` (tag 0x17, `YYMMDDHHMMSSZ`, years 1950–2049) or `GeneralizedTime` (tag
/// 0x18, `YYYYMMDDHHMMSSZ`), in seconds since the Unix epoch.
fn der_time(tag: u8, text: &[u8]) -> Option<i64> {
    let digits = text.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let num = |d: &[u8]| {
        d.iter()
            .fold(0i64, |acc, &b| acc * 10 + i64::from(b - b'0'))
    };
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy = num(&digits[..2]);
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (0x18, 14) => (num(&digits[..4]), &digits[4..]),
        _ => return None,
    };
    let [month, day, hour, minute, second] = [0, 2, 4, 6, 8].map(|i| num(&rest[i..i + 2]));
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    // Days from 1970-01-01 to year-month-day (proleptic Gregorian), after Howard Hinnant's
    // days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
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

    #[test]
    fn parses_certificate_times() {
        assert_eq!(der_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(der_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(der_time(0x17, b"500101000000Z"), Some(-631_152_000));
        assert_eq!(der_time(0x18, b"20240229120000Z"), Some(1_709_208_000));
        assert_eq!(der_time(0x18, b"21000301000000Z"), Some(4_107_542_400));
        for (tag, bad) in [
            (0x17, &b"20240229120000Z"[..]),
            (0x18, b"240229120000Z"),
            (0x17, b"240229120000"),
            (0x17, b"241329120000Z"),
            (0x17, b"2402291200+0Z"),
            (0x05, b"240229120000Z"),
        ] {
            assert_eq!(der_time(tag, bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    /// A self-signed certificate from `openssl req -x509` (so `CA:TRUE`) for `san`, as PEM
    /// in `dir/name.crt`, and its DER.
    fn self_signed(dir: &Path, name: &str, san: &str) -> CertificateDer<'static> {
        let out = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
            .args(["-addext", &format!("subjectAltName={san}")])
            .arg("-keyout")
            .arg(dir.join(format!("{name}.key")))
            .arg("-out")
            .arg(dir.join(format!("{name}.crt")))
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl req: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (_, certs) =
            load_roots(&dir.join(format!("{name}.crt"))).expect("load the certificate");
        certs.into_iter().next().expect("one certificate")
    }

    #[test]
    fn a_self_signed_server_certificate_can_be_its_own_root() {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = self_signed(dir.path(), "server", "DNS:localhost,IP:127.0.0.1");
        let other = self_signed(dir.path(), "other", "DNS:localhost,IP:127.0.0.1");
        let both = dir.path().join("both.crt");
        let pem = |name: &str| std::fs::read(dir.path().join(format!("{name}.crt"))).unwrap();
        std::fs::write(&both, [pem("other"), pem("server")].concat()).unwrap();

        let verify = |rootcert: &str, full: bool, host: &str, cert: &CertificateDer<'_>, now| {
            VerifyAgainstRoots::new(&dir.path().join(rootcert), full, provider())
                .expect("verifier")
                .verify_server_cert(cert, &[], &server_name(host).unwrap(), &[], now)
                .map(|_| ())
        };
        let now = UnixTime::now();
        for full in [false, true] {
            for host in ["localhost", "127.0.0.1"] {
                for root in ["server.crt", "both.crt"] {
                    verify(root, full, host, &server, now)
                        .unwrap_or_else(|e| panic!("{root} full={full} {host}: {e}"));
                }
                // Not among the roots: refused, whatever the roots look like.
                for (root, cert) in [("other.crt", &server), ("server.crt", &other)] {
                    let err = verify(root, full, host, cert, now).unwrap_err();
                    assert!(
                        err.to_string().contains("CaUsedAsEndEntity")
                            || matches!(
                                err,
                                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
                            ),
                        "{err:?}"
                    );
                }
            }
        }
        // verify-full still checks the name; verify-ca does not.
        let err = verify("server.crt", true, "otherhost", &server, now).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
            ),
            "{err:?}"
        );
        verify("server.crt", false, "otherhost", &server, now).unwrap();
        // And the validity period, in both modes.
        let later = UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs() + 3 * 86_400));
        let earlier = UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs() - 86_400));
        for full in [false, true] {
            let err = verify("server.crt", full, "localhost", &server, later).unwrap_err();
            assert!(
                matches!(
                    err,
                    rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
                ),
                "{err:?}"
            );
            let err = verify("server.crt", full, "localhost", &server, earlier).unwrap_err();
            assert!(
                matches!(
                    err,
                    rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext { .. })
                ),
                "{err:?}"
            );
        }
        // webpki rejects those before we look; our own check rejects them too.
        for full in [false, true] {
            let v = VerifyAgainstRoots::new(&dir.path().join("server.crt"), full, provider())
                .expect("verifier");
            let name = server_name("localhost").unwrap();
            v.verify_trusted_end_entity(&server, &name, now).unwrap();
            for time in [later, earlier] {
                let err = v
                    .verify_trusted_end_entity(&server, &name, time)
                    .unwrap_err();
                assert!(
                    matches!(
                        err,
                        rustls::Error::InvalidCertificate(
                            CertificateError::ExpiredContext { .. }
                                | CertificateError::NotValidYetContext { .. }
                        )
                    ),
                    "{err:?}"
                );
            }
        }
        // Our own reading of the validity period agrees with the certificate's 2 days.
        let (not_before, not_after) = validity(&server).expect("validity");
        assert_eq!(not_after - not_before, 2 * 86_400);
        let now = i64::try_from(now.as_secs()).unwrap();
        assert!(
            not_before <= now + 5 && now - not_before < 600,
            "{not_before} vs {now}"
        );
    }
}

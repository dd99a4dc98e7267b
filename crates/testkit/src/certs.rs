//! Test certificates, made with `openssl` in the directory a test names: a CA-signed chain for
//! `localhost`, or a server certificate self-signed the way PostgreSQL's documentation makes it.
//! Keys and certificates belong to the PostgreSQL user, keys mode 0600.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::run;
use crate::user::{chmod, give_to_pg};

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").args(args).current_dir(dir));
}

/// Hands a key and its certificate to the PostgreSQL user, which refuses a key others can read.
fn give_pair(crt: &Path, key: &Path) {
    give_to_pg(crt);
    give_to_pg(key);
    chmod(key, 0o600);
    chmod(crt, 0o644);
}

/// `openssl req -x509`: a new RSA key `<dir>/<name>.key` and a certificate `<dir>/<name>.crt`
/// self-signed for `subject`, valid `days` days, with `extra` arguments.
fn req_x509(
    dir: &Path,
    name: &str,
    subject: &str,
    days: &str,
    extra: &[&str],
) -> (PathBuf, PathBuf) {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let (crt_arg, key_arg) = (crt.display().to_string(), key.display().to_string());
    let mut args = vec!["req", "-x509", "-newkey", "rsa:2048", "-nodes"];
    args.extend(["-days", days, "-subj", subject]);
    args.extend(extra);
    args.extend(["-keyout", &key_arg, "-out", &crt_arg]);
    openssl(dir, &args);
    (crt, key)
}

/// `<dir>/<name>.crt` and `<dir>/<name>.key`: a certificate self-signed with
/// `openssl req -x509` (hence `CA:TRUE`, as PostgreSQL's documentation makes one), for
/// `CN=localhost` and subjectAltName `san` (e.g. `DNS:localhost,IP:127.0.0.1`).
pub fn self_signed(dir: &Path, name: &str, san: &str) -> (PathBuf, PathBuf) {
    let san = format!("subjectAltName={san}");
    let (crt, key) = req_x509(dir, name, "/CN=localhost", "2", &["-addext", &san]);
    give_pair(&crt, &key);
    (crt, key)
}

/// In `dir`: `ca.crt` (a test CA), `server.crt`/`server.key` (for DNS name `localhost` only,
/// signed by the CA; or, with `self_signed_san`, self-signed for that subjectAltName, see
/// [`self_signed`]) and `other-ca.crt` (an unrelated self-signed certificate). Neither CA
/// leads to a self-signed server certificate.
pub fn test_chain(dir: &Path, self_signed_san: Option<&str>) {
    req_x509(dir, "ca", "/CN=pitr-test-ca", "1", &[]);
    req_x509(dir, "other-ca", "/CN=other", "1", &[]);
    if let Some(san) = self_signed_san {
        self_signed(dir, "server", san);
        return;
    }
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName = DNS:localhost\nbasicConstraints = CA:FALSE\n",
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", ext.display()));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
    give_pair(&dir.join("server.crt"), &dir.join("server.key"));
}

//! The shared suite (tests/common) against a real S3-compatible server: moto's server mode,
//! which this test starts on a free loopback port and stops when done.
//!
//! moto is found as `$PITR_MOTO_SERVER` or `moto_server` on PATH. Without it the test says it
//! skipped and passes, unless `PITR_REQUIRE_S3=1` (as CI sets), where it fails.
//! Install: `pip install 'moto[server]==5.2.1'` (see `.ci/s3-server-deps`).
//!
//! The store reads its S3 settings from the process's AWS_* variables; this is the only test
//! binary that sets or reads them, so other tests running at the same time are unaffected.

mod common;

use common::{encrypted_suite, shared_checks, suite};
use futures::TryStreamExt;
use object_store::ObjectStore;
use pitr_store::{Location, Repo, RepoOptions};
use pitr_testkit::s3::{aws_env, start_or_skip};

const BUCKET: &str = "pitr-test";
const PREFIX: &str = "some/prefix";

/// Point the store's S3 client at `endpoint`, dropping any other AWS_* setting of the
/// environment (a real profile, token or region must not leak into the test).
fn set_aws_env(endpoint: &str) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            std::env::remove_var(key);
        }
    }
    for (key, value) in aws_env(endpoint) {
        std::env::set_var(key, value);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_backend() {
    let Some(server) = start_or_skip("s3_backend") else {
        return;
    };
    server.create_bucket(BUCKET);
    set_aws_env(&server.endpoint());

    let url = format!("s3://{BUCKET}/{PREFIX}");
    let repo = suite(&url).await;
    shared_checks(&repo).await;
    // a fresh open sees the same configuration
    let reopened = Repo::open(&url, &RepoOptions::default()).await.unwrap();
    assert_eq!(reopened.config(), repo.config());

    // Everything the repository wrote is below its prefix, config.json at its top.
    let whole_bucket = Location::connect(&format!("s3://{BUCKET}"), false, &[]).unwrap();
    let keys: Vec<String> = whole_bucket
        .store
        .list(None)
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await
        .unwrap();
    assert!(keys.contains(&format!("{PREFIX}/config.json")), "{keys:?}");
    assert!(
        keys.iter().all(|k| k.starts_with(&format!("{PREFIX}/"))),
        "objects outside {PREFIX}/: {keys:?}"
    );
    // config.json, wal/x.json, and the chunks of the suite (at least 1 + 1 + 3)
    assert!(keys.len() >= 7, "{keys:?}");

    // and encrypted, on the same server
    let url = format!("s3://{BUCKET}/encrypted");
    let repo = encrypted_suite(&url).await;
    shared_checks(&repo).await;

    // with the bucket's server-side encryption asked for on top: every object is stored
    // with it (the server says so on a plain GET), and reads back
    let sse = RepoOptions {
        remote: vec![(
            "aws_server_side_encryption".to_string(),
            "AES256".to_string(),
        )],
        ..RepoOptions::default()
    };
    let url = format!("s3://{BUCKET}/sse");
    let (repo, _) = Repo::init(&url, pitr_store::RepoConfig::default(), &sse)
        .await
        .unwrap();
    let (c, _) = repo
        .put_chunk(bytes::Bytes::from(vec![9u8; 5000]))
        .await
        .unwrap();
    assert_eq!(repo.get_chunk(&c).await.unwrap().len(), 5000);
    let signer = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(BUCKET)
        .build()
        .unwrap();
    for key in ["config.json".to_string(), c.id.key()] {
        use object_store::signer::Signer;
        let url = signer
            .signed_url(
                object_store::signer::Method::GET,
                &object_store::path::Path::from(format!("sse/{key}")),
                std::time::Duration::from_secs(60),
            )
            .await
            .unwrap();
        let path = format!("{}?{}", url.path(), url.query().unwrap_or(""));
        let headers = raw_get_headers(&server.endpoint(), &path);
        assert!(
            headers
                .to_ascii_lowercase()
                .contains("x-amz-server-side-encryption: aes256"),
            "{key}: {headers}"
        );
    }
    drop(server);
}

/// The response headers of an unsigned GET (moto does not check signatures).
fn raw_get_headers(endpoint: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let addr = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split("\r\n\r\n").next().unwrap_or("").to_string()
}

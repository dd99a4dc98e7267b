//! The replication client against a server that is not to be trusted: a scripted fake
//! ([`pitr_testkit::fakepg`]) for what PostgreSQL never does — skipping SCRAM's final step,
//! asking for a cleartext password over plain TCP, asking for a method the user ruled out —
//! and a real server for the TLS fallback of sslmode=prefer and channel binding.

use pitr_protocol::{ConnConfig, Error, ReplicationClient, MAX_NOTICES_KEPT, MAX_SERVER_FIELD};
use pitr_testkit::cluster::{password_of, MD5_USER, NOHBA_USER, TLS_USER};
use pitr_testkit::fakepg::{Auth, FakePg, Script};
use pitr_testkit::PgCluster;

fn fake(auth: Auth) -> FakePg {
    FakePg::start(Script {
        auth,
        backup: None,
        notice_flood: None,
    })
}

/// Connect to the fake with `extra` settings (password "secret" unless overridden).
async fn connect(pg: &FakePg, extra: &str) -> Result<ReplicationClient, Error> {
    let conn = pg.conn(&format!("password=secret {extra}"));
    let config = ConnConfig::parse_with_env(&conn, |_| None)
        .unwrap_or_else(|e| panic!("parse {conn:?}: {e}"));
    ReplicationClient::connect(&config).await
}

async fn refused(pg: &FakePg, extra: &str) -> Error {
    match connect(pg, extra).await {
        Ok(c) => panic!(
            "connected with {extra:?} ({c:?}); the server saw {:?}",
            pg.seen()
        ),
        Err(e) => e,
    }
}

#[track_caller]
fn assert_mentions(err: &Error, words: &[&str]) {
    let text = err.to_string();
    for w in words {
        assert!(text.contains(w), "error {text:?} does not mention {w:?}");
    }
    assert!(
        !text.contains("secret"),
        "error {text:?} shows the password"
    );
}

/// A server (or a machine in the middle) that answers the client's SCRAM messages with
/// AuthenticationOk, never sending the final message that proves it knows the password.
#[tokio::test]
async fn authentication_ok_in_the_middle_of_scram_is_refused() {
    for auth in [
        Auth::ScramOkAfterStart(vec!["SCRAM-SHA-256".into()]),
        Auth::ScramOkBeforeFinal,
    ] {
        let pg = fake(auth.clone());
        let err = refused(&pg, "").await;
        assert!(matches!(err, Error::Protocol { .. }), "{auth:?}: {err:?}");
        assert_mentions(
            &err,
            &["AuthenticationOk before SCRAM's final message", "127.0.0.1"],
        );
        assert!(
            pg.seen().queries.is_empty(),
            "{auth:?}: the client went on to send commands"
        );
    }
}

/// A server that does not know the password cannot finish SCRAM: a forged signature in its
/// final message is refused, and nothing is sent after it.
#[tokio::test]
async fn a_forged_scram_server_signature_is_refused() {
    let pg = fake(Auth::ScramForgedFinal);
    let err = refused(&pg, "").await;
    assert!(err.is_auth_failure(), "{err:?}");
    assert_mentions(&err, &["signature"]);
    assert!(
        pg.seen().queries.is_empty(),
        "the client went on to send commands"
    );
}

/// A cleartext password request over plain TCP is not answered unless the user allows it
/// with require_auth=password.
#[tokio::test]
async fn cleartext_password_is_not_sent_over_plain_tcp() {
    let pg = fake(Auth::Cleartext);
    let err = refused(&pg, "").await;
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert!(err.is_auth_failure());
    assert_mentions(
        &err,
        &["clear text", "unencrypted", "require_auth=password"],
    );
    let seen = pg.seen();
    assert_eq!(seen.ssl_requests, 1, "sslmode=prefer asks for TLS first");
    assert!(seen.passwords.is_empty(), "password sent: {seen:?}");

    let pg = fake(Auth::Cleartext);
    let c = connect(&pg, "require_auth=password").await.unwrap();
    assert_eq!(c.authentication(), "password");
    assert_eq!(pg.seen().passwords, vec![b"secret\0".to_vec()]);
}

/// require_auth as libpq: a server asking for a method the list rules out — or for none
/// at all — is refused before the client answers.
#[tokio::test]
async fn require_auth_is_enforced() {
    let cases: &[(Auth, &str, &[&str])] = &[
        (
            Auth::Md5,
            "require_auth=scram-sha-256",
            &["require_auth=scram-sha-256", "md5"],
        ),
        (
            Auth::Trust,
            "require_auth=scram-sha-256",
            &["without authentication"],
        ),
        (Auth::Trust, "require_auth=!none", &["require_auth=!none"]),
        (
            Auth::Cleartext,
            "require_auth=!password sslmode=disable",
            &["password authentication"],
        ),
        (
            Auth::ScramOkBeforeFinal,
            "require_auth=md5,password",
            &["scram-sha-256"],
        ),
    ];
    for (auth, settings, words) in cases {
        let pg = fake(auth.clone());
        let err = refused(&pg, settings).await;
        assert!(matches!(err, Error::Auth { .. }), "{settings}: {err:?}");
        assert_mentions(&err, words);
        assert!(
            pg.seen().passwords.is_empty(),
            "{settings}: {:?}",
            pg.seen()
        );
    }
    for (auth, settings) in [
        (Auth::Md5, "require_auth=!password"),
        (Auth::Md5, "require_auth=md5,scram-sha-256"),
        (Auth::Trust, "require_auth=none"),
        (Auth::Trust, "require_auth=!md5"),
    ] {
        let pg = fake(auth);
        connect(&pg, settings)
            .await
            .unwrap_or_else(|e| panic!("{settings}: {e}"));
    }
}

/// channel_binding=require over a connection that cannot bind (no TLS) or with a method that
/// does not bind: nothing is sent, the connection fails naming the reason.
#[tokio::test]
async fn channel_binding_require_refuses_what_cannot_bind() {
    for (auth, words) in [
        (
            Auth::ScramOkAfterStart(vec!["SCRAM-SHA-256".into()]),
            &["channel_binding=require", "not TLS"][..],
        ),
        (Auth::Md5, &["channel_binding=require", "MD5"][..]),
        (
            Auth::Cleartext,
            &["channel_binding=require", "cleartext"][..],
        ),
        (Auth::Trust, &["channel_binding=require", "without"][..]),
    ] {
        let pg = fake(auth.clone());
        let err = refused(&pg, "channel_binding=require").await;
        assert!(matches!(err, Error::Auth { .. }), "{auth:?}: {err:?}");
        assert_mentions(&err, words);
        assert!(pg.seen().passwords.is_empty(), "{auth:?}: {:?}", pg.seen());
    }
}

/// sslmode=prefer against a real server: a refusal over TLS before any credentials (a
/// hostnossl entry) is retried without TLS, as libpq does; a failed authentication over TLS
/// is not, even where a plain-text connection would get in (here: trust without TLS).
/// channel_binding over TLS: require binds, disable does not, and require refuses MD5.
#[tokio::test]
async fn prefer_does_not_retry_a_failed_authentication_in_plain_text() {
    let pg = PgCluster::builder()
        .auth_roles()
        .hba(&format!(
            "local all postgres trust\n\
             local replication all trust\n\
             hostssl replication {TLS_USER} 127.0.0.1/32 scram-sha-256\n\
             hostnossl replication {TLS_USER} 127.0.0.1/32 trust\n\
             hostssl replication {NOHBA_USER} 127.0.0.1/32 reject\n\
             hostnossl replication {NOHBA_USER} 127.0.0.1/32 scram-sha-256\n\
             hostssl replication {MD5_USER} 127.0.0.1/32 md5\n"
        ))
        .tls()
        .init();
    let config = |extra: &str| {
        ConnConfig::parse_with_env(&pg.tcp_conn(extra), |_| None)
            .unwrap_or_else(|e| panic!("parse {extra:?}: {e}"))
    };
    let tls_user = |password: &str, extra: &str| {
        config(&format!("user={TLS_USER} password={password} {extra}"))
    };

    let c = pg.ok(
        ReplicationClient::connect(&tls_user(&password_of(TLS_USER), "sslmode=prefer")).await,
        "sslmode=prefer with the right password",
    );
    assert!(c.is_tls());
    assert_eq!(c.authentication(), "SCRAM-SHA-256-PLUS");

    let err = pg.err(
        ReplicationClient::connect(&tls_user("wrong", "sslmode=prefer")).await,
        "sslmode=prefer with a wrong password",
    );
    assert_eq!(err.code(), Some("28P01"), "{err}");

    // The hostssl line rejects NOHBA_USER before asking for anything: TLS is retried without.
    let c = pg.ok(
        ReplicationClient::connect(&config(&format!(
            "user={NOHBA_USER} password={} sslmode=prefer",
            password_of(NOHBA_USER)
        )))
        .await,
        "sslmode=prefer against a reject over TLS, scram-sha-256 without",
    );
    assert!(!c.is_tls());
    assert_eq!(c.authentication(), "SCRAM-SHA-256");

    let c = pg.ok(
        ReplicationClient::connect(&tls_user(
            &password_of(TLS_USER),
            "sslmode=require channel_binding=require",
        ))
        .await,
        "channel_binding=require over TLS",
    );
    assert_eq!(c.authentication(), "SCRAM-SHA-256-PLUS");
    let c = pg.ok(
        ReplicationClient::connect(&tls_user(
            &password_of(TLS_USER),
            "sslmode=require channel_binding=disable",
        ))
        .await,
        "channel_binding=disable over TLS",
    );
    assert_eq!(c.authentication(), "SCRAM-SHA-256");
    let err = pg.err(
        ReplicationClient::connect(&config(&format!(
            "user={MD5_USER} password={} sslmode=require channel_binding=require",
            password_of(MD5_USER)
        )))
        .await,
        "channel_binding=require against md5 over TLS",
    );
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains("MD5"), "{err}");
}

/// A server that floods the client with notices (400 × 1 MiB) cannot make it keep them all:
/// the client keeps the last [`MAX_NOTICES_KEPT`], each field cut to [`MAX_SERVER_FIELD`]
/// bytes, and says how many it dropped.
#[tokio::test]
async fn a_notice_flood_is_bounded() {
    let (count, size) = (400, 1 << 20);
    let pg = FakePg::start(Script {
        auth: Auth::Trust,
        backup: None,
        notice_flood: Some((count, size)),
    });
    let mut c = connect(&pg, "sslmode=disable").await.unwrap();
    // The connection still works after the flood.
    c.identify_system().await.unwrap();
    let notices = c.take_notices();
    assert!(
        notices.len() <= MAX_NOTICES_KEPT + 1,
        "{} notices kept",
        notices.len()
    );
    let kept: usize = notices.iter().map(|n| n.message.len()).sum();
    assert!(
        kept <= (MAX_NOTICES_KEPT + 1) * (MAX_SERVER_FIELD + 64),
        "{kept} bytes of notices kept"
    );
    let summary = &notices[0];
    assert!(
        summary
            .message
            .contains(&format!("{} earlier notices", count - MAX_NOTICES_KEPT)),
        "{summary}"
    );
    assert!(
        notices[1].message.contains("more bytes cut"),
        "{}",
        notices[1]
    );
    assert!(c.take_notices().is_empty(), "taken twice");
}

/// Once SCRAM has begun, a request for a cleartext password or an MD5 hash (what a machine in
/// the middle would ask for, to get something it can use), or for SASL again, is a protocol
/// violation, answered with nothing — even where the settings would allow that method on its own.
#[tokio::test]
async fn no_method_switch_after_scram_began() {
    for (code, settings, asked) in [
        (5, "sslmode=disable", "an MD5 password"),
        (
            3,
            "sslmode=disable require_auth=password,scram-sha-256",
            "a cleartext password",
        ),
        (10, "sslmode=disable", "SASL"),
    ] {
        let pg = fake(Auth::ScramThenSwitch(code));
        let err = refused(&pg, settings).await;
        assert!(matches!(err, Error::Protocol { .. }), "{settings}: {err:?}");
        assert_mentions(&err, &[asked, "scram-sha-256", "switch"]);
        let seen = pg.seen();
        assert_eq!(seen.sasl_mechanisms, ["SCRAM-SHA-256"], "{seen:?}");
        assert_eq!(
            seen.passwords.len(),
            1,
            "{settings}: only SCRAM's first message may go out: {seen:?}"
        );
    }
}

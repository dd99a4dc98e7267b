//! The replication client against real PostgreSQL servers: authentication methods, TLS modes,
//! IDENTIFY_SYSTEM, BASE_BACKUP and WAL streaming on a second connection, and server warnings.

use std::time::Duration;

use bytes::Bytes;
use pitr_pg::{LongPageHeader, Lsn, TimelineId};
use pitr_protocol::{
    BackupEvent, BaseBackupOptions, CheckpointMode, ConnConfig, Error, ReplicationClient, WalEvent,
};
use pitr_testkit::cluster::{password_of, MD5_USER, NOHBA_USER, NOREPL_USER, SCRAM_USER, TLS_USER};
use pitr_testkit::{PgCluster, PgClusterBuilder};

/// The cluster every test here starts from: the authentication test roles and their pg_hba
/// lines, a replication-ready server that logs connections and replication commands.
fn server() -> PgClusterBuilder {
    PgCluster::builder()
        .auth_roles()
        .conf("wal_level = replica")
        .conf("max_wal_senders = 10")
        .conf("log_connections = on")
        .conf("log_replication_commands = on")
}

/// Parse a connection string without looking at this process's environment.
fn config(s: &str) -> ConnConfig {
    ConnConfig::parse_with_env(s, |_| None).unwrap_or_else(|e| panic!("parse {s:?}: {e}"))
}

async fn connect(pg: &PgCluster, conn: &str) -> ReplicationClient {
    pg.ok(
        ReplicationClient::connect(&config(conn)).await,
        &format!("connect with {conn:?}"),
    )
}

/// BASE_BACKUP needs PostgreSQL 15: on an older server, check that it is refused clearly and
/// tell the caller to skip the rest.
async fn refused_as_too_old(pg: &PgCluster, client: &mut ReplicationClient) -> bool {
    let version = client.server_version_num().expect("server_version");
    if version >= 150000 {
        return false;
    }
    let err = pg.err(
        client.base_backup(&BaseBackupOptions::default()).await,
        "BASE_BACKUP on PostgreSQL < 15",
    );
    assert_eq!(
        err.to_string(),
        format!(
            "PostgreSQL {} is not supported by pitr backup: needs 15 or later",
            version / 10000
        )
    );
    eprintln!("PostgreSQL {version}: BASE_BACKUP refused as expected, skipping the rest");
    true
}

async fn connect_err(pg: &PgCluster, conn: &str) -> Error {
    pg.err(
        ReplicationClient::connect(&config(conn)).await,
        &format!("connect with {conn:?}"),
    )
}

#[tokio::test]
async fn trust_over_unix_socket_identifies_the_system() {
    let pg = server().init();
    let mut c = connect(
        &pg,
        &pg.socket_conn("application_name=pitr-test options='-c client_min_messages=log'"),
    )
    .await;
    assert!(!c.is_tls());
    assert_eq!(c.authentication(), "trust");
    let socket = format!("socket {}/", pg.socket_dir().display());
    assert!(c.target().starts_with(&socket), "{}", c.target());
    let version = c.server_version_num().expect("server_version reported");
    assert!(version >= 100000, "server_version_num {version}");
    assert_eq!(c.parameter("integer_datetimes"), Some("on"));
    assert_eq!(c.parameter("application_name"), Some("pitr-test"));

    let info = pg.ok(c.identify_system().await, "IDENTIFY_SYSTEM");
    assert_eq!(info.system_identifier, pg.controldata_system_identifier());
    assert_eq!(info.timeline, TimelineId(1));
    assert!(info.xlogpos > Lsn(0));
    assert_eq!(info.dbname, None);

    // With client_min_messages=log the server reports each replication command as a notice
    // (log_replication_commands is on): notices are collected for the caller.
    let notices = c.take_notices();
    assert!(
        notices
            .iter()
            .any(|n| n.message.contains("IDENTIFY_SYSTEM")),
        "{notices:?}"
    );
    assert!(c.take_notices().is_empty());

    assert_eq!(
        pg.ok(c.wal_segment_size().await, "SHOW wal_segment_size"),
        16 << 20
    );
    let sets = pg.ok(c.simple_query("SHOW wal_level").await, "SHOW wal_level");
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0].columns, ["wal_level"]);
    assert_eq!(sets[0].get(0, "wal_level"), Some("replica"));

    // A server error leaves the connection usable.
    let err = pg.err(
        c.timeline_history(TimelineId(1)).await,
        "TIMELINE_HISTORY 1",
    );
    assert_eq!(err.code(), Some("58P01"), "{err}");
    assert!(err.to_string().starts_with("server error 58P01: "), "{err}");

    // TIMELINE_HISTORY sends the file as it is in pg_wal.
    let history = "1\t0/3000000\tno recovery target specified\n";
    let path = pg.data_dir().join("pg_wal/00000002.history");
    std::fs::write(&path, history).unwrap();
    let (name, content) = pg.ok(
        c.timeline_history(TimelineId(2)).await,
        "TIMELINE_HISTORY 2",
    );
    assert_eq!(name, "00000002.history");
    assert_eq!(content, Bytes::from(history));
    std::fs::remove_file(&path).unwrap();

    assert_eq!(
        pg.ok(c.identify_system().await, "IDENTIFY_SYSTEM again")
            .system_identifier,
        info.system_identifier
    );
    pg.ok(c.close().await, "close");
}

#[tokio::test]
async fn password_authentication_over_tcp() {
    let pg = server().init();
    for user in [MD5_USER, SCRAM_USER] {
        let conn = pg.tcp_conn(&format!("user={user} password={}", password_of(user)));
        let mut c = connect(&pg, &conn).await;
        assert!(
            !c.is_tls(),
            "server has ssl=off, sslmode=prefer must fall back"
        );
        let expected = if user == MD5_USER {
            "md5"
        } else {
            "SCRAM-SHA-256"
        };
        assert_eq!(c.authentication(), expected);
        pg.ok(
            c.identify_system().await,
            &format!("IDENTIFY_SYSTEM as {user}"),
        );

        let wrong = pg.tcp_conn(&format!("user={user} password=wrong"));
        let err = connect_err(&pg, &wrong).await;
        assert_eq!(err.code(), Some("28P01"), "{err}");
        assert!(err.is_auth_failure());
        assert_eq!(
            err.to_string(),
            format!("server error 28P01: password authentication failed for user \"{user}\"")
        );
    }

    // The same as a URL, with the password percent-encoded.
    let url = format!(
        "postgresql://{SCRAM_USER}:{}@127.0.0.1:{}/?sslmode=disable",
        password_of(SCRAM_USER).replace('-', "%2D"),
        pg.port()
    );
    connect(&pg, &url).await;

    // A role without REPLICATION that pg_hba.conf lets in.
    let conn = pg.tcp_conn(&format!(
        "user={NOREPL_USER} password={}",
        password_of(NOREPL_USER)
    ));
    let err = connect_err(&pg, &conn).await;
    assert_eq!(err.code(), Some("42501"), "{err}");
    // A role no pg_hba.conf line admits for replication.
    let conn = pg.tcp_conn(&format!(
        "user={NOHBA_USER} password={}",
        password_of(NOHBA_USER)
    ));
    let err = connect_err(&pg, &conn).await;
    assert_eq!(err.code(), Some("28000"), "{err}");
    assert!(err.to_string().contains("no pg_hba.conf entry"), "{err}");

    // No password anywhere: the client gives up with its own error.
    let conn = pg.tcp_conn(&format!("user={SCRAM_USER} passfile=/nonexistent/pgpass"));
    let err = connect_err(&pg, &conn).await;
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert!(err.is_auth_failure());

    // The password file, whose database field matches "replication".
    let passfile = pg.base_dir().join("pgpass");
    std::fs::write(
        &passfile,
        format!(
            "127.0.0.1:{0}:postgres:{SCRAM_USER}:wrong\n127.0.0.1:{0}:replication:{SCRAM_USER}:{1}\n",
            pg.port(),
            password_of(SCRAM_USER).replace(':', "\\:")
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    connect(
        &pg,
        &pg.tcp_conn(&format!(
            "user={SCRAM_USER} passfile={}",
            passfile.display()
        )),
    )
    .await;

    // TLS required but the server has none.
    let conn = pg.tcp_conn(&format!(
        "user={MD5_USER} password={} sslmode=require",
        password_of(MD5_USER)
    ));
    let err = connect_err(&pg, &conn).await;
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
}

#[tokio::test]
async fn tls_modes() {
    let pg = server().tls().init();
    let ca = pg.base_dir().join("ca.crt");
    let other_ca = pg.base_dir().join("other-ca.crt");
    let scram = format!("user={SCRAM_USER} password={}", password_of(SCRAM_USER));

    for mode in ["require", "prefer"] {
        let mut c = connect(&pg, &pg.tcp_conn(&format!("{scram} sslmode={mode}"))).await;
        assert!(c.is_tls(), "sslmode={mode} against ssl=on");
        // The server offers channel binding over TLS, and we take it.
        assert_eq!(c.authentication(), "SCRAM-SHA-256-PLUS");
        pg.ok(c.identify_system().await, "IDENTIFY_SYSTEM over TLS");
    }
    let c = connect(&pg, &pg.tcp_conn(&format!("{scram} sslmode=disable"))).await;
    assert!(!c.is_tls());
    assert_eq!(c.authentication(), "SCRAM-SHA-256");
    let md5 = format!(
        "user={MD5_USER} password={} sslmode=require",
        password_of(MD5_USER)
    );
    assert!(connect(&pg, &pg.tcp_conn(&md5)).await.is_tls());

    // hostssl: the same role is refused without TLS.
    let tls_user = format!("user={TLS_USER} password={}", password_of(TLS_USER));
    assert!(
        connect(&pg, &pg.tcp_conn(&format!("{tls_user} sslmode=require")))
            .await
            .is_tls()
    );
    let err = connect_err(&pg, &pg.tcp_conn(&format!("{tls_user} sslmode=disable"))).await;
    assert_eq!(err.code(), Some("28000"), "{err}");

    // The server certificate names only DNS:localhost and is signed by ca.crt.
    let verify = |mode: &str, host: &str, root: &std::path::Path| {
        format!(
            "host={host} port={} {scram} sslmode={mode} sslrootcert={}",
            pg.port(),
            root.display()
        )
    };
    assert!(connect(&pg, &verify("verify-ca", "127.0.0.1", &ca))
        .await
        .is_tls());
    assert!(connect(&pg, &verify("verify-full", "localhost", &ca))
        .await
        .is_tls());
    let err = connect_err(&pg, &verify("verify-full", "127.0.0.1", &ca)).await;
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    let err = connect_err(&pg, &verify("verify-ca", "127.0.0.1", &other_ca)).await;
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    let err = connect_err(
        &pg,
        &verify("verify-ca", "127.0.0.1", &pg.base_dir().join("missing.crt")),
    )
    .await;
    assert!(err.to_string().contains("missing.crt"), "{err}");
}

/// A server whose certificate is self-signed (`openssl req -x509`, so marked `CA:TRUE`) and
/// given to the client as its own root, as PostgreSQL's documentation sets it up: libpq
/// accepts that for verify-ca and verify-full, and so must we, still checking the name.
#[tokio::test]
async fn self_signed_server_certificate_as_its_own_root() {
    let scram = format!("user={SCRAM_USER} password={}", password_of(SCRAM_USER));
    let verify = |pg: &PgCluster, mode: &str, host: &str, root: &std::path::Path| {
        format!(
            "host={host} port={} {scram} sslmode={mode} sslrootcert={}",
            pg.port(),
            root.display()
        )
    };

    let pg = server()
        .tls_self_signed("DNS:localhost,IP:127.0.0.1")
        .init();
    let own = pg.base_dir().join("server.crt");
    // A bundle with an unrelated certificate first also works.
    let bundle = pg.base_dir().join("bundle.crt");
    let read = |name: &str| std::fs::read(pg.base_dir().join(name)).expect("read a certificate");
    std::fs::write(&bundle, [read("other-ca.crt"), read("server.crt")].concat())
        .expect("write bundle.crt");
    for mode in ["verify-ca", "verify-full"] {
        for host in ["localhost", "127.0.0.1"] {
            for root in [&own, &bundle] {
                let mut c = connect(&pg, &verify(&pg, mode, host, root)).await;
                assert!(c.is_tls(), "{mode} {host} {}", root.display());
                assert_eq!(c.authentication(), "SCRAM-SHA-256-PLUS");
                pg.ok(c.identify_system().await, "IDENTIFY_SYSTEM over TLS");
            }
            // Roots that do not include the server certificate are still refused.
            for root in ["ca.crt", "other-ca.crt"] {
                let err =
                    connect_err(&pg, &verify(&pg, mode, host, &pg.base_dir().join(root))).await;
                assert!(
                    matches!(err, Error::Tls { .. }),
                    "{mode} {host} {root}: {err:?}"
                );
            }
        }
    }

    // The certificate names only DNS:otherhost: verify-ca takes it, verify-full does not.
    let pg = server().tls_self_signed("DNS:otherhost").init();
    let own = pg.base_dir().join("server.crt");
    for host in ["localhost", "127.0.0.1"] {
        assert!(connect(&pg, &verify(&pg, "verify-ca", host, &own))
            .await
            .is_tls());
        let err = connect_err(&pg, &verify(&pg, "verify-full", host, &own)).await;
        assert!(matches!(err, Error::Tls { .. }), "{host}: {err:?}");
        assert!(
            err.to_string().contains("not valid for name"),
            "{host}: {err}"
        );
    }
}

/// Names of the entries of a tar stream fed in arbitrary chunks, checking each header's
/// `ustar` magic, without holding more than one header in memory.
#[derive(Default)]
struct TarWalker {
    header: Vec<u8>,
    skip: u64,
    names: Vec<String>,
    bytes: u64,
}

impl TarWalker {
    fn feed(&mut self, mut data: &[u8]) {
        self.bytes += data.len() as u64;
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len() as u64);
                self.skip -= n;
                data = &data[n as usize..];
                continue;
            }
            let n = (512 - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.header.len() < 512 {
                continue;
            }
            let h = std::mem::take(&mut self.header);
            if h.iter().all(|&b| b == 0) {
                continue; // end-of-archive blocks
            }
            assert_eq!(
                &h[257..262],
                b"ustar",
                "tar header {} lacks magic",
                self.names.len()
            );
            let field = |r: std::ops::Range<usize>| {
                let f = &h[r];
                String::from_utf8_lossy(&f[..f.iter().position(|&b| b == 0).unwrap_or(f.len())])
                    .into_owned()
            };
            let size = u64::from_str_radix(field(124..136).trim(), 8).expect("octal size");
            let (prefix, name) = (field(345..500), field(0..100));
            let full = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            self.names.push(
                full.trim_start_matches("./")
                    .trim_end_matches('/')
                    .to_string(),
            );
            self.skip = size.div_ceil(512) * 512;
        }
    }
}

#[derive(Default)]
struct WalSummary {
    first_start: Option<Lsn>,
    first_page: Vec<u8>,
    received: Lsn,
    messages: usize,
}

impl WalSummary {
    fn take(&mut self, event: WalEvent) -> Result<(), String> {
        match event {
            WalEvent::XLogData { start, data } => {
                if self.first_start.is_none() {
                    self.first_start = Some(start);
                    self.first_page = data[..data.len().min(64)].to_vec();
                } else if start != self.received {
                    return Err(format!(
                        "XLogData at {start} does not follow the previous end {}",
                        self.received
                    ));
                }
                self.received = Lsn(start.0 + data.len() as u64);
                self.messages += 1;
                Ok(())
            }
            WalEvent::Keepalive { .. } => Ok(()),
            other => Err(format!("WAL stream ended early: {other:?}")),
        }
    }
}

#[tokio::test]
async fn base_backup_with_wal_streamed_on_a_second_connection() {
    let pg = server().init();
    pg.psql("CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 10000) g");
    let mut backup_client = connect(&pg, &pg.socket_conn("")).await;
    if refused_as_too_old(&pg, &mut backup_client).await {
        return;
    }
    let mut wal_client = connect(&pg, &pg.socket_conn("application_name=pitr-wal")).await;
    let system = pg.ok(wal_client.identify_system().await, "IDENTIFY_SYSTEM");
    let segment_size = u64::from(pg.ok(wal_client.wal_segment_size().await, "segment size"));
    let slot_lsn = pg.ok(
        wal_client
            .create_temporary_physical_slot("pitr_test_slot")
            .await,
        "create slot",
    );
    assert!(slot_lsn > Lsn(0), "slot reserved WAL at {slot_lsn}");

    let (start_tx, start_rx) = tokio::sync::oneshot::channel::<(Lsn, TimelineId)>();
    let (end_tx, mut end_rx) = tokio::sync::watch::channel::<Option<Lsn>>(None);
    let options = BaseBackupOptions {
        label: "pitr protocol test".into(),
        progress: true,
        checkpoint: CheckpointMode::Fast,
        wait: false,
        manifest: true,
        tablespace_map: true,
        max_rate: None,
        verify_checksums: true,
    };

    let backup = async {
        let mut stream = backup_client
            .base_backup(&options)
            .await
            .map_err(|e| format!("start BASE_BACKUP: {e}"))?;
        let mut shape: Vec<&'static str> = Vec::new();
        let mut tar = TarWalker::default();
        let mut manifest = Vec::new();
        let mut start_tx = Some(start_tx);
        let mut archives = Vec::new();
        let mut tablespaces = Vec::new();
        let mut progress = Vec::new();
        let (mut start, mut end) = (None, None);
        while let Some(event) = stream
            .next()
            .await
            .map_err(|e| format!("BASE_BACKUP stream: {e}"))?
        {
            let kind = match event {
                BackupEvent::Start { lsn, timeline } => {
                    start = Some((lsn, timeline));
                    if let Some(tx) = start_tx.take() {
                        let _ = tx.send((lsn, timeline));
                    }
                    "Start"
                }
                BackupEvent::Tablespaces(list) => {
                    tablespaces = list;
                    "Tablespaces"
                }
                BackupEvent::NewArchive {
                    name,
                    tablespace_location,
                } => {
                    archives.push((name, tablespace_location));
                    "NewArchive"
                }
                BackupEvent::Data(data) => {
                    tar.feed(&data);
                    "Data"
                }
                BackupEvent::Progress(done) => {
                    progress.push(done);
                    continue;
                }
                BackupEvent::ManifestStart => "ManifestStart",
                BackupEvent::ManifestData(data) => {
                    manifest.extend_from_slice(&data);
                    "ManifestData"
                }
                BackupEvent::End { lsn, timeline } => {
                    end = Some((lsn, timeline));
                    let _ = end_tx.send(Some(lsn));
                    "End"
                }
            };
            if shape.last() != Some(&kind) {
                shape.push(kind);
            }
        }
        let after = backup_client
            .identify_system()
            .await
            .map_err(|e| format!("IDENTIFY_SYSTEM after BASE_BACKUP: {e}"))?;
        Ok::<_, String>((
            shape,
            tar,
            manifest,
            archives,
            tablespaces,
            progress,
            start,
            end,
            after,
        ))
    };

    let wal = async {
        let (start, timeline) = start_rx
            .await
            .map_err(|_| "backup ended before its start position".to_string())?;
        let segment_start = Lsn(start.0 - start.0 % segment_size);
        let mut stream = wal_client
            .start_replication(Some("pitr_test_slot"), segment_start, timeline)
            .await
            .map_err(|e| format!("START_REPLICATION at {segment_start}: {e}"))?;
        let mut summary = WalSummary::default();
        // Until the backup's end is known, wait for WAL or for the end, whichever comes
        // first (WalStream::next is cancel-safe).
        let end = loop {
            if let Some(end) = *end_rx.borrow() {
                break end;
            }
            tokio::select! {
                event = stream.next() => {
                    let event = event.map_err(|e| format!("WAL stream: {e}"))?;
                    summary.take(event.ok_or("WAL stream ended")?)?;
                }
                changed = end_rx.changed() => {
                    changed.map_err(|_| "backup failed before its end".to_string())?;
                }
            }
        };
        while summary.received < end {
            let event = stream
                .next()
                .await
                .map_err(|e| format!("WAL stream: {e}"))?;
            summary.take(event.ok_or("WAL stream ended")?)?;
            stream
                .send_status(summary.received, summary.received, Lsn(0), false)
                .await
                .map_err(|e| format!("status update: {e}"))?;
        }
        stream
            .finish()
            .await
            .map_err(|e| format!("end WAL stream: {e}"))?;
        wal_client
            .identify_system()
            .await
            .map_err(|e| format!("IDENTIFY_SYSTEM after streaming: {e}"))?;
        Ok::<_, String>((segment_start, end, summary))
    };

    let (backup, wal) = pg.ok(
        tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(backup, wal) }).await,
        "backup and WAL streaming within 60 s",
    );
    let (shape, tar, manifest, archives, tablespaces, progress, start, end, after) =
        pg.ok(backup, "base backup");
    let (segment_start, wal_end, wal) = pg.ok(wal, "WAL streaming");

    assert_eq!(
        shape,
        [
            "Start",
            "Tablespaces",
            "NewArchive",
            "Data",
            "ManifestStart",
            "ManifestData",
            "End"
        ]
    );
    let (start_lsn, start_tli) = start.expect("start position");
    let (end_lsn, end_tli) = end.expect("end position");
    assert_eq!((start_tli, end_tli), (TimelineId(1), TimelineId(1)));
    assert!(
        slot_lsn <= start_lsn && start_lsn < end_lsn,
        "{slot_lsn} {start_lsn} {end_lsn}"
    );
    assert_eq!(after.system_identifier, system.system_identifier);

    assert_eq!(archives, [("base.tar".to_string(), None)]);
    assert_eq!(tablespaces.len(), 1, "{tablespaces:?}");
    assert_eq!(
        (tablespaces[0].oid, &tablespaces[0].location),
        (None, &None)
    );
    let size_kb = tablespaces[0].size_kb.expect("size estimate with PROGRESS");
    assert!(size_kb > 1000, "estimated {size_kb} kB");
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]) && progress.last() <= Some(&tar.bytes),
        "progress {progress:?} of {} bytes",
        tar.bytes
    );

    for name in [
        "backup_label",
        "tablespace_map",
        "global/pg_control",
        "PG_VERSION",
    ] {
        assert!(tar.names.iter().any(|n| n == name), "no {name} in base.tar");
    }
    assert_eq!(tar.skip, 0, "tar stream ends inside an entry");

    let manifest: serde_json::Value = serde_json::from_slice(&manifest).expect("manifest JSON");
    // Version 1 up to PostgreSQL 16, 2 (adds System-Identifier) from 17.
    let version = manifest["PostgreSQL-Backup-Manifest-Version"].as_u64();
    assert!(
        matches!(version, Some(1 | 2)),
        "manifest version {version:?}"
    );
    let ranges = manifest["WAL-Ranges"].as_array().expect("WAL-Ranges");
    assert_eq!(ranges[0]["Start-LSN"], start_lsn.to_string());
    assert_eq!(ranges[0]["End-LSN"], end_lsn.to_string());
    for file in manifest["Files"].as_array().expect("Files") {
        let path = file["Path"].as_str().expect("Path");
        assert!(
            tar.names.iter().any(|n| n == path),
            "{path} not in base.tar"
        );
        assert_eq!(file["Checksum-Algorithm"], "CRC32C");
    }

    assert_eq!(wal_end, end_lsn);
    assert_eq!(wal.first_start, Some(segment_start));
    assert!(
        wal.received >= end_lsn,
        "streamed to {} < {end_lsn}",
        wal.received
    );
    let header = LongPageHeader::parse(&wal.first_page).expect("segment starts with a long header");
    assert_eq!(header.page_address, segment_start);
    assert_eq!(header.system_identifier, system.system_identifier);
    assert_eq!(u64::from(header.segment_size), segment_size);
    assert!(wal.messages > 0);
}

#[tokio::test]
async fn checksum_failures_surface_as_warnings_then_an_error() {
    let pg = server().data_checksums().init();
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g; CHECKPOINT");
    let relpath = pg.psql("SELECT pg_relation_filepath('t')");
    // Flip bytes in the tuple area of the first page; the page header (and its LSN) stay.
    let file = pg.data_dir().join(&relpath);
    let mut bytes = std::fs::read(&file).unwrap();
    for b in &mut bytes[4000..4016] {
        *b ^= 0xff;
    }
    std::fs::write(&file, &bytes).unwrap();

    // A stream abandoned half way leaves its client unusable, with a clear error.
    let mut c = connect(&pg, &pg.socket_conn("")).await;
    if refused_as_too_old(&pg, &mut c).await {
        return;
    }
    {
        let mut stream = pg.ok(
            c.base_backup(&BaseBackupOptions::default()).await,
            "start BASE_BACKUP",
        );
        let first = pg.ok(stream.next().await, "first event");
        assert!(
            matches!(first, Some(BackupEvent::Start { .. })),
            "{first:?}"
        );
    }
    let err = pg.err(
        c.identify_system().await,
        "IDENTIFY_SYSTEM on an abandoned stream",
    );
    assert!(matches!(err, Error::Unusable { .. }), "{err:?}");
    drop(c);

    let mut c = connect(&pg, &pg.socket_conn("")).await;
    let options = BaseBackupOptions {
        checkpoint: CheckpointMode::Fast,
        wait: false,
        ..Default::default()
    };
    let mut stream = pg.ok(c.base_backup(&options).await, "start BASE_BACKUP");
    let mut data = 0usize;
    let err = loop {
        match stream.next().await {
            Ok(Some(BackupEvent::Data(d))) => data += d.len(),
            Ok(Some(BackupEvent::End { .. }) | None) => {
                panic!("backup of a corrupt cluster ended without an error")
            }
            Ok(Some(_)) => {}
            Err(e) => break e,
        }
    };
    assert!(data > 0);
    assert_eq!(err.code(), Some("XX001"), "{err}");
    let notices = stream.take_notices();
    assert!(
        notices.iter().any(|n| n.severity == "WARNING"
            && n.message.contains("checksum verification failed")
            && n.message.contains(&relpath)),
        "{notices:?}"
    );
    // The server's ERROR ends the command, not the connection.
    pg.ok(
        c.identify_system().await,
        "IDENTIFY_SYSTEM after a failed backup",
    );
}

#[tokio::test]
async fn wal_stream_answers_keepalives_and_reports_status() {
    // Long enough that a loaded machine's scheduling delays (hundreds of milliseconds) stay
    // far below the server's patience: it asks for a reply after half of it (2 s).
    let pg = server().conf("wal_sender_timeout = '4s'").init();
    let mut c = connect(&pg, &pg.socket_conn("application_name=pitr-keepalive")).await;
    let info = pg.ok(c.identify_system().await, "IDENTIFY_SYSTEM");
    let segment_size = u64::from(pg.ok(c.wal_segment_size().await, "segment size"));
    let start = Lsn(info.xlogpos.0 - info.xlogpos.0 % segment_size);
    let mut stream = pg.ok(
        c.start_replication(None, start, info.timeline).await,
        "START_REPLICATION",
    );

    // The server asks for a reply once half of wal_sender_timeout passes without one, and
    // drops the connection after all of it: a third request means the replies arrived.
    let mut received = start;
    let mut requests = 0;
    let phase = async {
        while requests < 3 {
            match stream.next().await? {
                Some(WalEvent::XLogData { start, data }) => {
                    received = Lsn(start.0 + data.len() as u64)
                }
                Some(WalEvent::Keepalive {
                    reply_requested: true,
                    ..
                }) => requests += 1,
                Some(WalEvent::Keepalive { .. }) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        Ok::<_, Error>(())
    };
    let result = tokio::time::timeout(Duration::from_secs(60), phase).await;
    pg.ok(
        pg.ok(result, "three keepalive requests"),
        "answer keepalives",
    );
    assert_eq!(stream.received(), received);

    // With status updates every 100 ms the server never needs to ask.
    stream.set_status_interval(Duration::from_millis(100));
    pg.ok(
        stream.send_status(received, received, Lsn(0), false).await,
        "status update",
    );
    // Longer than the 2 s after which the server would ask, had no update come.
    let quiet_until = tokio::time::Instant::now() + Duration::from_millis(5000);
    while let Ok(event) = tokio::time::timeout_at(quiet_until, stream.next()).await {
        match pg.ok(event, "WAL stream") {
            Some(WalEvent::Keepalive {
                reply_requested: true,
                ..
            }) => panic!("server asked for a reply despite periodic status updates"),
            Some(_) => {}
            None => panic!("WAL stream ended"),
        }
    }
    let reported = pg.psql(
        "SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'pitr-keepalive'",
    );
    assert_eq!(reported, stream.received().to_string());
    pg.ok(stream.finish().await, "finish");
    pg.ok(c.identify_system().await, "IDENTIFY_SYSTEM after streaming");
}

#[tokio::test]
async fn end_of_timeline_after_promotion() {
    let mut pg = server().init();
    let (old_pos, segment_size) = {
        let mut c = connect(&pg, &pg.socket_conn("")).await;
        let info = pg.ok(c.identify_system().await, "IDENTIFY_SYSTEM");
        let size = pg.ok(c.wal_segment_size().await, "segment size");
        (info.xlogpos, u64::from(size))
    };
    pg.promote_to_next_timeline();

    let mut c = connect(&pg, &pg.socket_conn("")).await;
    let info = pg.ok(c.identify_system().await, "IDENTIFY_SYSTEM after promotion");
    assert_eq!(info.timeline, TimelineId(2));
    let (name, content) = pg.ok(
        c.timeline_history(TimelineId(2)).await,
        "TIMELINE_HISTORY 2",
    );
    assert_eq!(name, "00000002.history");
    let content = String::from_utf8(content.to_vec()).unwrap();
    let switch: Lsn = content
        .split('\t')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no switch point in {content:?}"));
    assert!(switch >= old_pos, "{switch} < {old_pos}");

    // Timeline 1 from before the switch: its WAL, then the end of the timeline.
    let start = Lsn(old_pos.0 - old_pos.0 % segment_size);
    let mut stream = pg.ok(
        c.start_replication(None, start, TimelineId(1)).await,
        "START_REPLICATION on timeline 1",
    );
    let mut received = start;
    let end = loop {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.next()).await;
        match pg.ok(pg.ok(event, "end of timeline 1"), "WAL stream") {
            Some(WalEvent::XLogData { start, data }) => {
                assert_eq!(start, received);
                received = Lsn(start.0 + data.len() as u64);
            }
            Some(WalEvent::Keepalive { .. }) => {}
            Some(WalEvent::EndOfTimeline {
                next_tli,
                next_start,
            }) => break (next_tli, next_start),
            None => panic!("stream ended without EndOfTimeline"),
        }
    };
    assert_eq!(end, (TimelineId(2), switch));
    assert_eq!(received, switch);
    assert_eq!(pg.ok(stream.next().await, "after the end"), None);
    pg.ok(stream.finish().await, "finish an ended stream");

    // Starting exactly at the switch point: no WAL, just the end of the timeline.
    let mut stream = pg.ok(
        c.start_replication(None, switch, TimelineId(1)).await,
        "START_REPLICATION at the switch point",
    );
    assert_eq!(
        pg.ok(stream.next().await, "end of timeline at once"),
        Some(WalEvent::EndOfTimeline {
            next_tli: TimelineId(2),
            next_start: switch
        })
    );
    pg.ok(
        c.identify_system().await,
        "IDENTIFY_SYSTEM after the stream",
    );
}

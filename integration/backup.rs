//! `pitr backup` against real servers: a backup laid down by `pitr restore` starts and holds
//! exactly the data the source had, the server's own backup_manifest verifies it, tablespaces
//! come back (relocated), every supported way of authenticating works and every failure is one
//! clear line, unchanged data is not stored twice, a killed backup leaves no trace in `list`,
//! other PostgreSQL majors work too, and memory stays bounded.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pitr_testkit::cmd::{
    describe, output, output_with_max_rss, run, spawn, status_text, stderr_of, stdout_of,
};
use pitr_testkit::dirs::{list_dir, tree_size};
use pitr_testkit::programs::{pg_bindir, pg_command, pg_extra_bindirs};
use pitr_testkit::user::unprivileged;
use pitr_testkit::wal::lsn;
use pitr_testkit::{certs, s3, PgCluster, TestDir};

use crate::harness::{backup_id_of, error_lines, Pitr};

/// How long a restored server may take to reach the backup's consistent point and promote.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(120);

/// Peak resident set size allowed for `pitr backup` (issue 3), in KiB.
const MAX_RSS_KIB: u64 = 256 * 1024;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Row count and a digest of every row of `table` in `order` ("count:md5"): equal digests mean
/// equal contents, row for row.
#[track_caller]
fn table_digest(pg: &PgCluster, table: &str, order: &str) -> String {
    pg.psql(&format!(
        "select count(*) || ':' || coalesce(md5(string_agg(md5(t::text), '' order by {order})), '') \
         from {table} t"
    ))
}

/// Digests of the four pgbench tables.
#[track_caller]
fn pgbench_digest(pg: &PgCluster) -> Vec<(&'static str, String)> {
    [
        ("pgbench_accounts", "aid"),
        ("pgbench_branches", "bid"),
        ("pgbench_tellers", "tid"),
        ("pgbench_history", "tid, bid, aid, mtime, delta"),
    ]
    .into_iter()
    .map(|(table, order)| (table, table_digest(pg, table, order)))
    .collect()
}

fn system_identifier(pg: &PgCluster) -> String {
    pg.psql("select system_identifier from pg_control_system()")
}

/// `pitr restore --pgdata DEST --target-immediate --backup ID <extra>`, expecting success.
#[track_caller]
fn restore_immediate(pitr: &Pitr, id: &str, dest: &Path, extra: &[&str]) -> Output {
    let mut cmd = pitr.command(["restore", "--target-immediate", "--backup", id, "--pgdata"]);
    cmd.arg(dest).args(extra);
    run(&mut cmd)
}

/// Runs the Debian `pg_verifybackup <args> DIR` as the PostgreSQL user: `Err` with the
/// command and its output unless it exits 0.
fn verifybackup(dir: &Path, args: &[&str]) -> Result<(), String> {
    let mut cmd = pg_command("pg_verifybackup");
    cmd.args(args).arg(dir);
    let out = output(&mut cmd);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "pg_verifybackup rejects the restored data directory\n{}",
            describe(&cmd, &out)
        ))
    }
}

/// Starts PostgreSQL (from `bindir`, or the default one) on a restored data directory and waits
/// until it reached the backup's consistent point and promoted.
#[track_caller]
fn start_restored(data_dir: &Path, bindir: Option<&Path>) -> PgCluster {
    let mut builder = PgCluster::builder();
    if let Some(dir) = bindir {
        builder = builder.bindir(dir);
    }
    let pg = builder.start_existing(data_dir);
    pg.wait_promoted(PROMOTE_TIMEOUT);
    pg
}

/// `pitr backup` must fail with one stderr line containing each of `needles`
/// (case-insensitive), nothing on stdout, and no new backup listed.
#[track_caller]
fn assert_backup_fails(pitr: &Pitr, mut cmd: Command, needles: &[&str], what: &str) {
    let listed_before = pitr.list_json().len();
    let out = output(&mut cmd);
    assert!(
        !out.status.success(),
        "{what}: pitr backup should fail\n{}",
        describe(&cmd, &out)
    );
    // No password given to it, right or wrong, appears in what it printed.
    let mut passwords: Vec<String> = cmd
        .get_envs()
        .filter(|(k, _)| *k == "PGPASSWORD")
        .filter_map(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
        .collect();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if let Some((_, rest)) = arg.split_once("password=") {
            let value = match rest.strip_prefix('\'') {
                Some(quoted) => quoted.split('\'').next().unwrap_or(""),
                None => rest.split(' ').next().unwrap_or(""),
            };
            passwords.push(value.to_string());
        }
    }
    let printed = format!("{}{}", stdout_of(&out), stderr_of(&out));
    for pw in passwords.iter().filter(|p| !p.is_empty()) {
        assert!(
            !printed.contains(pw.as_str()),
            "{what}: the password {pw:?} appears in the output\n{}",
            describe(&cmd, &out)
        );
    }
    let lines = error_lines(&out);
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected exactly one error line on stderr\n{}",
        describe(&cmd, &out)
    );
    let line = lines[0].to_lowercase();
    for needle in needles {
        assert!(
            line.contains(&needle.to_lowercase()),
            "{what}: the error line should mention {needle:?}\n{}",
            describe(&cmd, &out)
        );
    }
    assert!(
        stdout_of(&out).trim().is_empty(),
        "{what}: a failed backup printed a backup ID\n{}",
        describe(&cmd, &out)
    );
    assert_eq!(
        pitr.list_json().len(),
        listed_before,
        "{what}: a failed backup is listed"
    );
}

/// A backup ID as `pitr backup` makes them: `20261125T183533Z`.
fn looks_like_backup_id(word: &str) -> bool {
    let b = word.as_bytes();
    b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
}

/// `pitr backup -d CONNSTR` with PGPASSWORD set to `password` (or unset).
fn backup_with(pitr: &Pitr, connstr: &str, password: Option<&str>) -> Command {
    let mut cmd = pitr.command(["backup", "--checkpoint", "fast", "-d", connstr]);
    cmd.env_remove("PGPASSWORD")
        .env_remove("PGSSLMODE")
        .env_remove("PGPASSFILE")
        .env("PGPASSFILE", "/nonexistent/pgpass");
    if let Some(pw) = password {
        cmd.env("PGPASSWORD", pw);
    }
    cmd
}

/// Runs a `pitr backup` command built by hand and returns the backup ID (see `backup_id_of`).
#[track_caller]
fn backup_ok(mut cmd: Command, pg: &PgCluster, what: &str) -> String {
    let out = pg.run_explained(&mut cmd, &format!("{what}: pitr backup failed"), 20);
    backup_id_of(&cmd, &out, pg)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// A pgbench cluster (loaded, then a little workload so balances and history are not the
/// initial ones) is backed up, listed with every field SPEC.md promises, laid down by
/// `pitr restore --target-immediate`, verified with the server's own backup_manifest by
/// pg_verifybackup (files and WAL), started, and holds exactly the rows the source held.
#[test]
fn backup_restores_pgbench_cluster_with_same_contents() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let pg = PgCluster::init();
    pg.pgbench(&["-i", "-q", "-s", "10"]);
    pg.pgbench(&["-n", "-c", "2", "-t", "250"]);
    // No writes from here to the backup: the restored cluster must hold exactly this.
    let digest = pgbench_digest(&pg);
    let sysid = system_identifier(&pg);
    let db_bytes: u64 = pg
        .psql("select sum(pg_database_size(oid)) from pg_database")
        .parse()
        .expect("a number");
    let lsn_before = lsn(&pg.psql("select pg_current_wal_lsn()"));
    let version = pg.psql("show server_version");

    let started = Instant::now();
    let id = pitr.backup(
        &pg,
        &["--checkpoint", "fast", "--label", "pgbench contents"],
    );
    let backup_secs = started.elapsed().as_secs_f64();
    let lsn_after = lsn(&pg.psql("select pg_current_wal_lsn()"));

    // Listed, with the fields of SPEC.md's contract.
    let list = pitr.list_json();
    assert_eq!(list.len(), 1, "one backup listed: {list:?}");
    let b = &list[0];
    assert_eq!(b["id"], id.as_str(), "list --json id vs the ID printed");
    assert_eq!(b["system_identifier"].to_string().trim_matches('"'), sysid);
    assert_eq!(b["timeline"], 1, "timeline: {b}");
    let pg_version = b["pg_version"].as_str().unwrap_or_default();
    assert!(
        pg_version.starts_with(&version),
        "pg_version {pg_version:?} should be the server's {version:?}"
    );
    let (start, stop) = (
        lsn(b["start_lsn"].as_str().unwrap_or_default()),
        lsn(b["stop_lsn"].as_str().unwrap_or_default()),
    );
    assert!(
        lsn_before <= start && start <= stop && stop <= lsn_after,
        "start_lsn/stop_lsn {}..{} should lie within the WAL written around the backup: {b}",
        b["start_lsn"],
        b["stop_lsn"]
    );
    let (wal_start, wal_stop) = (
        b["wal_start"].as_str().unwrap_or_default(),
        b["wal_stop"].as_str().unwrap_or_default(),
    );
    assert!(
        wal_start.len() == 24 && wal_stop.len() == 24 && wal_start <= wal_stop,
        "wal_start/wal_stop should be segment names, in order: {b}"
    );
    let (t0, t1) = (
        b["start_time"].as_str().unwrap_or_default(),
        b["stop_time"].as_str().unwrap_or_default(),
    );
    assert!(
        t0.ends_with('Z') && t1.ends_with('Z') && t0 <= t1 && t0.len() >= 20,
        "start_time/stop_time should be RFC 3339 UTC, in order: {b}"
    );
    let size = b["size_bytes"].as_u64().unwrap_or(0);
    assert!(
        size >= db_bytes,
        "size_bytes {size} is less than the databases alone ({db_bytes} bytes): {b}"
    );
    let stored = b["stored_bytes"].as_u64().unwrap_or(0);
    assert!(
        stored > 0 && stored < size,
        "stored_bytes {stored} of a first backup should be compressed data, >0 and below \
         size_bytes {size}: {b}"
    );
    assert!(b["files"].as_u64().unwrap_or(0) > 900, "files: {b}");
    eprintln!(
        "backup of pgbench -s 10 ({} MiB) took {backup_secs:.1} s, stored {} MiB",
        size >> 20,
        stored >> 20
    );

    // Laid down, it verifies against the server's own manifest: files, and (without -n) the
    // WAL the backup needs, parsed from pg_wal.
    let restored = dir.path().join("restored");
    restore_immediate(&pitr, &id, &restored, &[]);
    for name in ["backup_label", "backup_manifest", "recovery.signal"] {
        assert!(
            restored.join(name).is_file(),
            "restore did not write {name} into {}",
            restored.display()
        );
    }
    if let Err(e) = verifybackup(&restored, &[]) {
        panic!("{e}");
    }

    // It starts, reaches consistency, promotes, and holds exactly the source's data.
    let copy = start_restored(&restored, None);
    assert_eq!(
        system_identifier(&copy),
        sysid,
        "restored system identifier"
    );
    assert_eq!(
        pgbench_digest(&copy),
        digest,
        "restored pgbench tables (count:md5) differ from the source at backup time"
    );
    // And it is a working primary.
    copy.psql(
        "insert into pgbench_history (tid, bid, aid, delta, mtime) values (1, 1, 1, 1, now())",
    );
}

/// A tablespace outside the data directory is backed up and comes back relocated with
/// `--tablespace-map OID=DIR`: the original location is never touched, pg_verifybackup passes
/// (tablespace_map, rewritten on purpose, ignored), and the started server has the rows there.
#[test]
fn backup_restores_tablespace_to_new_location() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let mut pg = PgCluster::init();
    let ts_orig = dir.mkdir("ts_orig");
    pg.psql(&format!(
        "create tablespace pitr_ts location '{}'",
        ts_orig.display()
    ));
    pg.psql(
        "create table in_ts (i int primary key using index tablespace pitr_ts, s text) \
         tablespace pitr_ts; \
         insert into in_ts select g, md5(g::text) from generate_series(1, 20000) g; \
         create table in_default as select g from generate_series(1, 1000) g",
    );
    let oid = pg.psql("select oid from pg_tablespace where spcname = 'pitr_ts'");
    let digest = table_digest(&pg, "in_ts", "i");
    let digest_default = table_digest(&pg, "in_default", "g");

    let id = pitr.backup(&pg, &["--checkpoint", "fast"]);
    let listed = pitr.listed_backup(&id);
    assert_eq!(
        listed.get("tablespaces"),
        Some(&serde_json::json!(1)),
        "list --json tablespaces: {listed}"
    );

    // The source is gone and its tablespace moved away: the restore can neither read nor
    // write the original location without this test noticing.
    pg.stop("fast");
    let ts_moved = dir.path().join("ts_moved");
    fs::rename(&ts_orig, &ts_moved).expect("move the original tablespace away");

    let ts_new = dir.path().join("ts_new");
    let restored = dir.path().join("restored");
    // The recorded location is a proposal: without --tablespace-map (or
    // --tablespaces-as-recorded) the restore refuses, naming the tablespace and its location,
    // and creates nothing; verify shows the location.
    let out = pitr.output([
        "restore",
        "--target-immediate",
        "--backup",
        &id,
        "--pgdata",
        &restored.display().to_string(),
    ]);
    let err = stderr_of(&out);
    assert!(
        !out.status.success()
            && err.contains(&format!(
                "tablespace {oid} (recorded location \"{}\")",
                ts_orig.display()
            ))
            && err.contains("--tablespaces-as-recorded"),
        "restore without --tablespace-map: {}\n{err}",
        status_text(out.status)
    );
    assert!(!ts_orig.exists() && !restored.exists(), "{err}");
    let verified = pitr.output(["verify", "--backup", &id]);
    assert!(
        stdout_of(&verified).contains(&format!(
            "tablespace {oid}: recorded location \"{}\"",
            ts_orig.display()
        )),
        "verify: {}",
        stdout_of(&verified)
    );
    // Asked for, the recorded location is used: printed before anything is done, and shown
    // by the dry run.
    let dry = restore_immediate(
        &pitr,
        &id,
        &restored,
        &["--tablespaces-as-recorded", "--dry-run"],
    );
    let recorded = format!(
        "tablespace {oid}: {} (the backup's location)",
        ts_orig.display()
    );
    assert!(
        stdout_of(&dry).contains(&recorded)
            && stderr_of(&dry).contains(&format!(
                "tablespace {oid} goes to its recorded location {}",
                ts_orig.display()
            )),
        "restore --tablespaces-as-recorded --dry-run: {}{}",
        stdout_of(&dry),
        stderr_of(&dry)
    );
    assert!(!ts_orig.exists() && !restored.exists());
    let map = format!("{oid}={}", ts_new.display());
    restore_immediate(&pitr, &id, &restored, &["--tablespace-map", &map]);
    assert!(
        !ts_orig.exists(),
        "restore created {} although the tablespace was mapped to {}",
        ts_orig.display(),
        ts_new.display()
    );
    let map_file = restored.join("tablespace_map");
    let map_text = fs::read_to_string(&map_file)
        .unwrap_or_else(|e| panic!("read {}: {e}", map_file.display()));
    assert_eq!(
        map_text.trim_end(),
        format!("{oid} {}", ts_new.display()),
        "tablespace_map should point the tablespace at the new location"
    );
    let version_dirs: Vec<_> = list_dir(&ts_new)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("PG_"))
        })
        .collect();
    assert_eq!(
        version_dirs.len(),
        1,
        "{} should hold the tablespace's PG_<version> directory",
        ts_new.display()
    );

    // Checked before start (the server renames tablespace_map at startup), but reported
    // after the checks below so one run shows everything that is wrong.
    let verified = verifybackup(&restored, &["-i", "tablespace_map"]);

    let copy = start_restored(&restored, None);
    assert_eq!(
        copy.psql(&format!("select pg_tablespace_location({oid})")),
        ts_new.display().to_string(),
        "pg_tablespace_location after restore"
    );
    assert_eq!(
        table_digest(&copy, "in_ts", "i"),
        digest,
        "rows in the tablespace"
    );
    assert_eq!(
        table_digest(&copy, "in_default", "g"),
        digest_default,
        "rows in the default tablespace"
    );
    // The index lives in the tablespace too: use it.
    let want = copy.psql("select md5('777')");
    assert_eq!(
        copy.psql("set enable_seqscan = off; select s from in_ts where i = 777"),
        want,
        "index scan in the restored tablespace"
    );
    let link = restored.join("pg_tblspc").join(&oid);
    assert_eq!(
        fs::read_link(&link).ok(),
        Some(ts_new.clone()),
        "{} should link to the new location",
        link.display()
    );
    assert!(
        !ts_orig.exists(),
        "the server created the original location"
    );
    if let Err(e) = verified {
        panic!("{e}\n(tablespace_map: {map_text:?})");
    }
}

/// pg_hba.conf demanding md5 and SCRAM-SHA-256 over TCP (and trust): backups succeed with the
/// password from PGPASSWORD or from the connection string; a wrong password and a user without
/// REPLICATION each end in one clear error line and no backup.
#[test]
fn backup_authenticates_and_reports_auth_errors() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let pg = PgCluster::builder()
        .hba(
            "local all postgres trust\n\
             local replication postgres trust\n\
             local replication pitr_clear password\n\
             host replication pitr_trust 127.0.0.1/32 trust\n\
             host replication pitr_md5 127.0.0.1/32 md5\n\
             host replication pitr_scram 127.0.0.1/32 scram-sha-256\n\
             host replication pitr_norepl 127.0.0.1/32 scram-sha-256\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
        )
        .init();
    pg.psql(
        "set password_encryption = 'md5'; \
         create role pitr_md5 login replication password 'md5 secret'; \
         set password_encryption = 'scram-sha-256'; \
         create role pitr_scram login replication password 'scram secret'; \
         create role pitr_norepl login password 'norepl secret'; \
         create role pitr_trust login replication; \
         create role pitr_clear login replication password 'clear secret'",
    );
    // md5 in pg_hba.conf with a SCRAM verifier stored would silently do SCRAM instead.
    assert_eq!(
        pg.psql("select left(rolpassword, 3) from pg_authid where rolname = 'pitr_md5'"),
        "md5"
    );
    let port = pg.port();
    let tcp = |user: &str| format!("host=127.0.0.1 port={port} user={user} dbname=postgres");

    let mut ids = Vec::new();
    ids.push(backup_ok(
        backup_with(&pitr, &tcp("pitr_trust"), None),
        &pg,
        "trust",
    ));
    ids.push(backup_ok(
        backup_with(&pitr, &tcp("pitr_md5"), Some("md5 secret")),
        &pg,
        "md5, PGPASSWORD",
    ));
    ids.push(backup_ok(
        backup_with(
            &pitr,
            &format!("{} password='scram secret'", tcp("pitr_scram")),
            None,
        ),
        &pg,
        "SCRAM-SHA-256, password= in the connection string",
    ));
    // A cleartext password over a Unix socket is sent (as libpq does): nothing to sniff.
    ids.push(backup_ok(
        backup_with(
            &pitr,
            &format!(
                "host={} port={port} user=pitr_clear dbname=postgres",
                pg.socket_dir().display()
            ),
            Some("clear secret"),
        ),
        &pg,
        "cleartext password over a Unix socket",
    ));
    let listed: Vec<String> = pitr
        .list_json()
        .iter()
        .map(|b| b["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(listed, ids, "the four backups, oldest first");

    // Failures: one line, saying what went wrong, for whom, and at which server.
    assert_backup_fails(
        &pitr,
        backup_with(&pitr, &tcp("pitr_md5"), Some("wrong-pw-4711")),
        &["authentication", "pitr_md5"],
        "md5 user, wrong password",
    );
    assert_backup_fails(
        &pitr,
        backup_with(
            &pitr,
            &format!("{} password=wrong-pw-4712", tcp("pitr_scram")),
            None,
        ),
        &["authentication", "pitr_scram"],
        "SCRAM user, wrong password",
    );
    assert_backup_fails(
        &pitr,
        backup_with(&pitr, &tcp("pitr_norepl"), Some("norepl secret")),
        &["replication"],
        "user without REPLICATION",
    );
    // The same two failures must also say which server refused (as libpq's "connection to
    // server at ..., port ... failed" does): a timer's log line is read without the command.
    assert_backup_fails(
        &pitr,
        backup_with(&pitr, &tcp("pitr_scram"), Some("wrong-pw-4713")),
        &["authentication", &port.to_string()],
        "SCRAM user, wrong password: server named",
    );
    assert_backup_fails(
        &pitr,
        backup_with(&pitr, &tcp("pitr_norepl"), Some("norepl secret")),
        &["replication", &port.to_string()],
        "user without REPLICATION: server named",
    );
}

/// TLS: a server with ssl=on (self-signed certificate made here) and a `hostssl`-only entry
/// accepts a backup with sslmode=require and refuses one without TLS; sslmode=prefer falls
/// back to plain TCP where TLS is refused (a `hostnossl`-only entry); verify-full accepts the
/// server's certificate as its own root (as libpq does, the setup PostgreSQL's documentation
/// describes) and rejects a certificate it does not trust.
#[test]
fn backup_over_tls() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let tls = dir.mkdir("tls");
    let make_cert = |name: &str| certs::self_signed(&tls, name, "DNS:localhost,IP:127.0.0.1");
    let (crt, key) = make_cert("server");
    let (other_crt, _) = make_cert("other");
    let pg = PgCluster::builder()
        .conf("ssl = on")
        .conf(format!("ssl_cert_file = '{}'", crt.display()))
        .conf(format!("ssl_key_file = '{}'", key.display()))
        .hba(
            "local all postgres trust\n\
             local replication postgres trust\n\
             hostssl replication pitr_tls 127.0.0.1/32 scram-sha-256\n\
             hostssl replication pitr_tls_clear 127.0.0.1/32 password\n\
             hostnossl replication pitr_plain 127.0.0.1/32 scram-sha-256\n",
        )
        .init();
    pg.psql("create role pitr_tls login replication password 'tls secret'");
    pg.psql("create role pitr_tls_clear login replication password 'tls clear secret'");
    pg.psql("create role pitr_plain login replication password 'plain secret'");
    let conn_as = |user: &str, password: &str, mode: &str| {
        format!(
            "host=127.0.0.1 port={} user={user} password='{password}' sslmode={mode}",
            pg.port()
        )
    };
    let conn = |mode: &str| conn_as("pitr_tls", "tls secret", mode);
    let plain = |mode: &str| conn_as("pitr_plain", "plain secret", mode);

    let id = backup_ok(
        backup_with(&pitr, &conn("require"), None),
        &pg,
        "sslmode=require",
    );
    pitr.listed_backup(&id);
    // A cleartext password request inside TLS is answered (as libpq does).
    let id = backup_ok(
        backup_with(
            &pitr,
            &conn_as("pitr_tls_clear", "tls clear secret", "require"),
            None,
        ),
        &pg,
        "cleartext password over TLS",
    );
    pitr.listed_backup(&id);
    // Only TLS is allowed in: without it, the same user is refused.
    assert_backup_fails(
        &pitr,
        backup_with(&pitr, &conn("disable"), None),
        &["pitr_tls"],
        "sslmode=disable against a hostssl-only entry",
    );
    // sslmode=prefer, as libpq: the server takes TLS, then refuses this user over it
    // (hostnossl only); the client tries again without TLS and gets in. require does not.
    let id = backup_ok(
        backup_with(&pitr, &plain("prefer"), None),
        &pg,
        "sslmode=prefer against a hostnossl-only entry",
    );
    pitr.listed_backup(&id);
    assert_backup_fails(
        &pitr,
        backup_with(&pitr, &plain("require"), None),
        &["pitr_plain"],
        "sslmode=require against a hostnossl-only entry",
    );
    // A certificate the client does not trust is refused...
    assert_backup_fails(
        &pitr,
        backup_with(
            &pitr,
            &format!(
                "{} sslrootcert={}",
                conn("verify-full"),
                other_crt.display()
            ),
            None,
        ),
        &["certificate"],
        "sslmode=verify-full, server certificate not signed by sslrootcert",
    );
    // ...and the server's own self-signed certificate, given as root, is trusted.
    let id = backup_ok(
        backup_with(
            &pitr,
            &format!("{} sslrootcert={}", conn("verify-full"), crt.display()),
            None,
        ),
        &pg,
        "sslmode=verify-full with the self-signed server certificate as sslrootcert",
    );
    pitr.listed_backup(&id);
}

/// The second backup of an unchanged cluster stores < 1% of what the first stored (stored_bytes,
/// which must account for what chunks/ really grew by). A backup killed with SIGKILL part way
/// (chunks stored, a quarter or more sent) is not listed, leaves nothing but chunks, and the
/// next backup succeeds.
#[test]
fn backup_dedups_and_survives_sigkill() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let pg = PgCluster::init();
    pg.pgbench(&["-i", "-q", "-s", "10"]);

    let chunks_dir = pitr.repo().join("chunks");
    let first = pitr.backup(&pg, &["--checkpoint", "fast"]);
    let chunks_after_first = tree_size(&chunks_dir);
    let mut cmd = pitr.backup_cmd(&pg, &["--checkpoint", "fast"]);
    let out = output(&mut cmd);
    let second = backup_id_of(&cmd, &out, &pg);
    let chunks_after_second = tree_size(&chunks_dir);
    // Unchanged chunks are recognised by their fingerprint in the first backup's manifest,
    // without a SHA-256 pass: the log line says how many.
    let (recognised, total) = recognised_chunks(&stderr_of(&out)).unwrap_or_else(|| {
        panic!(
            "no recognised-chunks count in the log\n{}",
            describe(&cmd, &out)
        )
    });
    assert!(
        total > 100 && recognised * 10 >= total * 9,
        "the second backup of an unchanged cluster recognised only {recognised} of {total} \
         chunks by fingerprint\n{}",
        describe(&cmd, &out)
    );
    let (b1, b2) = (pitr.listed_backup(&first), pitr.listed_backup(&second));
    let stored1 = b1["stored_bytes"].as_u64().unwrap_or(0);
    let stored2 = b2["stored_bytes"].as_u64().unwrap_or(u64::MAX);
    eprintln!(
        "dedup: first backup stored {stored1} bytes ({chunks_after_first} in chunks/), second \
         {stored2} bytes ({} in chunks/, {recognised} of {total} chunks recognised by \
         fingerprint); size_bytes {} / {}",
        chunks_after_second - chunks_after_first,
        b1["size_bytes"],
        b2["size_bytes"]
    );
    assert!(
        stored1 > 1 << 20,
        "the first backup of a pgbench -s 10 cluster stored only {stored1} bytes: {b1}"
    );
    assert!(
        stored2.saturating_mul(100) < stored1,
        "the second backup of an unchanged cluster stored {stored2} bytes, not < 1% of the \
         first's {stored1}\nfirst: {b1}\nsecond: {b2}"
    );
    // stored_bytes must not understate what the chunk store really grew by.
    assert!(
        chunks_after_second - chunks_after_first <= stored2,
        "chunks/ grew by {} bytes during the second backup, which reports stored_bytes {stored2}",
        chunks_after_second - chunks_after_first
    );

    // After changes, a backup that takes most chunks by fingerprint still holds exactly the
    // server's bytes: pg_verifybackup checks every laid-down file against the server's manifest.
    pg.pgbench(&["-n", "-t", "300", "-c", "2"]);
    let third = pitr.backup(&pg, &["--checkpoint", "fast"]);
    let restored = dir.path().join("third");
    restore_immediate(&pitr, &third, &restored, &[]);
    if let Err(e) = verifybackup(&restored, &[]) {
        panic!("backup {third}, taken after changes on top of {second}: {e}");
    }

    // A slow backup (server-side rate limit) into a fresh repository, killed once it has
    // stored chunks and the server has sent a good part of the data.
    let fresh = Pitr::init(&dir, "fresh");
    let mut cmd = fresh.backup_cmd(&pg, &["--checkpoint", "fast", "--max-rate", "16384"]);
    let mut child = spawn(cmd.stdout(Stdio::null()).stderr(Stdio::null()));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().expect("poll the backup") {
            panic!(
                "the rate-limited backup ended ({}) before it could be killed half way",
                status_text(status)
            );
        }
        let percent: u64 = pg
            .psql(
                "select coalesce(max(backup_streamed * 100 / nullif(backup_total, 0)), 0) \
                 from pg_stat_progress_basebackup",
            )
            .parse()
            .unwrap_or(0);
        if percent >= 25 && fresh.chunk_files().len() >= 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backup made no progress: {percent}% sent, {} chunks stored\n\
             --- server log ---\n{}",
            fresh.chunk_files().len(),
            pg.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("SIGKILL the backup");
    let status = child.wait().expect("reap the killed backup");
    assert_eq!(status_text(status), "killed by signal 9");

    assert_eq!(
        fresh.list_json(),
        Vec::<serde_json::Value>::new(),
        "a killed backup must not be listed"
    );
    let mut list_cmd = fresh.command(["list"]);
    let out = run(&mut list_cmd);
    assert!(
        !stdout_of(&out).split_whitespace().any(looks_like_backup_id),
        "`list` shows the killed backup\n{}",
        describe(&list_cmd, &out)
    );
    // What the killed backup left: chunks only (no manifest, no half-written documents).
    let mut junk = Vec::new();
    for entry in list_dir(fresh.repo()) {
        let name = entry.file_name().map(|n| n.to_string_lossy().into_owned());
        match name.as_deref() {
            Some("chunks") => {
                let chunks: Vec<PathBuf> =
                    fresh.chunk_files().into_iter().map(|(_, p)| p).collect();
                for sub in list_dir(&entry) {
                    for f in list_dir(&sub) {
                        if chunks.contains(&f) {
                            continue;
                        }
                        // object_store's local backend stages `<key>#<n>` and renames it: a
                        // kill in between leaves one behind. Harmless (never read, the next
                        // put picks another name), but `expire` has to collect these too.
                        let staged = f
                            .file_name()
                            .and_then(|n| n.to_str())
                            .and_then(|n| n.split_once('#'))
                            .is_some_and(|(key, n)| {
                                key.len() == 64 && n.bytes().all(|b| b.is_ascii_digit())
                            });
                        if staged {
                            eprintln!("the killed backup left a staged chunk: {}", f.display());
                        } else {
                            junk.push(f);
                        }
                    }
                }
            }
            Some("config.json" | "cluster.json") => {}
            Some("backups") => junk.extend(list_dir(&entry)),
            // Its in-progress marker (docs/format.md, "Garbage collection"): `pitr expire`
            // on this host removes it, as its process is gone.
            Some("markers") => junk.extend(list_dir(&entry).into_iter().filter(|m| {
                !m.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("backup-") && n.ends_with(".json"))
            })),
            _ => junk.push(entry),
        }
    }

    let next = fresh.backup(&pg, &["--checkpoint", "fast"]);
    let listed = fresh.list_json();
    assert_eq!(
        listed.len(),
        1,
        "only the backup after the kill: {listed:?}"
    );
    assert_eq!(listed[0]["id"], next.as_str());
    // Checked last so that a failure here does not hide the ones above.
    assert!(
        junk.is_empty(),
        "a killed backup should leave at most unreferenced chunks (SPEC.md), found {junk:?}"
    );
    // ... which `expire` collects, with the killed backup's marker and staging files.
    let mut cmd = fresh.command(["expire", "--retain-full", "1", "--gc-grace", "0s"]);
    run(&mut cmd);
    let left: Vec<PathBuf> = list_dir(&fresh.repo().join("markers"));
    assert!(left.is_empty(), "markers left after expire: {left:?}");
    let staged: Vec<PathBuf> = list_dir(&fresh.repo().join("chunks"))
        .iter()
        .flat_map(|sub| list_dir(sub))
        .filter(|f| f.to_string_lossy().contains('#'))
        .collect();
    assert!(
        staged.is_empty(),
        "staging files left after expire: {staged:?}"
    );
    let mut cmd = fresh.command(["verify"]);
    run(&mut cmd);
    assert_eq!(fresh.list_json().len(), 1);
}

/// A repository on S3 (a moto server the test starts): a backup, changes, a second backup
/// that recognises the unchanged chunks through the object store (fingerprint + HEAD), and
/// a lay-down of the second from S3 that pg_verifybackup accepts byte for byte.
#[test]
fn backup_and_restore_through_s3() {
    let Some(server) = s3::start_or_skip("backup_and_restore_through_s3") else {
        return;
    };
    server.create_bucket("pitr-int");
    let dir = TestDir::new();
    let env = s3::aws_env(&server.endpoint());
    let pitr = Pitr::init_url(&dir, "s3://pitr-int/cluster", env);
    let pg = PgCluster::init();
    pg.pgbench(&["-i", "-q", "-s", "5"]);
    let first = pitr.backup(&pg, &["--checkpoint", "fast"]);
    pg.pgbench(&["-n", "-t", "200"]);
    let mut cmd = pitr.backup_cmd(&pg, &["--checkpoint", "fast"]);
    let out = output(&mut cmd);
    let second = backup_id_of(&cmd, &out, &pg);
    let (recognised, total) = recognised_chunks(&stderr_of(&out)).unwrap_or_else(|| {
        panic!(
            "no recognised-chunks count in the log\n{}",
            describe(&cmd, &out)
        )
    });
    assert!(
        recognised > 0 && recognised < total,
        "after a pgbench run, the second backup on S3 should recognise some but not all of \
         its {total} chunks, it recognised {recognised}\n{}",
        describe(&cmd, &out)
    );
    let listed: Vec<String> = pitr
        .list_json()
        .iter()
        .map(|b| b["id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(listed, [first, second.clone()]);

    let restored = dir.path().join("restored");
    restore_immediate(&pitr, &second, &restored, &[]);
    if let Err(e) = verifybackup(&restored, &[]) {
        panic!("backup {second} laid down from S3: {e}");
    }
}

/// `(recognised, total)` from the backup's "N of M chunks recognised" log line.
fn recognised_chunks(log: &str) -> Option<(u64, u64)> {
    let line = log.lines().find(|l| l.contains("chunks recognised"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let of = words.iter().position(|w| *w == "of")?;
    let n = words.get(of.checked_sub(1)?)?.parse().ok()?;
    let m = words.get(of + 1)?.parse().ok()?;
    Some((n, m))
}

/// PostgreSQL 16, 17, 18 (the binaries .ci/run installs, listed in PITR_EXTRA_PG_BINDIRS) as
/// well as the default one: backup, restore --target-immediate, start, same rows.
#[test]
fn backup_and_restore_on_every_postgres_version() {
    let mut bindirs = vec![pg_bindir().to_owned()];
    let extra = pg_extra_bindirs();
    if extra.is_empty() {
        pitr_testkit::require::skip_unless_required(
            "PITR_REQUIRE_EXTRA_PG",
            &format!(
                "PITR_EXTRA_PG_BINDIRS is not set: only {} is tested (.ci/run installs 16, 17, 18)",
                pg_bindir().display()
            ),
        );
    }
    bindirs.extend(extra);
    let mut failed = Vec::new();
    for bindir in &bindirs {
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| backup_restore_roundtrip(bindir)));
        match result {
            Ok(version) => eprintln!(
                "PostgreSQL {version} ({}): backup, restore and start in {:.1} s",
                bindir.display(),
                started.elapsed().as_secs_f64()
            ),
            Err(_) => failed.push(bindir.display().to_string()),
        }
    }
    assert!(
        failed.is_empty(),
        "backup/restore failed with the PostgreSQL in {failed:?} (see the panic messages above)"
    );
}

/// One version's round trip; returns the server version.
fn backup_restore_roundtrip(bindir: &Path) -> String {
    let mut cmd = unprivileged(bindir.join("postgres"));
    cmd.arg("--version");
    let out = run(&mut cmd);
    // "postgres (PostgreSQL) 18.4"
    let major: u32 = stdout_of(&out)
        .split_whitespace()
        .last()
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no version in {}", describe(&cmd, &out)));

    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let pg = PgCluster::builder().bindir(bindir).init();
    assert_eq!(
        pg.server_version_num() / 10000,
        major,
        "the server started from {} is not PostgreSQL {major}",
        bindir.display()
    );
    let version = pg.psql("show server_version");
    pg.psql(
        "create table t (g int primary key, s text); \
         insert into t select g, md5(g::text) from generate_series(1, 50000) g; \
         delete from t where g % 7 = 0; \
         update t set s = 'changed' where g % 11 = 0",
    );
    let digest = table_digest(&pg, "t", "g");
    let sysid = system_identifier(&pg);

    let id = pitr.backup(&pg, &["--checkpoint", "fast"]);
    let listed = pitr.listed_backup(&id);
    let pg_version = listed["pg_version"].as_str().unwrap_or_default();
    assert!(
        pg_version.starts_with(&version),
        "PostgreSQL {version}: list --json pg_version {pg_version:?}"
    );

    let restored = dir.path().join("restored");
    restore_immediate(&pitr, &id, &restored, &[]);
    let copy = start_restored(&restored, Some(bindir));
    assert_eq!(
        copy.server_version_num() / 10000,
        major,
        "restored server version"
    );
    assert_eq!(
        system_identifier(&copy),
        sysid,
        "PostgreSQL {version}: system identifier"
    );
    assert_eq!(
        table_digest(&copy, "t", "g"),
        digest,
        "PostgreSQL {version}: restored rows (count:md5)"
    );
    version
}

/// Peak RSS of `pitr backup` of a pgbench cluster of `scale` stays under 256 MiB.
fn backup_peak_rss(scale: u32) {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let pg = PgCluster::init();
    pg.pgbench(&["-i", "-q", "-s", &scale.to_string()]);
    let mut cmd = pitr.backup_cmd(&pg, &["--checkpoint", "fast"]);
    let started = Instant::now();
    let (out, max_rss_kib) = output_with_max_rss(&mut cmd);
    let secs = started.elapsed().as_secs_f64();
    let id = backup_id_of(&cmd, &out, &pg);
    let size = pitr.listed_backup(&id)["size_bytes"].as_u64().unwrap_or(0);
    eprintln!(
        "pitr backup of pgbench -s {scale}: {} MiB in {secs:.1} s, peak RSS {} MiB ({max_rss_kib} KiB)",
        size >> 20,
        max_rss_kib >> 10
    );
    // The bound means something only if the backup was much larger than it.
    assert!(
        size > (u64::from(scale) * 14) << 20,
        "pgbench -s {scale} backed up only {size} bytes"
    );
    assert!(
        max_rss_kib < MAX_RSS_KIB,
        "pitr backup of {} MiB peaked at {} MiB resident, over the {} MiB bound",
        size >> 20,
        max_rss_kib >> 10,
        MAX_RSS_KIB >> 10
    );
}

/// Peak RSS under 256 MiB for a ~300 MB cluster (always run).
#[test]
fn backup_peak_rss_bounded() {
    backup_peak_rss(20);
}

/// Peak RSS under 256 MiB for a ~1.5 GB cluster (issue 3's figure; slow: pgbench -i -s 100).
#[test]
#[ignore = "slow: a 1.5 GB pgbench cluster; run with --ignored"]
fn backup_peak_rss_bounded_1_5_gb() {
    backup_peak_rss(100);
}

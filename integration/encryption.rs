//! Encrypted repositories (`pitr init --encryption`) end to end, against real PostgreSQL (and
//! moto for S3): nothing the cluster wrote is readable in the repository's bytes and chunk
//! names are not the SHA-256 of their content (an unencrypted repository fed the same data is
//! the control); a missing or wrong secret is one clear error, and restore-wal stops recovery
//! (exit > 125) without creating DEST; a flipped byte or two swapped objects are named by
//! `pitr verify`; key rotation (add a passphrase, remove the old one) locks the old
//! passphrase out and keeps the repository restorable; and point-in-time recovery to a restore
//! point (local) and to a time (S3) with restore_command carrying the secret by itself.
//!
//! Argon2id is made cheap (`--kdf-memory 8 --kdf-iterations 1`) and archive_command opens the
//! repository with a key file (`pitr key add --key-file`), which needs no Argon2id at all.

use std::collections::BTreeSet;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use pitr_testkit::cluster::psql_command;
use pitr_testkit::cmd::{describe, output, run, stdout_of};
use pitr_testkit::dirs::list_dir;
use pitr_testkit::s3;
use pitr_testkit::user::{chmod, give_to_pg};
use pitr_testkit::{PgCluster, TestDir};
use sha2::{Digest, Sha256};

use crate::harness::{error_lines, Pitr, ARCHIVE_TIMEOUT};
use crate::restored::restore_started;

/// Cheap Argon2id for passphrase slots: the tests are about the repository, not the KDF.
const KDF: [&str; 4] = ["--kdf-memory", "8", "--kdf-iterations", "1"];

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A random 64-bit number (std's per-process random hasher keys), as 16 hex digits.
fn random_hex() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{:016x}", h.finish())
}

/// `text` in `<dir>/<name>`, mode 0600, owned by the PostgreSQL user (pitr runs as it).
fn secret_file(dir: &TestDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    chmod(&path, 0o600);
    give_to_pg(&path);
    path
}

/// `pitr` on `repo` (a directory or URL) with `secret` as PITR_PASSPHRASE_FILE, plus `env`.
fn pitr_with_secret(
    dir: &TestDir,
    repo: impl Into<PathBuf>,
    secret: &Path,
    mut env: Vec<(&'static str, String)>,
) -> Pitr {
    env.push(("PITR_PASSPHRASE_FILE", secret.display().to_string()));
    Pitr::with_env(dir, repo, env)
}

/// Runs `cmd`, panicking unless it exits 0; returns trimmed stdout.
#[track_caller]
fn run_stdout(cmd: &mut Command) -> String {
    stdout_of(&run(cmd)).trim().to_owned()
}

/// An encrypted repository `<dir>/<name>` made with the passphrase in `pass` (its first slot
/// labelled "first"), and a key file `<dir>/<name>.key` added to it. Returns the `pitr` that
/// opens it with the passphrase, the one that opens it with the key file, and the key file.
fn init_encrypted_local(dir: &TestDir, name: &str, pass: &Path) -> (Pitr, Pitr, PathBuf) {
    let repo = dir.path().join(name);
    let by_pass = pitr_with_secret(dir, &repo, pass, Vec::new());
    by_pass.run(
        ["init", "--encryption", "--key-label", "first"]
            .into_iter()
            .chain(KDF),
    );
    let key = dir.path().join(format!("{name}.key"));
    add_key_file(&by_pass, &key);
    let by_key = pitr_with_secret(dir, &repo, &key, Vec::new());
    (by_pass, by_key, key)
}

/// `pitr key add --key-file KEY`: the new slot's ID; the key file's text has its form.
#[track_caller]
fn add_key_file(pitr: &Pitr, key: &Path) -> String {
    let mut cmd = pitr.command(["key", "add", "--label", "archiver", "--key-file"]);
    cmd.arg(key);
    let slot = run_stdout(&mut cmd);
    let text = fs::read_to_string(key).unwrap_or_else(|e| panic!("{}: {e}", key.display()));
    assert!(
        text.starts_with(&format!("pitr-key-v1:{slot}:")),
        "key file for slot {slot}: {text:?}"
    );
    slot
}

/// archive_command archiving into `pitr`'s repository with `secret` as --passphrase-file.
fn archive_command_with(pitr: &Pitr, secret: &Path) -> String {
    format!(
        "{} --passphrase-file {} --repo {} archive-wal %p %f",
        pitr.bin().display(),
        secret.display(),
        pitr.repo().display()
    )
}

/// Completes the current WAL segment and waits until the archiver stored it.
#[track_caller]
fn switch_and_archive(pg: &PgCluster) -> String {
    let seg = pg.switch_wal();
    pg.wait_archived(&seg, ARCHIVE_TIMEOUT);
    seg
}

/// Every file under `root`, recursively, sorted.
fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for p in list_dir(&dir) {
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Where `needle` occurs in the repository at `root`: each file whose bytes hold it (as the
/// path relative to `root`), and each chunk that, decoded as an unencrypted pitr chunk
/// (zstd), holds it (as "decoded <path>"). The decoding matters: a zstd-compressed chunk does
/// not show its content byte for byte.
fn scan(root: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for path in files_under(root) {
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if contains(&bytes, needle) {
            hits.push(rel.clone());
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Ok(id) = name.parse::<pitr_store::ChunkId>() {
            if let Ok(plain) = pitr_store::decode_chunk(&id, &bytes) {
                if contains(&plain, needle) {
                    hits.push(format!("decoded {rel}"));
                }
            }
        }
    }
    hits
}

/// Hex SHA-256 of `data`.
fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The chunk file names (hex IDs) of the repository at `root`.
fn chunk_names(root: &Path) -> BTreeSet<String> {
    files_under(&root.join("chunks"))
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect()
}

/// `cmd` exits 1 with exactly one line on stderr holding every one of `words`.
#[track_caller]
fn assert_one_error_line(cmd: &mut Command, words: &[&str]) {
    let out = output(cmd);
    let what = describe(cmd, &out);
    assert_eq!(out.status.code(), Some(1), "exit status\n{what}");
    let lines = error_lines(&out);
    assert_eq!(lines.len(), 1, "one error line\n{what}");
    for w in words {
        assert!(
            lines[0].contains(w),
            "the error line should say {w:?}\n{what}"
        );
    }
    assert!(
        stdout_of(&out).trim().is_empty(),
        "nothing on stdout\n{what}"
    );
}

/// `pitr restore-wal NAME DEST` (as `cmd`) stops recovery: exit status above 125, and DEST
/// not created. Returns what it said.
#[track_caller]
fn assert_restore_wal_fatal(mut cmd: Command, dest: &Path) -> String {
    let out = output(&mut cmd);
    let what = describe(&cmd, &out);
    let code = out.status.code();
    assert!(
        code.is_some_and(|c| c > 125),
        "restore-wal must exit above 125 (stop recovery), not {code:?}\n{what}"
    );
    assert!(
        !dest.exists(),
        "restore-wal failed but created {}\n{what}",
        dest.display()
    );
    what
}

/// Rows of `t (i int)` on the server at `sock`/`port`, comma-separated in order.
#[track_caller]
fn rows_at(sock: &Path, port: u16) -> String {
    let mut cmd = psql_command(
        sock,
        port,
        "select coalesce(string_agg(i::text, ',' order by i), '') from t",
    );
    run_stdout(&mut cmd)
}

/// The restore_command line `pitr restore` wrote into `pgdata`'s postgresql.auto.conf.
#[track_caller]
fn restore_command_in(pgdata: &Path) -> String {
    let conf = fs::read_to_string(pgdata.join("postgresql.auto.conf"))
        .unwrap_or_else(|e| panic!("{}/postgresql.auto.conf: {e}", pgdata.display()));
    conf.lines()
        .rev()
        .find(|l| l.trim_start().starts_with("restore_command"))
        .unwrap_or_else(|| panic!("no restore_command in postgresql.auto.conf:\n{conf}"))
        .to_owned()
}

/// An encrypted local repository that a cluster archives into (with a key file), holding one
/// backup and, after it, three more archived segments.
struct Archived {
    dir: TestDir,
    /// Opens the repository with the key file.
    pitr: Pitr,
    /// The passphrase file of the repository's first slot.
    pass: PathBuf,
    pg: PgCluster,
    backup: String,
    segments: Vec<String>,
}

fn archived_encrypted() -> Archived {
    let dir = TestDir::new();
    let pass = secret_file(&dir, "pass", "correct horse battery staple\n");
    let (_, pitr, key) = init_encrypted_local(&dir, "repo", &pass);
    let pg = PgCluster::builder()
        .archive_command(&archive_command_with(&pitr, &key))
        .init();
    pg.psql("create table t (i int); insert into t values (1)");
    let backup = pitr.backup(&pg, &["--checkpoint", "fast"]);
    let segments = (0..3).map(|_| switch_and_archive(&pg)).collect();
    Archived {
        dir,
        pitr,
        pass,
        pg,
        backup,
        segments,
    }
}

/// `pitr verify` on `pitr`'s repository: (exit 0, stdout lines, description).
fn verify(pitr: &Pitr) -> (bool, Vec<String>, String) {
    let mut cmd = pitr.command(["verify"]);
    let out = output(&mut cmd);
    let lines = stdout_of(&out).lines().map(str::to_owned).collect();
    (out.status.success(), lines, describe(&cmd, &out))
}

/// Writes `bytes` over the existing file `path` (root may; the owner and mode stay).
fn overwrite(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The file with one byte (in the middle of it) flipped.
fn flip_byte(path: &Path) {
    let mut bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    overwrite(path, &bytes);
}

/// Swaps the contents of two files.
fn swap(a: &Path, b: &Path) {
    let (x, y) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    overwrite(a, &y);
    overwrite(b, &x);
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// One cluster archives every segment into two repositories, an unencrypted one (the control)
/// and an encrypted one, and is backed up into both. Needles: a random canary string (a table
/// row, so in a heap page of the backup and in the archived WAL, and the content of a file put
/// in PGDATA), that file's own random name (the control's backup manifest lists it), and the
/// cluster's system identifier in decimal (the control's cluster.json and manifests hold it).
/// The control must show every needle (else the scan proves nothing); the encrypted repository
/// must show none, in its raw bytes or in anything that decodes as a pitr chunk, and every
/// object but config.json and the key slots must be sealed. Chunk names: the control's
/// PG_VERSION and canary-file chunks are named by their SHA-256, the encrypted repository has
/// no chunk of either name, and the two repositories share no chunk name at all although they
/// hold the same WAL.
#[test]
fn encrypted_repository_holds_no_plaintext() {
    let dir = TestDir::new();
    let plain = Pitr::init(&dir, "plain");
    let pass = secret_file(&dir, "pass", "no plaintext please\n");
    let (_, enc, key) = init_encrypted_local(&dir, "enc", &pass);
    let info = enc.info_json();
    assert_eq!(info["encrypted"], true, "{info}");
    assert_eq!(info["cipher"], "aes-256-gcm-hkdf-sha256", "{info}");
    assert_eq!(info["format_version"], 2, "{info}");
    assert_eq!(plain.info_json()["encrypted"], false);

    let both = format!(
        "{} && {}",
        plain.archive_command(),
        archive_command_with(&enc, &key)
    );
    let pg = PgCluster::builder().archive_command(&both).init();
    let tag = random_hex();
    let canary = format!("PITR-ENC-CANARY-{tag}");
    pg.psql(&format!(
        "create table secret_t (s text); insert into secret_t values ('{canary}')"
    ));
    let file_name = format!("pitr_canary_{tag}.txt");
    let file_text = format!("{canary}: a file that only the backup carries\n");
    let canary_file = pg.data_dir().join(&file_name);
    fs::write(&canary_file, &file_text).unwrap();
    give_to_pg(&canary_file);
    let sysid = pg.controldata_system_identifier().to_string();
    let pg_version = fs::read(pg.data_dir().join("PG_VERSION")).unwrap();

    let plain_backup = plain.backup(&pg, &["--checkpoint", "fast"]);
    let enc_backup = enc.backup(&pg, &["--checkpoint", "fast"]);
    let seg = switch_and_archive(&pg);
    assert_eq!(
        enc.list_json().len(),
        1,
        "the encrypted repository lists its backup"
    );
    assert!(
        enc.archived_names().contains(&seg) && plain.archived_names().contains(&seg),
        "{seg} archived into both"
    );

    // The control: every needle is there, the canary also inside archived WAL.
    let needles: [(&str, &[u8]); 3] = [
        ("the canary", canary.as_bytes()),
        ("the canary file's name", file_name.as_bytes()),
        ("the system identifier", sysid.as_bytes()),
    ];
    for (what, needle) in needles {
        let hits = scan(plain.repo(), needle);
        assert!(
            !hits.is_empty(),
            "the scan should find {what} in the unencrypted repository, or it proves nothing"
        );
    }
    let manifest = format!("backups/{plain_backup}.json");
    assert!(
        scan(plain.repo(), file_name.as_bytes()).contains(&manifest),
        "the control's manifest {manifest} lists the canary file"
    );
    let wal_chunks: BTreeSet<String> = plain
        .archived_names()
        .iter()
        .flat_map(|n| plain.wal_ref_chunks(n))
        .map(|(id, _)| id)
        .collect();
    let canary_hits = scan(plain.repo(), canary.as_bytes());
    assert!(
        canary_hits.iter().any(|h| wal_chunks
            .iter()
            .any(|id| h.starts_with("decoded ") && h.ends_with(id.as_str()))),
        "the canary row should be in an archived WAL chunk of the control: {canary_hits:?}"
    );
    let in_backup = canary_hits
        .iter()
        .filter(|h| {
            h.starts_with("decoded ") && !wal_chunks.iter().any(|id| h.ends_with(id.as_str()))
        })
        .count();
    assert!(
        in_backup >= 2,
        "the canary should be in two backup chunks of the control (the table's heap file and \
         the canary file): {canary_hits:?}"
    );
    assert!(
        plain.chunk_path(&sha256_hex(&pg_version)).exists()
            && plain.chunk_path(&sha256_hex(file_text.as_bytes())).exists(),
        "the control names the PG_VERSION and canary-file chunks by their SHA-256"
    );

    // The encrypted repository: none of it.
    for (what, needle) in needles {
        let hits = scan(enc.repo(), needle);
        assert!(
            hits.is_empty(),
            "{what} is readable in the encrypted repository: {hits:?}"
        );
    }
    let files = files_under(enc.repo());
    assert!(
        files.len() > 10,
        "the encrypted repository holds its objects: {files:?}"
    );
    for path in &files {
        let rel = path.strip_prefix(enc.repo()).unwrap().display().to_string();
        if rel == "config.json" || (rel.starts_with("keys/") && rel.ends_with(".json")) {
            continue;
        }
        let bytes = fs::read(path).unwrap();
        assert!(
            bytes.starts_with(b"PTRE"),
            "{rel} in the encrypted repository is not sealed (starts {:?})",
            String::from_utf8_lossy(&bytes[..bytes.len().min(8)])
        );
    }
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(enc.repo().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["format_version"], 2, "{config}");
    assert_eq!(config["encryption"]["chunk_id"], "blake3-keyed", "{config}");
    assert!(
        enc.repo()
            .join(format!("backups/{enc_backup}.json"))
            .exists(),
        "the encrypted backup's manifest (checked sealed above)"
    );
    let (enc_chunks, plain_chunks) = (chunk_names(enc.repo()), chunk_names(plain.repo()));
    assert!(!enc_chunks.is_empty());
    assert!(
        !enc_chunks.contains(&sha256_hex(&pg_version))
            && !enc_chunks.contains(&sha256_hex(file_text.as_bytes())),
        "a chunk of the encrypted repository is named by the SHA-256 of its plaintext"
    );
    let shared: Vec<&String> = enc_chunks.intersection(&plain_chunks).collect();
    assert!(
        shared.is_empty(),
        "chunk names shared by the encrypted and the unencrypted repository (same WAL): \
         {shared:?}"
    );
}

/// No secret, a wrong one (file or PITR_PASSPHRASE), a world-readable passphrase file, or a
/// secret for an unencrypted repository: each is one error line and exit 1 (the right
/// passphrase as PITR_PASSPHRASE or as the systemd credential opens it; a file named
/// explicitly beats the credential); restore-wal without the right secret exits
/// above 125 and creates no DEST, and with it restores the segment.
#[test]
fn missing_or_wrong_secret_is_refused() {
    let a = archived_encrypted();
    let repo = a.pitr.repo().display().to_string();
    let wrong = secret_file(&a.dir, "wrong", "not the passphrase\n");

    for cmd in ["list", "info"] {
        let mut c = a.pitr.command([cmd]);
        c.env_remove("PITR_PASSPHRASE_FILE");
        assert_one_error_line(&mut c, &[&repo, "is encrypted"]);
        let mut c = a.pitr.command([cmd]);
        c.env("PITR_PASSPHRASE_FILE", &wrong);
        assert_one_error_line(
            &mut c,
            &[
                &repo,
                "opens none of its key slots",
                &wrong.display().to_string(),
            ],
        );
    }
    let mut c = a.pitr.command(["list"]);
    c.env_remove("PITR_PASSPHRASE_FILE")
        .env("PITR_PASSPHRASE", "not the passphrase either");
    assert_one_error_line(&mut c, &["opens none of its key slots", "PITR_PASSPHRASE"]);
    // The passphrase itself, as the variable, opens it.
    let mut c = a.pitr.command(["list", "--json"]);
    c.env_remove("PITR_PASSPHRASE_FILE").env(
        "PITR_PASSPHRASE",
        fs::read_to_string(&a.pass).unwrap().trim(),
    );
    run(&mut c);

    // The systemd credential pitr-passphrase, when nothing else names a secret.
    let creds = a.dir.mkdir("creds");
    secret_file(
        &a.dir,
        "creds/pitr-passphrase",
        &fs::read_to_string(&a.pass).unwrap(),
    );
    let mut c = a.pitr.command(["list", "--json"]);
    c.env_remove("PITR_PASSPHRASE_FILE")
        .env("CREDENTIALS_DIRECTORY", &creds);
    run(&mut c);
    let mut c = a.pitr.command(["list"]);
    c.env("CREDENTIALS_DIRECTORY", &creds)
        .env("PITR_PASSPHRASE_FILE", &wrong);
    assert_one_error_line(&mut c, &["opens none of its key slots", "wrong"]);

    // No secret ever appears in what pitr prints, opened or refused, even at trace level.
    let right = fs::read_to_string(&a.pass).unwrap().trim().to_string();
    let wrong_text = fs::read_to_string(&wrong).unwrap().trim().to_string();
    for (secret, opens) in [(right.as_str(), true), ("not the passphrase either", false)] {
        for args in [
            &["-vv", "list"][..],
            &["-vv", "info", "--json"],
            &["-vv", "key", "list"],
        ] {
            let mut c = a.pitr.command(args);
            c.env_remove("PITR_PASSPHRASE_FILE")
                .env("PITR_PASSPHRASE", secret);
            let out = output(&mut c);
            assert_eq!(out.status.success(), opens, "{}", describe(&c, &out));
            let printed = [&out.stdout[..], &out.stderr[..]].concat();
            assert!(
                !contains(&printed, secret.as_bytes()),
                "the passphrase appears in the output\n{}",
                describe(&c, &out)
            );
        }
    }
    for file in [&a.pass, &wrong] {
        let mut c = a.pitr.command(["-vv", "info"]);
        c.env("PITR_PASSPHRASE_FILE", file);
        let out = output(&mut c);
        let printed = [&out.stdout[..], &out.stderr[..]].concat();
        for text in [&right, &wrong_text] {
            assert!(
                !contains(&printed, text.as_bytes()),
                "a passphrase file's content appears in the output\n{}",
                describe(&c, &out)
            );
        }
    }

    let loose = secret_file(&a.dir, "loose", "correct horse battery staple\n");
    chmod(&loose, 0o644);
    let mut c = a.pitr.command(["list"]);
    c.env("PITR_PASSPHRASE_FILE", &loose);
    assert_one_error_line(&mut c, &["readable by every user"]);

    let plain = Pitr::init(&a.dir, "plain");
    let mut c = plain.command(["list"]);
    c.env("PITR_PASSPHRASE_FILE", &a.pass);
    assert_one_error_line(&mut c, &["is not encrypted"]);

    let seg = &a.segments[0];
    let dest = a.dir.path().join("dest");
    let mut c = a.pitr.restore_cmd(seg, &dest);
    c.env_remove("PITR_PASSPHRASE_FILE");
    let what = assert_restore_wal_fatal(c, &dest);
    assert!(what.contains("is encrypted"), "{what}");
    let mut c = a.pitr.restore_cmd(seg, &dest);
    c.env("PITR_PASSPHRASE_FILE", &wrong);
    let what = assert_restore_wal_fatal(c, &dest);
    assert!(what.contains("opens none of its key slots"), "{what}");
    // The right secret: restored, and exactly the segment the server wrote.
    let got = a.pitr.restore(seg, &dest);
    let want = fs::read(a.pg.wal_path(seg)).ok();
    assert_eq!(got.len(), 16 << 20, "a 16 MiB segment");
    if let Some(want) = want {
        assert!(got == want, "restored {seg} differs from the server's copy");
    }
}

/// A flipped byte in a chunk, a WAL ref and a backup manifest, two chunks swapped and two WAL
/// refs swapped: each time `pitr verify` fails and names every affected object (the files are
/// put back between cases, and verify is clean again at the end), no other object is blamed,
/// and `list` still reads the rest; restore-wal of a damaged or swapped ref exits above 125
/// without creating DEST. First, on the intact repository, `verify --restore-test` (whose
/// scratch server runs restore-wal) passes.
#[test]
fn tampering_is_detected_and_named() {
    let a = archived_encrypted();
    let (ok, lines, what) = verify(&a.pitr);
    assert!(
        ok && lines.iter().any(|l| l.contains("no problems")),
        "{what}"
    );
    // The test restore's scratch server fetches WAL with restore-wal: it needs the secret too.
    let mut cmd = a.pitr.command(["verify", "--restore-test", "--json"]);
    let out = output(&mut cmd);
    let what = describe(&cmd, &out);
    assert!(out.status.success(), "verify --restore-test\n{what}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect(&what);
    assert_eq!(doc["restore_test"]["backup"], a.backup.as_str(), "{what}");
    let repo = a.pitr.repo().to_owned();
    let chunks: Vec<(String, PathBuf)> = a.pitr.chunk_files();
    assert!(chunks.len() >= 2, "{chunks:?}");
    let (s1, s2) = (&a.segments[0], &a.segments[1]);
    let tli = &s1[..8];
    let ref1 = format!("wal/{tli}/{s1}.json");
    let ref2 = format!("wal/{tli}/{s2}.json");
    let manifest = format!("backups/{}.json", a.backup);

    // (case, files it changes, what verify must name, a restore-wal that must fail)
    type Case<'a> = (&'a str, Vec<PathBuf>, Vec<String>, Option<&'a String>);
    let (c0, c1) = (&chunks[0], &chunks[chunks.len() - 1]);
    let cases: Vec<Case> = vec![
        (
            "flipped byte in a chunk",
            vec![c0.1.clone()],
            vec![c0.0.clone()],
            None,
        ),
        (
            "flipped byte in a WAL ref",
            vec![repo.join(&ref1)],
            vec![ref1.clone()],
            Some(s1),
        ),
        (
            "flipped byte in a backup manifest",
            vec![repo.join(&manifest)],
            vec![manifest.clone()],
            None,
        ),
        (
            "two chunks swapped",
            vec![c0.1.clone(), c1.1.clone()],
            vec![c0.0.clone(), c1.0.clone()],
            None,
        ),
        (
            "two WAL refs swapped",
            vec![repo.join(&ref1), repo.join(&ref2)],
            vec![ref1.clone(), ref2.clone()],
            Some(s2),
        ),
    ];
    for (case, files, names, wal) in cases {
        let saved: Vec<Vec<u8>> = files.iter().map(|f| fs::read(f).unwrap()).collect();
        match files.as_slice() {
            [one] => flip_byte(one),
            [x, y] => swap(x, y),
            _ => unreachable!(),
        }
        let (ok, lines, what) = verify(&a.pitr);
        assert!(!ok, "{case}: verify must fail\n{what}");
        for name in &names {
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains(name.as_str()) && l.contains("fails authentication")),
                "{case}: verify should name {name} as failing authentication\n{what}"
            );
        }
        let blamed: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("fails authentication"))
            .collect();
        assert!(
            blamed.len() == names.len()
                && blamed
                    .iter()
                    .all(|l| names.iter().any(|n| l.contains(n.as_str()))),
            "{case}: exactly the objects changed fail authentication\n{what}"
        );
        // The rest stays usable: list still reads the repository.
        let listed = a.pitr.list_json().len();
        let want = usize::from(!files.iter().any(|f| f.ends_with(&manifest)));
        assert_eq!(listed, want, "{case}: backups list --json shows");
        if let Some(seg) = wal {
            let dest = a.dir.path().join("dest");
            let what = assert_restore_wal_fatal(a.pitr.restore_cmd(seg, &dest), &dest);
            assert!(
                what.contains("fails authentication"),
                "{case}: restore-wal {seg} should say why\n{what}"
            );
        }
        for (f, bytes) in files.iter().zip(&saved) {
            overwrite(f, bytes);
        }
    }
    let (ok, _, what) = verify(&a.pitr);
    assert!(ok, "everything put back: verify is clean again\n{what}");
}

/// Rotation: a repository made with passphrase A gets a key file (for archiving) and a new
/// passphrase B; A's slot, the one in use when opened with A, is removed; then A opens nothing
/// and B restores the cluster (restore --start replays all archived WAL, its restore_command
/// carrying B's file). The exported master key opens the repository too; the last slot cannot
/// be removed.
#[test]
fn key_rotation_locks_out_the_old_passphrase() {
    let dir = TestDir::new();
    let pass_a = secret_file(&dir, "pass-a", "old passphrase\n");
    let pass_b = secret_file(&dir, "pass-b", "new passphrase\n");
    let (by_a, by_key, key) = init_encrypted_local(&dir, "repo", &pass_a);
    let slots = |pitr: &Pitr| -> Vec<serde_json::Value> {
        let text = run_stdout(&mut pitr.command(["key", "list", "--json"]));
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or_else(|e| panic!("key list --json: {e}: {text}"))
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let in_use = |list: &[serde_json::Value]| -> Vec<String> {
        list.iter()
            .filter(|s| s["in_use"] == true)
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let listed = slots(&by_a);
    assert_eq!(listed.len(), 2, "passphrase + key file: {listed:?}");
    let a_ids = in_use(&listed);
    assert_eq!(a_ids.len(), 1, "one slot in use: {listed:?}");
    let a_id = a_ids[0].clone();
    let a_slot = listed.iter().find(|s| s["id"] == a_id.as_str()).unwrap();
    assert_eq!(a_slot["kind"], "passphrase", "{listed:?}");
    assert_eq!(a_slot["label"], "first", "{listed:?}");

    let pg = PgCluster::builder()
        .archive_command(&archive_command_with(&by_key, &key))
        .init();
    pg.psql("create table t (i int); insert into t values (1)");
    by_a.backup(&pg, &["--checkpoint", "fast"]);
    pg.psql("insert into t values (2)");

    let mut add = by_a.command(["key", "add", "--label", "second", "--new-passphrase-file"]);
    add.arg(&pass_b).args(KDF);
    let b_id = run_stdout(&mut add);
    assert_ne!(b_id, a_id);
    run(&mut by_a.command(["key", "remove", &a_id]));
    pg.psql("insert into t values (3)");
    switch_and_archive(&pg);

    let mut old = by_a.command(["list"]);
    assert_one_error_line(&mut old, &["opens none of its key slots", "pass-a"]);
    let by_b = pitr_with_secret(&dir, by_a.repo(), &pass_b, Vec::new());
    let listed = slots(&by_b);
    let ids: BTreeSet<&str> = listed.iter().filter_map(|s| s["id"].as_str()).collect();
    assert!(
        !ids.contains(a_id.as_str()) && ids.contains(b_id.as_str()) && ids.len() == 2,
        "after rotation: B and the key file: {listed:?}"
    );
    assert_eq!(
        in_use(&listed).join(","),
        b_id,
        "B alone in use: {listed:?}"
    );

    let r = restore_started(&by_b, &dir, "rotated", &[], "off");
    assert_eq!(
        r.rows(),
        "1,2,3",
        "every archived row, restored with passphrase B"
    );
    let rc = restore_command_in(&r.place.pgdata);
    assert!(
        rc.contains("--passphrase-file") && rc.contains(&pass_b.display().to_string()),
        "restore_command should carry B's file: {rc}"
    );
    drop(r);

    // The exported master key is a secret of its own.
    let master = dir.path().join("master");
    let mut export = by_b.command(["key", "export", "--output"]);
    export.arg(&master);
    run(&mut export);
    assert!(fs::read_to_string(&master)
        .unwrap()
        .starts_with("pitr-master-key-v1:"));
    let by_master = pitr_with_secret(&dir, by_a.repo(), &master, Vec::new());
    assert_eq!(by_master.list_json().len(), 1);

    // Down to one slot, which stays.
    let key_id = ids.iter().find(|i| **i != b_id).unwrap().to_string();
    run(&mut by_b.command(["key", "remove", &key_id]));
    let mut last = by_b.command(["key", "remove", &b_id]);
    let out = output(&mut last);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the last slot must stay\n{}",
        describe(&last, &out)
    );
    assert_eq!(by_b.list_json().len(), 1, "B still opens the repository");
}

/// Archive, back up, commit rows 1 and 2, create restore point `enc-p`, commit row 3; restore
/// to the restore point on the encrypted local repository with `--start`: exactly rows 1 and
/// 2, and restore_command carries the passphrase file.
#[test]
fn encrypted_point_in_time_recovery_local() {
    let dir = TestDir::new();
    let pass = secret_file(&dir, "pass", "pitr local\n");
    let (_, pitr, key) = init_encrypted_local(&dir, "repo", &pass);
    let pg = PgCluster::builder()
        .archive_command(&archive_command_with(&pitr, &key))
        .init();
    pg.psql("create table t (i int)");
    pitr.backup(&pg, &["--checkpoint", "fast"]);
    pg.psql("insert into t values (1)");
    pg.psql("insert into t values (2)");
    pg.psql("select pg_create_restore_point('enc-p')");
    pg.psql("insert into t values (3)");
    switch_and_archive(&pg);

    let r = restore_started(&pitr, &dir, "name", &["--target-name", "enc-p"], "off");
    assert_eq!(r.rows(), "1,2", "rows at restore point enc-p");
    let rc = restore_command_in(&r.place.pgdata);
    assert!(
        rc.contains(&format!("--passphrase-file {}", key.display())),
        "restore_command should carry the key file: {rc}"
    );
    let id = repository_id(pitr.repo());
    assert!(
        rc.contains(&format!("restore-wal --repository-id {id} ")),
        "restore_command should insist on encrypted repository {id}: {rc}"
    );
}

/// `config.json`'s encryption.repository_id.
fn repository_id(repo: &Path) -> String {
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(repo.join("config.json")).expect("read config.json"))
            .expect("config.json is JSON");
    config["encryption"]["repository_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no repository_id in {config}"))
        .to_string()
}

/// Issue 17 #10: a restore_command written for an encrypted repository names it
/// (`--repository-id`), so a restore-wal with no secret of its own refuses the repository
/// when someone replaced it with an unencrypted one holding their own WAL (a downgrade), or
/// with another encrypted one: exit above 125, no DEST. Without the flag the downgrade would
/// be served, which is the hole.
#[test]
fn restore_wal_with_a_repository_id_refuses_a_downgraded_or_swapped_repository() {
    let dir = TestDir::new();
    let pass = secret_file(&dir, "pass", "pitr downgrade\n");
    let (by_pass, _, _) = init_encrypted_local(&dir, "repo", &pass);
    let id = repository_id(by_pass.repo());
    let pg = PgCluster::init();
    let name = pg.switch_wal();
    let copy = dir.path().join(&name);
    fs::copy(pg.wal_path(&name), &copy).expect("copy the segment");
    chmod(&copy, 0o644);
    give_to_pg(&copy);
    by_pass.archive(&copy, &name);

    // The attacker's repository: unencrypted, holding WAL of their choosing under the name.
    let plain = Pitr::init(&dir, "plain");
    plain.archive(&copy, &name);
    let other_pass = secret_file(&dir, "other-pass", "someone else\n");
    let (other, _, _) = init_encrypted_local(&dir, "other", &other_pass);
    let other_id = repository_id(other.repo());
    let swapped = dir.path().join("swapped");
    let dest_dir = dir.mkdir("pg_wal");
    let dest = dest_dir.join("RECOVERYXLOG");
    for (what, source, says) in [
        (
            "an unencrypted repository",
            plain.repo(),
            "is not encrypted".to_string(),
        ),
        (
            "another encrypted repository",
            other.repo(),
            format!("is encrypted repository {other_id}"),
        ),
    ] {
        let _ = fs::remove_dir_all(&swapped);
        run(Command::new("cp").arg("-a").arg(source).arg(&swapped));
        let restore_wal = |with_id: bool| {
            let mut cmd = Pitr::with_env(&dir, &swapped, Vec::new()).bare_command();
            cmd.env_remove("PITR_PASSPHRASE_FILE")
                .env_remove("PITR_PASSPHRASE")
                .arg("--repo")
                .arg(&swapped)
                .arg("restore-wal");
            if with_id {
                cmd.args(["--repository-id", &id]);
            }
            cmd.arg(&name).arg(&dest);
            cmd
        };
        let what_it_says = assert_restore_wal_fatal(restore_wal(true), &dest);
        // Another encrypted repository is refused before the check can be reached (no secret
        // opens it); the downgrade only by the check.
        assert!(
            (what_it_says.contains(&says) && what_it_says.contains(&id))
                || (source == other.repo() && what_it_says.contains("is encrypted")),
            "{what}: the refusal should say why and name {id}: {what_it_says}"
        );
        if source == plain.repo() {
            // The hole the flag closes: without it, the downgrade is served.
            run(&mut restore_wal(false));
            assert!(dest.exists(), "{what}: served without --repository-id");
            fs::remove_file(&dest).unwrap();
        }
    }
    // The real repository, with its secret, is served.
    let mut cmd = by_pass.command(["restore-wal", "--repository-id", &id, &name]);
    cmd.arg(&dest);
    run(&mut cmd);
    assert_eq!(fs::read(&dest).unwrap(), fs::read(&copy).unwrap());
}

/// The same on S3 (moto), configured by a file alone: its S3 options and `passphrase_file` (a
/// key file); archive_command and pitr name only `--config`. Restore to a time between row 2
/// and row 3 without `--start`, then start the server from the test's own environment (no
/// AWS_* or PITR_* variables): its restore_command alone must reach and open the repository.
#[test]
fn encrypted_point_in_time_recovery_s3() {
    let Some(server) = s3::start_or_skip("encrypted_point_in_time_recovery_s3") else {
        return;
    };
    server.create_bucket("pitr-enc");
    let url = "s3://pitr-enc/cluster";
    let dir = TestDir::new();
    let pass = secret_file(&dir, "pass", "pitr on s3\n");
    let by_pass = pitr_with_secret(&dir, url, &pass, s3::aws_env(&server.endpoint()));
    by_pass.run(["init", "--encryption"].into_iter().chain(KDF));
    let key = dir.path().join("s3.key");
    add_key_file(&by_pass, &key);
    let s3_secret = secret_file(&dir, "s3-secret", "pitr-test-secret\n");
    let config = dir.path().join("pitr.toml");
    fs::write(
        &config,
        format!(
            "repo = \"{url}\"\npassphrase_file = \"{}\"\n[s3]\nendpoint = \"{}\"\n\
             region = \"us-east-1\"\naccess_key_id = \"pitr-test-key\"\n\
             secret_access_key_file = \"{}\"\nvirtual_hosted_style_request = false\n\
             allow_http = true\n",
            key.display(),
            server.endpoint(),
            s3_secret.display()
        ),
    )
    .unwrap();
    let pitr = Pitr::with_env(
        &dir,
        url,
        vec![("PITR_CONFIG", config.display().to_string())],
    );
    let info = pitr.info_json();
    assert_eq!(info["encrypted"], true, "{info}");

    let pg = PgCluster::builder()
        .archive_command(&format!(
            "{} --config {} archive-wal %p %f",
            pitr.bin().display(),
            config.display()
        ))
        .init();
    pg.psql("create table t (i int)");
    pitr.backup(&pg, &["--checkpoint", "fast"]);
    pg.psql("insert into t values (1)");
    pg.psql("insert into t values (2)");
    let between = pg.psql(
        "select to_char(clock_timestamp() at time zone 'UTC', \
         'YYYY-MM-DD HH24:MI:SS.US') || '+00' from pg_sleep(0.02)",
    );
    pg.psql("select pg_sleep(0.02)");
    pg.psql("insert into t values (3)");
    switch_and_archive(&pg);

    let pgdata = dir.path().join("restored");
    let mut cmd = pitr.command(["restore", "--pgdata"]);
    cmd.arg(&pgdata).args(["--target-time", &between]);
    run(&mut cmd);
    let rc = restore_command_in(&pgdata);
    assert!(
        rc.contains(&format!("--config {}", config.display())),
        "restore_command should name the configuration file: {rc}"
    );
    let copy = PgCluster::builder()
        .conf("archive_mode = off")
        .start_existing(&pgdata);
    copy.wait_promoted(Duration::from_secs(120));
    assert_eq!(
        rows_at(copy.socket_dir(), copy.port()),
        "1,2",
        "rows at {between}, restored from S3"
    );
}

/// At a terminal, `init --encryption` and `key add` ask for the new passphrase twice when no
/// file or variable gives one (as restic does); what was typed opens the repository, and two
/// different answers change nothing. The terminal is a pseudo-terminal `script` makes.
#[test]
fn a_new_passphrase_is_asked_at_the_terminal() {
    use std::io::Write;
    use std::process::Stdio;
    let dir = TestDir::new();
    let pitr = Pitr::new(&dir, "repo");
    let at_terminal = |args: &str, typed: &str| -> Output {
        let line = format!(
            "{} --repo {} {args}",
            pitr.bin().display(),
            pitr.repo().display()
        );
        let mut cmd = pitr_testkit::user::unprivileged("script");
        cmd.args(["-qec", &line, "/dev/null"])
            .env_remove("PITR_PASSPHRASE")
            .env_remove("PITR_PASSPHRASE_FILE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run script(1)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(typed.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = at_terminal(
        "init --encryption --kdf-memory 8 --kdf-iterations 1",
        "typed at the tty\ntyped at the tty\n",
    );
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && shown.contains("New passphrase for the first key slot"),
        "{shown}"
    );
    let pass = secret_file(&dir, "typed", "typed at the tty\n");
    let with_pass = |args: &[&str]| {
        let mut cmd = pitr.command(["--passphrase-file", pass.to_str().unwrap()]);
        cmd.args(args);
        cmd
    };
    let slots = run_stdout(&mut with_pass(&["key", "list", "--json"]));
    assert_eq!(
        slots.matches("\"kind\": \"passphrase\"").count(),
        1,
        "{slots}"
    );

    let out = at_terminal(
        &format!(
            "--passphrase-file {} key add --kdf-memory 8 --kdf-iterations 1",
            pass.display()
        ),
        "one answer\nanother answer\n",
    );
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !out.status.success() && shown.contains("the two passphrases differ"),
        "{shown}"
    );
    let slots = run_stdout(&mut with_pass(&["key", "list", "--json"]));
    assert_eq!(slots.matches("\"id\"").count(), 1, "nothing added: {slots}");
}

//! What the integration tests need beyond `pitr-testkit` (which owns the PostgreSQL clusters,
//! commands, temp dirs and the `postgres` user): the `pitr` binary under test, bound to a
//! repository, run the way PostgreSQL runs it. As root every `pitr` invocation runs as the
//! `postgres` user: the repository must stay writable by the archiver.

#![allow(dead_code)] // shared by test modules, not each of which uses every helper

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use pitr_testkit::cmd::{describe, output, run, stdout_of};
use pitr_testkit::dirs::list_dir;
use pitr_testkit::user::unprivileged;
use pitr_testkit::{PgCluster, PgClusterBuilder, TestDir};

/// How long to wait for the archiver before a test gives up.
pub const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(180);

/// `archive_to(&pitr)` on a cluster builder: archive_mode = on, archive_command =
/// `pitr archive-wal %p %f` into `pitr`'s repository.
pub trait ArchiveTo {
    fn archive_to(self, pitr: &Pitr) -> Self;
}

impl ArchiveTo for PgClusterBuilder {
    fn archive_to(self, pitr: &Pitr) -> Self {
        self.archive_command(&pitr.archive_command())
    }
}

/// The `pitr` binary under test, installed into `<dir>/bin/pitr` so the PostgreSQL user can
/// run it even when the cargo target directory is closed to it.
pub fn pitr_bin(dir: &TestDir) -> PathBuf {
    dir.install_program(Path::new(env!("CARGO_BIN_EXE_pitr")))
}

// ---------------------------------------------------------------------------------------------
// The pitr binary and its repository
// ---------------------------------------------------------------------------------------------

/// A `pitr` binary bound to one repository (a directory, or a URL with the environment its
/// backend needs).
pub struct Pitr {
    bin: PathBuf,
    repo: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Pitr {
    /// A repository at `<dir>/<name>`, not yet initialised.
    pub fn new(dir: &TestDir, name: &str) -> Pitr {
        let repo = dir.path().join(name);
        // The directory is not created: `pitr init` should do that. Its parent is writable
        // by the PostgreSQL user.
        Pitr {
            bin: pitr_bin(dir),
            repo,
            env: Vec::new(),
        }
    }

    /// A repository at `url` (e.g. `s3://bucket/prefix`), every command run with `env`,
    /// created with `pitr init`.
    pub fn init_url(dir: &TestDir, url: &str, env: Vec<(&'static str, String)>) -> Pitr {
        let pitr = Pitr {
            bin: pitr_bin(dir),
            repo: PathBuf::from(url),
            env,
        };
        pitr.run(["init"]);
        pitr
    }

    /// A repository at `repo` (a directory or a URL), not yet initialised, every command run
    /// with `env` (a backend's settings, a passphrase file, …).
    pub fn with_env(
        dir: &TestDir,
        repo: impl Into<PathBuf>,
        env: Vec<(&'static str, String)>,
    ) -> Pitr {
        Pitr {
            bin: pitr_bin(dir),
            repo: repo.into(),
            env,
        }
    }

    /// A repository at `<dir>/<name>`, created with `pitr init`.
    pub fn init(dir: &TestDir, name: &str) -> Pitr {
        let pitr = Pitr::new(dir, name);
        pitr.run(["init"]);
        pitr
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn repo(&self) -> &Path {
        &self.repo
    }

    /// `pitr` with no arguments (no `--repo` either), as the PostgreSQL user when root.
    /// `PITR_REPO` and `PITR_CONFIG` are cleared so the caller's environment cannot leak in.
    pub fn bare_command(&self) -> Command {
        let mut cmd = unprivileged(&self.bin);
        cmd.env_remove("PITR_REPO").env_remove("PITR_CONFIG");
        if !self.env.is_empty() {
            // The backend's settings are the test's alone: none of the caller's may leak in.
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("AWS_") {
                    cmd.env_remove(key);
                }
            }
            cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        }
        cmd
    }

    /// `pitr --repo <repo> <args>`.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.bare_command();
        cmd.arg("--repo").arg(&self.repo).args(args);
        cmd
    }

    /// Runs `pitr --repo <repo> <args>`, panicking unless it exits 0.
    #[track_caller]
    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(&mut self.command(args))
    }

    /// Runs `pitr --repo <repo> <args>` and returns its output whatever its status.
    pub fn output<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        output(&mut self.command(args))
    }

    /// `archive_command` for postgresql.conf.
    pub fn archive_command(&self) -> String {
        format!(
            "{} --repo {} archive-wal %p %f",
            self.bin.display(),
            self.repo.display()
        )
    }

    /// `restore_command` for postgresql.conf.
    pub fn restore_command(&self) -> String {
        format!(
            "{} --repo {} restore-wal %f %p",
            self.bin.display(),
            self.repo.display()
        )
    }

    /// `pitr archive-wal PATH NAME` (not run yet).
    pub fn archive_cmd(&self, path: &Path, name: &str) -> Command {
        let mut cmd = self.command(["archive-wal"]);
        cmd.arg(path).arg(name);
        cmd
    }

    /// `pitr restore-wal NAME DEST` (not run yet).
    pub fn restore_cmd(&self, name: &str, dest: &Path) -> Command {
        let mut cmd = self.command(["restore-wal", name]);
        cmd.arg(dest);
        cmd
    }

    /// `archive-wal PATH NAME`, expecting success.
    #[track_caller]
    pub fn archive(&self, path: &Path, name: &str) {
        run(&mut self.archive_cmd(path, name));
    }

    /// `restore-wal NAME DEST`, expecting success; returns the restored bytes.
    #[track_caller]
    pub fn restore(&self, name: &str, dest: &Path) -> Vec<u8> {
        run(&mut self.restore_cmd(name, dest));
        fs::read(dest).unwrap_or_else(|e| {
            panic!(
                "restore-wal {name} exited 0 but {} is unreadable: {e}",
                dest.display()
            )
        })
    }

    /// Names of the WAL files the repository holds: `wal/*/<name>.json`, sorted.
    pub fn archived_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .wal_refs()
            .iter()
            .filter_map(|p| {
                p.file_name()?
                    .to_str()?
                    .strip_suffix(".json")
                    .map(str::to_owned)
            })
            .collect();
        names.sort();
        names
    }

    /// Paths of every WAL reference document (`wal/*/*.json`), sorted.
    pub fn wal_refs(&self) -> Vec<PathBuf> {
        let wal = self.repo.join("wal");
        let mut refs = Vec::new();
        for dir in list_dir(&wal) {
            if dir.is_dir() {
                refs.extend(
                    list_dir(&dir)
                        .into_iter()
                        .filter(|p| p.extension().is_some_and(|e| e == "json")),
                );
            }
        }
        refs.sort();
        refs
    }

    /// Path of the reference document for WAL file `name`.
    pub fn wal_ref_path(&self, name: &str) -> PathBuf {
        let prefix = name.get(..8).unwrap_or(name);
        self.repo
            .join("wal")
            .join(prefix)
            .join(format!("{name}.json"))
    }

    /// The chunks (`id`, `len`) that the reference for `name` lists, in order.
    #[track_caller]
    pub fn wal_ref_chunks(&self, name: &str) -> Vec<(String, u64)> {
        chunks_of_ref(&self.wal_ref_path(name))
    }

    /// Path of the chunk object with hex key `id`.
    pub fn chunk_path(&self, id: &str) -> PathBuf {
        self.repo.join("chunks").join(&id[..2]).join(id)
    }

    /// Every chunk object under `chunks/`, as (hex key, path).
    pub fn chunk_files(&self) -> Vec<(String, PathBuf)> {
        let mut chunks = Vec::new();
        for dir in list_dir(&self.repo.join("chunks")) {
            for file in list_dir(&dir) {
                let name = file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    chunks.push((name.to_owned(), file.clone()));
                }
            }
        }
        chunks.sort();
        chunks
    }

    /// `pitr backup -d <pg's socket connstr> <args>` (not run yet).
    pub fn backup_cmd(&self, pg: &PgCluster, args: &[&str]) -> Command {
        let mut cmd = self.command(["backup", "-d", &pg.socket_connstr()]);
        cmd.args(args);
        cmd
    }

    /// `pitr backup` of `pg` with `args` (e.g. `["--checkpoint", "fast"]`), expecting success
    /// and exactly one line on stdout, the backup ID, which it returns.
    #[track_caller]
    pub fn backup(&self, pg: &PgCluster, args: &[&str]) -> String {
        let mut cmd = self.backup_cmd(pg, args);
        let out = output(&mut cmd);
        backup_id_of(&cmd, &out, pg)
    }

    /// `list --json`, parsed: one object per backup, oldest first.
    #[track_caller]
    pub fn list_json(&self) -> Vec<serde_json::Value> {
        let mut cmd = self.command(["list", "--json"]);
        let out = run(&mut cmd);
        match serde_json::from_slice(&out.stdout) {
            Ok(serde_json::Value::Array(backups)) => backups,
            Ok(other) => panic!(
                "list --json printed {other}, not a JSON array\n{}",
                describe(&cmd, &out)
            ),
            Err(e) => panic!(
                "list --json did not print JSON: {e}\n{}",
                describe(&cmd, &out)
            ),
        }
    }

    /// The `list --json` entry of backup `id`; panics (showing the list) unless exactly one.
    #[track_caller]
    pub fn listed_backup(&self, id: &str) -> serde_json::Value {
        let list = self.list_json();
        let found: Vec<&serde_json::Value> = list.iter().filter(|b| b["id"] == id).collect();
        match found.as_slice() {
            [one] => (*one).clone(),
            _ => panic!(
                "backup {id} listed {} times by list --json: {}",
                found.len(),
                serde_json::Value::Array(list.clone())
            ),
        }
    }

    /// `info --json`, parsed.
    #[track_caller]
    pub fn info_json(&self) -> serde_json::Value {
        let mut cmd = self.command(["info", "--json"]);
        let out = run(&mut cmd);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "info --json did not print one JSON object: {e}\n{}",
                describe(&cmd, &out)
            )
        })
    }
}

/// The backup ID that a finished `pitr backup` printed: panics, explaining the command and the
/// server log tail, unless it exited 0 with exactly one non-empty line on stdout.
#[track_caller]
pub fn backup_id_of(cmd: &Command, out: &Output, pg: &PgCluster) -> String {
    let stdout = stdout_of(out);
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    match (out.status.success(), lines.as_slice()) {
        (true, [id]) if !id.trim().is_empty() => id.trim().to_owned(),
        (true, _) => panic!(
            "pitr backup should print exactly the backup ID on stdout\n{}",
            describe(cmd, out)
        ),
        (false, _) => panic!(
            "pitr backup failed\n{}\n--- server log ---\n{}",
            describe(cmd, out),
            pg.log_tail(30)
        ),
    }
}

/// The `chunks` array of a reference document, as (`id`, `len`).
#[track_caller]
pub fn chunks_of_ref(path: &Path) -> Vec<(String, u64)> {
    let text = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let doc: serde_json::Value = serde_json::from_slice(&text).unwrap_or_else(|e| {
        panic!(
            "{} is not JSON ({e}): {}",
            path.display(),
            String::from_utf8_lossy(&text)
        )
    });
    let chunks = doc["chunks"].as_array().unwrap_or_else(|| {
        panic!("{} has no \"chunks\" array: {doc}", path.display());
    });
    chunks
        .iter()
        .map(|c| {
            let id = c["id"].as_str();
            let len = c["len"].as_u64();
            match (id, len) {
                (Some(id), Some(len)) => (id.to_owned(), len),
                _ => panic!("{}: malformed chunk entry {c}", path.display()),
            }
        })
        .collect()
}

/// Non-empty lines of a command's stderr.
pub fn error_lines(out: &Output) -> Vec<String> {
    pitr_testkit::cmd::stderr_of(out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

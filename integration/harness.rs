//! Test harness: real PostgreSQL clusters started by the tests themselves (initdb + pg_ctl on a
//! free port, socket in a short temp dir) and the `pitr` binary run the way PostgreSQL runs it.
//! PostgreSQL refuses to run as root, so as root every PostgreSQL program *and* every `pitr`
//! invocation runs as the `postgres` user: the repository must stay writable by the archiver.

#![allow(dead_code)] // shared by test modules, not each of which uses every helper

use std::ffi::{CString, OsStr};
use std::fmt::Write as _;
use std::fs;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long to wait for the archiver before a test gives up.
pub const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------------------------

/// Runs `cmd` (stdin closed) and returns its output whatever its status.
pub fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"))
}

/// Runs `cmd` and panics, showing the command line, status, stdout and stderr, unless it
/// exits 0.
#[track_caller]
pub fn run(cmd: &mut Command) -> Output {
    let out = output(cmd);
    if !out.status.success() {
        panic!("command failed\n{}", describe(cmd, &out));
    }
    out
}

/// Runs `cmd` and panics, explaining itself, unless it exits with exactly `code`.
#[track_caller]
pub fn run_expect_code(cmd: &mut Command, code: i32) -> Output {
    let out = output(cmd);
    if out.status.code() != Some(code) {
        panic!("expected exit status {code}\n{}", describe(cmd, &out));
    }
    out
}

/// The command line, exit status, stdout and stderr of a finished command, for failure messages.
pub fn describe(cmd: &Command, out: &Output) -> String {
    format!(
        "command: {cmd:?}{}\nstatus:  {}\n--- stdout ---\n{}\n--- stderr ---\n{}--- end ---",
        if pg_user().is_some() {
            " (as user postgres)"
        } else {
            ""
        },
        status_text(out.status),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    )
}

/// "exit 1", "killed by signal 9", ...
pub fn status_text(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{status}"),
    }
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` (stdin closed) like [`output`] and also returns the child's peak resident set
/// size in KiB, from the kernel's accounting when it is reaped (`wait4` rusage, `ru_maxrss`).
pub fn output_with_max_rss(cmd: &mut Command) -> (Output, u64) {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of a plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own unreaped child; status and usage are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        assert!(
            err.kind() == ErrorKind::Interrupted,
            "wait4 {pid} ({cmd:?}): {err}"
        );
    }
    // `child` is reaped already: never wait on it again (dropping a Child does not wait).
    drop(child);
    let out = Output {
        status: ExitStatus::from_raw(status),
        stdout: stdout.join().expect("stdout reader thread"),
        stderr: stderr.join().expect("stderr reader thread"),
    };
    // ru_maxrss is in KiB on Linux.
    (out, u64::try_from(usage.ru_maxrss).unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------
// Root and the postgres user
// ---------------------------------------------------------------------------------------------

/// The user PostgreSQL (and `pitr`) run as when the tests run as root.
#[derive(Clone, Copy, Debug)]
pub struct PgUser {
    pub uid: u32,
    pub gid: u32,
}

/// `Some(postgres)` when the tests run as root, `None` otherwise (run everything directly).
pub fn pg_user() -> Option<PgUser> {
    static USER: OnceLock<Option<PgUser>> = OnceLock::new();
    *USER.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let name = CString::new("postgres").expect("no NUL in a literal");
        // SAFETY: a valid C string; the result is read before any other getpw* call here, and
        // the OnceLock serialises callers.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        assert!(
            !pw.is_null(),
            "the tests run as root, and PostgreSQL refuses to: they need a `postgres` user \
             to run it as (useradd --system postgres), or run them as an ordinary user"
        );
        // SAFETY: pw is non-null and points to getpwnam's static record.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Some(PgUser { uid, gid })
    })
}

/// A command for a program that must not run as root: as root it runs as `postgres`.
/// The process switches user itself (setgid/setuid before exec) rather than going through
/// `runuser`, so that a signal sent to the child reaches the program, not a wrapper.
/// The working directory defaults to `/`, which every user can enter.
pub fn unprivileged(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir("/");
    if let Some(user) = pg_user() {
        cmd.uid(user.uid).gid(user.gid);
    }
    cmd
}

/// Makes `path` owned by the user PostgreSQL runs as (no-op unless root).
pub fn give_to_pg(path: &Path) {
    if let Some(user) = pg_user() {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
            .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
    }
}

/// Creates `path` (and missing parents) owned by the user PostgreSQL runs as.
pub fn mkdir_for_pg(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    give_to_pg(path);
}

/// Sets the permission bits of `path`.
pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}

// ---------------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------------

/// A short temporary directory (`/tmp/pitrXXXXXX`, so unix socket paths stay under the 107-byte
/// limit) owned by the PostgreSQL user. Kept after the test when `PITR_TEST_KEEP` is set.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        let mut dir = tempfile::Builder::new()
            .prefix("pitr")
            .tempdir_in("/tmp")
            .expect("create a temp dir under /tmp");
        chmod(dir.path(), 0o755);
        give_to_pg(dir.path());
        if std::env::var_os("PITR_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping test dir {}", dir.path().display());
        }
        TestDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `<dir>/<name>`, created and owned by the PostgreSQL user.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let path = self.path().join(name);
        mkdir_for_pg(&path);
        path
    }

    /// The `pitr` binary under test, hard-linked (or copied) into `<dir>/bin/pitr` so the
    /// PostgreSQL user can run it even when the cargo target directory is closed to it.
    pub fn pitr_bin(&self) -> PathBuf {
        let bin_dir = self.path().join("bin");
        let dest = bin_dir.join("pitr");
        if dest.exists() {
            return dest;
        }
        mkdir_for_pg(&bin_dir);
        let src = Path::new(env!("CARGO_BIN_EXE_pitr"));
        if fs::hard_link(src, &dest).is_err() {
            fs::copy(src, &dest)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), dest.display()));
        }
        // A hard link shares the original's mode; cargo makes it 0755 already.
        if fs::metadata(&dest)
            .map(|m| m.mode() & 0o005 != 0o005)
            .unwrap_or(true)
        {
            chmod(&dest, 0o755);
        }
        dest
    }
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
            bin: dir.pitr_bin(),
            repo,
            env: Vec::new(),
        }
    }

    /// A repository at `url` (e.g. `s3://bucket/prefix`), every command run with `env`,
    /// created with `pitr init`.
    pub fn init_url(dir: &TestDir, url: &str, env: Vec<(&'static str, String)>) -> Pitr {
        let pitr = Pitr {
            bin: dir.pitr_bin(),
            repo: PathBuf::from(url),
            env,
        };
        pitr.run(["init"]);
        pitr
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

/// An LSN in PostgreSQL's `X/X` form as a number; panics on anything else.
#[track_caller]
pub fn lsn(text: &str) -> u64 {
    let parsed = text.split_once('/').and_then(|(hi, lo)| {
        let hi = u64::from_str_radix(hi, 16).ok()?;
        let lo = u64::from_str_radix(lo, 16).ok()?;
        (hi <= u64::from(u32::MAX) && lo <= u64::from(u32::MAX)).then_some(hi << 32 | lo)
    });
    parsed.unwrap_or_else(|| panic!("{text:?} is not an LSN (X/X)"))
}

/// Total size in bytes of the regular files under `dir` (0 when it does not exist).
pub fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in list_dir(dir) {
        let Ok(meta) = fs::symlink_metadata(&entry) else {
            continue; // removed meanwhile
        };
        if meta.is_dir() {
            total += tree_size(&entry);
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
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

/// Entries of `dir`, or nothing when it does not exist.
pub fn list_dir(dir: &Path) -> Vec<PathBuf> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| {
                e.unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
                    .path()
            })
            .collect(),
        Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("list {}: {e}", dir.display()),
    }
}

/// Panics with the first differing offset (not 16 MiB of bytes) unless `got == want`.
#[track_caller]
pub fn assert_same_bytes(what: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let first_diff = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: content differs: got {} bytes, want {} bytes, first difference at offset {first_diff}",
        got.len(),
        want.len()
    );
}

// ---------------------------------------------------------------------------------------------
// WAL file names
// ---------------------------------------------------------------------------------------------

/// Segment number of a 24-hex-digit segment file name (16 MiB segments), `None` for other names.
pub fn segno(name: &str) -> Option<u64> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    Some(log * 0x100 + seg)
}

/// Segment file name for `timeline` and segment number `segno` (16 MiB segments).
pub fn segment_name(timeline: u32, segno: u64) -> String {
    format!("{timeline:08X}{:08X}{:08X}", segno / 0x100, segno % 0x100)
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL binaries
// ---------------------------------------------------------------------------------------------

/// The directory holding initdb, pg_ctl, psql, pgbench: `PITR_PG_BINDIR`, else
/// `pg_config --bindir`, else the highest `/usr/lib/postgresql/*/bin`.
pub fn pg_bindir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let has_initdb = |d: &Path| d.join("initdb").is_file();
        if let Some(dir) = std::env::var_os("PITR_PG_BINDIR") {
            let dir = PathBuf::from(dir);
            assert!(
                has_initdb(&dir),
                "PITR_PG_BINDIR={} has no initdb",
                dir.display()
            );
            return dir;
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if out.status.success() && has_initdb(&dir) {
                return dir;
            }
        }
        let mut versions: Vec<(u32, PathBuf)> = list_dir(Path::new("/usr/lib/postgresql"))
            .into_iter()
            .filter_map(|p| {
                let v = p.file_name()?.to_str()?.parse::<u32>().ok()?;
                let bin = p.join("bin");
                has_initdb(&bin).then_some((v, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
            panic!(
                "no PostgreSQL found: set PITR_PG_BINDIR, put pg_config on PATH, or install \
                 postgresql (apt-get install postgresql)"
            )
        })
    })
}

/// Directories of other PostgreSQL versions' server programs (initdb, pg_ctl, postgres) to run
/// the multi-version tests on: `PITR_EXTRA_PG_BINDIRS`, colon-separated (.ci/run installs
/// them). Empty when unset. Panics if a listed directory has no initdb.
pub fn pg_extra_bindirs() -> Vec<PathBuf> {
    let Some(list) = std::env::var_os("PITR_EXTRA_PG_BINDIRS") else {
        return Vec::new();
    };
    std::env::split_paths(&list)
        .filter(|d| !d.as_os_str().is_empty())
        .inspect(|dir| {
            assert!(
                dir.join("initdb").is_file(),
                "PITR_EXTRA_PG_BINDIRS lists {}, which has no initdb",
                dir.display()
            );
        })
        .collect()
}

/// A PostgreSQL program from [`pg_bindir`], as the PostgreSQL user.
pub fn pg_command(program: &str) -> Command {
    unprivileged(pg_bindir().join(program))
}

/// A free TCP port on 127.0.0.1 (free when asked; `start` retries if it is taken meanwhile).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

// ---------------------------------------------------------------------------------------------
// Clusters
// ---------------------------------------------------------------------------------------------

/// Settings for a cluster about to be created or started.
#[derive(Default, Clone)]
pub struct PgClusterBuilder {
    conf: Vec<String>,
    initdb_args: Vec<String>,
    bindir: Option<PathBuf>,
    hba: Option<String>,
}

impl PgClusterBuilder {
    /// Appends a line to postgresql.conf (later lines win).
    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.conf.push(line.into());
        self
    }

    /// An extra initdb argument.
    pub fn initdb_arg(mut self, arg: impl Into<String>) -> Self {
        self.initdb_args.push(arg.into());
        self
    }

    /// Run initdb, pg_ctl and postgres from `dir` instead of [`pg_bindir`] (another major
    /// version, say). psql and pgbench still come from [`pg_bindir`]: libpq clients talk to
    /// newer servers.
    pub fn bindir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bindir = Some(dir.into());
        self
    }

    /// Replaces pg_hba.conf with `lines` before the server starts (keep a `local ... postgres
    /// trust` line: [`PgCluster::psql`] connects over the socket as `postgres`).
    pub fn hba(mut self, lines: &str) -> Self {
        self.hba = Some(lines.to_owned());
        self
    }

    /// archive_mode = on, archive_command = `pitr archive-wal %p %f` into `pitr`'s repository.
    pub fn archive_to(self, pitr: &Pitr) -> Self {
        self.conf("archive_mode = on")
            .conf(format!("archive_command = '{}'", pitr.archive_command()))
    }

    /// initdb a new cluster in its own temp dir and start it.
    #[track_caller]
    pub fn init(self) -> PgCluster {
        let base = new_base_dir();
        let data_dir = base.path().join("data");
        let bindir = self.server_bindir();
        let mut cmd = unprivileged(bindir.join("initdb"));
        cmd.arg("-D")
            .arg(&data_dir)
            .args([
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .args(&self.initdb_args);
        run(&mut cmd);
        self.start(base, data_dir)
    }

    /// Start a server on an existing data directory (a restored one, say). It must be owned by
    /// the PostgreSQL user with mode 0700 or 0750. Socket and log live in a new temp dir.
    #[track_caller]
    pub fn start_existing(self, data_dir: &Path) -> PgCluster {
        self.start(new_base_dir(), data_dir.to_owned())
    }

    fn server_bindir(&self) -> PathBuf {
        self.bindir
            .clone()
            .unwrap_or_else(|| pg_bindir().to_owned())
    }

    fn start(self, base: tempfile::TempDir, data_dir: PathBuf) -> PgCluster {
        let sock_dir = base.path().join("s");
        mkdir_for_pg(&sock_dir);
        let mut conf = String::from("\n# added by the pitr test harness\nfsync = off\n");
        for line in &self.conf {
            writeln!(conf, "{line}").expect("write to a String");
        }
        append(&data_dir.join("postgresql.conf"), &conf);
        if let Some(hba) = &self.hba {
            let path = data_dir.join("pg_hba.conf");
            // Rewriting an existing file keeps its owner (the PostgreSQL user).
            fs::write(&path, hba).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        let mut cluster = PgCluster {
            bindir: self.server_bindir(),
            log_file: base.path().join("server.log"),
            base,
            data_dir,
            sock_dir,
            port: 0,
            running: false,
        };
        cluster.start_server();
        cluster
    }
}

fn new_base_dir() -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new()
        .prefix("pitr")
        .tempdir_in("/tmp")
        .expect("create a temp dir under /tmp");
    give_to_pg(dir.path());
    if std::env::var_os("PITR_TEST_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!("keeping cluster dir {}", dir.path().display());
    }
    dir
}

fn append(path: &Path, text: &str) {
    use std::io::Write as _;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
}

/// A running PostgreSQL server. Stopped (immediate) on drop; when the test is failing, the
/// tail of the server log goes to stderr.
pub struct PgCluster {
    base: tempfile::TempDir,
    data_dir: PathBuf,
    sock_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    running: bool,
    /// Where this cluster's initdb, pg_ctl and postgres come from.
    bindir: PathBuf,
}

impl PgCluster {
    pub fn builder() -> PgClusterBuilder {
        PgClusterBuilder::default()
    }

    /// initdb + start with default settings.
    pub fn init() -> PgCluster {
        PgClusterBuilder::default().init()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory this cluster's server programs (initdb, pg_ctl, postgres) come from.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    fn pg_ctl(&self) -> Command {
        unprivileged(self.bindir.join("pg_ctl"))
    }

    /// A libpq key=value connection string over the unix socket, as superuser `postgres`
    /// (what `pitr backup -d` takes).
    pub fn socket_connstr(&self) -> String {
        format!(
            "host={} port={} user=postgres",
            self.sock_dir.display(),
            self.port
        )
    }

    pub fn socket_dir(&self) -> &Path {
        &self.sock_dir
    }

    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Path of a file in pg_wal.
    pub fn wal_path(&self, name: &str) -> PathBuf {
        self.data_dir.join("pg_wal").join(name)
    }

    /// A libpq connection string over TCP, as superuser `postgres`.
    pub fn connstr(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// Starts the server (again); retries on a new port if the chosen one was taken.
    #[track_caller]
    pub fn start_server(&mut self) {
        assert!(!self.running, "server already running");
        for attempt in 1..=5 {
            self.port = free_port();
            let opts = format!(
                "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
                self.port,
                self.sock_dir.display()
            );
            let log_len = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
            let mut cmd = self.pg_ctl();
            cmd.arg("start")
                .arg("-w")
                .args(["-t", "120"])
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&self.log_file)
                .arg("-o")
                .arg(&opts);
            let out = output(&mut cmd);
            if out.status.success() {
                self.running = true;
                return;
            }
            let log = fs::read(&self.log_file).unwrap_or_default();
            let new_log = String::from_utf8_lossy(&log[(log_len as usize).min(log.len())..]);
            if attempt < 5 && new_log.contains("could not bind") {
                continue; // port taken between free_port() and the server's bind
            }
            panic!(
                "could not start PostgreSQL\n{}\n--- server log ---\n{}",
                describe(&cmd, &out),
                self.log_tail(60)
            );
        }
    }

    /// Stops the server with `mode` (`fast`, `immediate`, `smart`).
    #[track_caller]
    pub fn stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let mut cmd = self.pg_ctl();
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w", "-t", "120"]);
        run(&mut cmd);
        self.running = false;
    }

    /// The last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = fs::read(&self.log_file).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Runs SQL with psql (unaligned, tuples only) and returns stdout without the final
    /// newline. Panics, with the server log tail, on error.
    #[track_caller]
    pub fn psql(&self, sql: &str) -> String {
        let mut cmd = pg_command("psql");
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.sock_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ]);
        let out = output(&mut cmd);
        if !out.status.success() {
            panic!(
                "psql failed\n{}\n--- server log ---\n{}",
                describe(&cmd, &out),
                self.log_tail(30)
            );
        }
        stdout_of(&out).trim_end_matches('\n').to_owned()
    }

    /// `server_version_num` of the running server (150018, 180004, ...).
    #[track_caller]
    pub fn server_version_num(&self) -> u32 {
        let v = self.psql("show server_version_num");
        v.parse()
            .unwrap_or_else(|e| panic!("server_version_num {v:?}: {e}"))
    }

    /// Waits until the server has left recovery (promoted) and accepts writes. Panics, with
    /// the server log tail, after `timeout`.
    #[track_caller]
    pub fn wait_promoted(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.psql("select pg_is_in_recovery()") == "f" {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "server still in recovery after {timeout:?}\n--- server log ---\n{}",
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs pgbench against database `postgres` with `args` (e.g. `["-i", "-s", "5"]`).
    #[track_caller]
    pub fn pgbench(&self, args: &[&str]) -> Output {
        let mut cmd = pg_command("pgbench");
        cmd.arg("-h")
            .arg(&self.sock_dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres"])
            .args(args)
            .arg("postgres");
        run(&mut cmd)
    }

    /// Writes a little WAL, switches to a new segment and returns the name of the segment
    /// just completed.
    #[track_caller]
    pub fn switch_wal(&self) -> String {
        let out = self.psql(
            "create table if not exists pitr_switch (i int); \
             insert into pitr_switch values (1); \
             select pg_walfile_name(pg_switch_wal())",
        );
        out.lines().last().unwrap_or_default().to_owned()
    }

    /// Name of the segment WAL is currently written to.
    pub fn current_segment(&self) -> String {
        self.psql("select pg_walfile_name(pg_current_wal_insert_lsn())")
    }

    /// Names waiting in pg_wal/archive_status (`.ready`), sorted.
    pub fn ready_to_archive(&self) -> Vec<String> {
        let mut ready: Vec<String> = list_dir(&self.data_dir.join("pg_wal/archive_status"))
            .iter()
            .filter_map(|p| {
                p.file_name()?
                    .to_str()?
                    .strip_suffix(".ready")
                    .map(str::to_owned)
            })
            .collect();
        ready.sort();
        ready
    }

    /// Waits until the archiver has archived `name` (or a later file) and nothing waits to be
    /// archived. Panics at once if an archive attempt failed, or after `timeout`.
    #[track_caller]
    pub fn wait_archived(&self, name: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let row = self.psql(
                "select coalesce(last_archived_wal, ''), failed_count, \
                 coalesce(last_failed_wal, '') from pg_stat_archiver",
            );
            let fields: Vec<&str> = row.split('|').collect();
            let (last, failed, last_failed) = (fields[0], fields[1], fields[2]);
            if failed != "0" {
                panic!(
                    "archive_command failed {failed} time(s), last on {last_failed} \
                     (pg_stat_archiver: {row})\n--- server log ---\n{}",
                    self.log_tail(60)
                );
            }
            let ready = self.ready_to_archive();
            if last >= name && ready.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{name} not archived after {timeout:?}: last_archived_wal={last}, \
                     waiting: {ready:?}\n--- server log ---\n{}",
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until an archive attempt has failed and returns pg_stat_archiver.last_failed_wal.
    /// Panics after `timeout`.
    #[track_caller]
    pub fn wait_archive_failure(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let row = self
                .psql("select failed_count, coalesce(last_failed_wal, '') from pg_stat_archiver");
            if let Some((failed, last_failed)) = row.split_once('|') {
                if failed != "0" {
                    return last_failed.to_owned();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "no archive attempt failed within {timeout:?} (pg_stat_archiver: {row})\n\
                     --- server log ---\n{}",
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// (archived_count, failed_count, last_archived_wal) from pg_stat_archiver.
    pub fn archiver_stats(&self) -> (u64, u64, String) {
        let row = self.psql(
            "select archived_count, failed_count, coalesce(last_archived_wal, '') \
             from pg_stat_archiver",
        );
        let f: Vec<&str> = row.split('|').collect();
        let num = |s: &str| -> u64 {
            s.parse()
                .unwrap_or_else(|e| panic!("pg_stat_archiver row {row:?}: {e}"))
        };
        (num(f[0]), num(f[1]), f[2].to_owned())
    }

    /// The base temp dir holding the socket, the log and (for `init`) the data directory.
    pub fn base_dir(&self) -> &Path {
        self.base.path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- server log {} (last 60 lines) ---\n{}\n--- end of server log ---",
                self.log_file.display(),
                self.log_tail(60)
            );
        }
        if self.running {
            let mut cmd = self.pg_ctl();
            cmd.arg("stop").arg("-D").arg(&self.data_dir).args([
                "-m",
                "immediate",
                "-w",
                "-t",
                "60",
            ]);
            let out = output(&mut cmd);
            if !out.status.success() {
                eprintln!("could not stop PostgreSQL\n{}", describe(&cmd, &out));
            }
        }
    }
}

/// Harness self-check: a cluster starts, answers, and (as root) runs as `postgres`.
#[test]
fn harness_cluster_starts_and_answers() {
    let pg = PgCluster::init();
    assert_eq!(pg.psql("select 1"), "1");
    let pid_file = pg.data_dir().join("postmaster.pid");
    let owner = fs::metadata(&pid_file)
        .unwrap_or_else(|e| panic!("stat {}: {e}", pid_file.display()))
        .uid();
    // SAFETY: geteuid has no preconditions.
    let expected = pg_user().map_or(unsafe { libc::geteuid() }, |u| u.uid);
    assert_eq!(owner, expected, "postmaster.pid owner");
    assert_eq!(segno("000000010000000A000000FF"), Some(0xAFF));
    assert_eq!(segment_name(1, 0xAFF), "000000010000000A000000FF");
}

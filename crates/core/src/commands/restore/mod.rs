//! `pitr restore`: plan, lay the backup down, and configure PostgreSQL to recover to the
//! target — optionally starting it and waiting until it got there.

mod laydown;
pub mod plan;
mod start;
pub mod window;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use pitr_store::Repo;

use crate::index::ArchiveIndex;
use crate::instance::shell_word;
use crate::progress::Reporter;
use crate::repofile::BackupManifest;
use crate::time::format_pg_time;
use laydown::LayDown;
pub use laydown::LayDownStats;
pub use plan::{Plan, PlannedTablespace, Target, TimelineChoice};
pub use start::{start_and_wait, RecoveryOutcome};

/// What the server does once recovery reached the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetAction {
    Promote,
    Pause,
    Shutdown,
}

/// `pitr restore`.
pub struct RestoreRequest {
    /// The data directory to create (empty or absent unless `delta`).
    pub pgdata: PathBuf,
    pub target: Target,
    /// A record exactly at the target is already past it.
    pub exclusive: bool,
    pub timeline: TimelineChoice,
    pub action: TargetAction,
    /// Backup to restore (default: the newest that finished before the target).
    pub backup: Option<String>,
    /// Reuse files already in the data directory when their content matches.
    pub delta: bool,
    /// Tablespace OID → directory, for relocated tablespaces.
    pub remap: HashMap<u32, PathBuf>,
    /// Plan only; change nothing.
    pub dry_run: bool,
    /// Set `archive_mode = off` in the restored server (a clone); otherwise keep the backup's.
    pub archive_off: bool,
    /// Start PostgreSQL and wait until recovery reached the target.
    pub start: Option<StartOptions>,
}

/// `restore --start`.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// Port to run the server on (default: the restored configuration's).
    pub port: Option<u16>,
    /// Stop the server once recovery is done.
    pub stop_after: bool,
    /// Extra server settings, NAME=VALUE.
    pub pg_options: Vec<String>,
}

/// What a restore did: the plan, and unless it was a dry run, the lay-down and (with
/// `--start`) where recovery stopped.
pub struct RestoreReport {
    pub plan: Plan,
    /// The data directory, absolute.
    pub pgdata: PathBuf,
    pub stats: Option<LayDownStats>,
    pub recovery: Option<RecoveryOutcome>,
}

/// A postgresql.conf string value.
fn conf_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', r"\\").replace('\'', "''"))
}

/// A piece of a `restore_command` or `recovery_end_command` as PostgreSQL reads it: every
/// `%` doubled, so a path or URL holding one is not taken for `%f`, `%p` or `%r`.
fn escape_percent(s: &str) -> String {
    s.replace('%', "%%")
}

/// `restore_command` and `recovery_end_command` running `exe` against the repository at
/// `repo_url` (with the configuration file `config`, which holds the repository's options):
/// shell-quoted, then `%`-escaped, with only pitr's own `%f %p` left for PostgreSQL to
/// substitute.
fn recovery_commands(exe: &str, handed_on: &HandedOn, repo_url: &str) -> (String, String) {
    let option = |name: &str, value: &Option<String>| {
        value.as_ref().map_or(String::new(), |v| {
            format!(" --{name} {}", escape_percent(&shell_word(v)))
        })
    };
    let config = option("config", &handed_on.config)
        + &option("passphrase-file", &handed_on.passphrase_file);
    let prefix = format!(
        "{}{config} --repo {}",
        escape_percent(&shell_word(exe)),
        escape_percent(&shell_word(repo_url))
    );
    (
        format!("{prefix} restore-wal %f %p"),
        format!("{prefix} spool-clean pg_wal"),
    )
}

/// What restore_command passes on of this run's own settings: the files the binary exported,
/// absolute.
#[derive(Default)]
struct HandedOn {
    /// The configuration file read (it may hold the repository's endpoint, credentials and
    /// passphrase file), so that restore_command reads the same one.
    config: Option<String>,
    /// The file `--passphrase-file` named: restore-wal needs the same secret.
    passphrase_file: Option<String>,
}

impl HandedOn {
    fn from_env() -> HandedOn {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        HandedOn {
            config: var("PITR_CONFIG"),
            passphrase_file: var("PITR_PASSPHRASE_FILE"),
        }
    }
}

/// Recovery settings, appended to postgresql.auto.conf after removing any earlier ones.
fn recovery_settings(
    repo_url: &str,
    args: &RestoreRequest,
) -> anyhow::Result<Vec<(String, String)>> {
    let exe = std::env::current_exe().context("find the pitr binary's own path")?;
    let exe = exe.canonicalize().unwrap_or(exe);
    Ok(recovery_settings_for(
        &exe.display().to_string(),
        &HandedOn::from_env(),
        repo_url,
        args,
    ))
}

fn recovery_settings_for(
    exe: &str,
    handed_on: &HandedOn,
    repo_url: &str,
    args: &RestoreRequest,
) -> Vec<(String, String)> {
    let target = &args.target;
    let (command, cleanup) = recovery_commands(exe, handed_on, repo_url);
    let mut out = vec![
        ("restore_command".to_string(), conf_value(&command)),
        ("recovery_end_command".to_string(), conf_value(&cleanup)),
    ];
    match target {
        Target::End => {}
        Target::Immediate => out.push(("recovery_target".into(), conf_value("immediate"))),
        Target::Time(t) => out.push((
            "recovery_target_time".into(),
            conf_value(&format_pg_time(t)),
        )),
        Target::Lsn(l) => out.push(("recovery_target_lsn".into(), conf_value(&l.to_string()))),
        Target::Xid(x) => out.push(("recovery_target_xid".into(), conf_value(&x.to_string()))),
        Target::Name(n) => out.push(("recovery_target_name".into(), conf_value(n))),
    }
    if !matches!(target, Target::End | Target::Immediate) {
        out.push((
            "recovery_target_inclusive".into(),
            (!args.exclusive).to_string(),
        ));
    }
    out.push((
        "recovery_target_timeline".into(),
        conf_value(&args.timeline.to_string()),
    ));
    if target != &Target::End {
        let action = match args.action {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        };
        out.push(("recovery_target_action".into(), conf_value(action)));
    }
    if args.archive_off {
        // A clone: it must never archive (into this repository least of all).
        out.push(("archive_mode".into(), conf_value("off")));
    }
    out
}

const MARK: &str = "# pitr restore";

fn write_recovery_conf(
    pgdata: &Path,
    settings: &[(String, String)],
    header: &str,
) -> anyhow::Result<()> {
    let dir = laydown::open_dir(pgdata)?;
    let old = laydown::read_at(&dir, pgdata, "postgresql.auto.conf")?.unwrap_or_default();
    // Earlier settings of the keys written now go (a restore over a restore, with --delta).
    let ours = |key: &str| {
        key == "restore_command"
            || key.starts_with("recovery_")
            || settings.iter().any(|(k, _)| k == key)
    };
    let mut text: String = old
        .lines()
        .filter(|l| {
            let key = l.split(['=', ' ', '\t']).next().unwrap_or("").trim();
            !(l.starts_with(MARK) || ours(key))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("{MARK}: {header}\n"));
    for (k, v) in settings {
        text.push_str(&format!("{k} = {v}\n"));
    }
    let mode = if group_access(pgdata) { 0o640 } else { 0o600 };
    laydown::write_durably_at(&dir, pgdata, "postgresql.auto.conf", text.as_bytes(), mode)?;
    laydown::write_durably_at(&dir, pgdata, "recovery.signal", b"", mode)
}

/// Whether the laid-down data directory allows group access (0750), so that the files
/// restore writes itself get 0640 like the rest.
fn group_access(pgdata: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(pgdata).is_ok_and(|m| m.permissions().mode() & 0o050 != 0)
}

/// Point remapped tablespaces at their new directories in `tablespace_map` (PostgreSQL makes
/// the pg_tblspc links from it at startup).
fn rewrite_tablespace_map(pgdata: &Path, remap: &HashMap<u32, PathBuf>) -> anyhow::Result<()> {
    if remap.is_empty() {
        return Ok(());
    }
    let dir = laydown::open_dir(pgdata)?;
    let text = laydown::read_at(&dir, pgdata, "tablespace_map")?.with_context(|| {
        format!(
            "{} is missing: the backup has no tablespace map to remap",
            pgdata.join("tablespace_map").display()
        )
    })?;
    let mut out = String::new();
    for line in text.lines() {
        let oid = line.split(' ').next().and_then(|o| o.parse::<u32>().ok());
        match oid.and_then(|o| remap.get(&o).map(|d| (o, d))) {
            Some((o, d)) => out.push_str(&format!("{o} {}\n", d.display())),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let mode = if group_access(pgdata) { 0o640 } else { 0o600 };
    laydown::write_durably_at(&dir, pgdata, "tablespace_map", out.as_bytes(), mode)
}

/// Plan the restore, and unless it is a dry run lay the backup down, configure recovery and
/// (with `start`) run it.
pub async fn restore(
    repo: &Repo,
    args: RestoreRequest,
    reporter: &dyn Reporter,
) -> anyhow::Result<RestoreReport> {
    if args.start.is_some() && !args.dry_run {
        start::refuse_root()?;
    }
    let backups = BackupManifest::list(repo)
        .await?
        .for_restore(args.backup.as_deref())?;
    // The archive counted in the segment size of the backup the plan will most likely use
    // (every backup of one cluster has the same).
    let seg_size = backups.last().map_or(
        pitr_pg::DEFAULT_WAL_SEGMENT_SIZE,
        BackupManifest::segment_size,
    );
    let index = ArchiveIndex::list(repo, seg_size).await?;
    let mut plan = plan::plan(
        repo.url(),
        &backups,
        &index,
        &plan::RepoArchive(repo),
        plan::PlanRequest {
            target: &args.target,
            exclusive: args.exclusive,
            backup_id: args.backup.as_deref(),
            timeline: &args.timeline,
        },
    )
    .await?;
    if args.dry_run {
        // The window as info shows it, from the same computation.
        plan.recoverable = window::window(&backups, &index, &plan::RepoArchive(repo)).await?;
    }
    let pgdata = std::path::absolute(&args.pgdata)
        .with_context(|| format!("resolve {}", args.pgdata.display()))?;
    let lay = LayDown {
        repo,
        manifest: &plan.manifest,
        pgdata: &pgdata,
        remap: &args.remap,
        delta: args.delta,
        reporter,
    };
    plan.tablespaces = lay.planned_tablespaces()?;
    lay.check_targets()?;
    if args.dry_run {
        return Ok(RestoreReport {
            plan,
            pgdata,
            stats: None,
            recovery: None,
        });
    }
    tracing::info!(
        "restore backup {} into {} for {}",
        plan.backup,
        pgdata.display(),
        plan.target
    );
    let (mut stats, last) = lay.run().await?;
    rewrite_tablespace_map(&pgdata, &args.remap)?;
    let settings = recovery_settings(repo.url(), &args)?;
    write_recovery_conf(
        &pgdata,
        &settings,
        &format!(
            "backup {} at {}",
            plan.backup,
            chrono::Utc::now().to_rfc3339()
        ),
    )?;
    // Only now, with everything else durable, the file PostgreSQL cannot start without.
    lay.finish(last, &mut stats).await?;
    tracing::info!(
        "restore {}: {} files, {} MiB fetched, {} MiB reused in {:.1} s; recovery configured",
        plan.backup,
        stats.files,
        stats.bytes_fetched >> 20,
        stats.bytes_reused >> 20,
        stats.seconds
    );
    for link in &stats.links_not_restored {
        tracing::warn!(
            "restore {}: symbolic link {link} was not made (a restore makes no link from the \
             repository); recreate it if the server needs it",
            plan.backup
        );
    }
    let recovery = match &args.start {
        Some(opts) => {
            Some(start::start_and_wait(&pgdata, &plan.manifest, args.action, opts).await?)
        }
        None => None,
    };
    Ok(RestoreReport {
        plan,
        pgdata,
        stats: Some(stats),
        recovery,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use bytes::Bytes;
    use pitr_store::{ChunkId, ChunkRef, RepoConfig};
    use serde_json::{json, Value};

    use super::*;
    use crate::progress::Silent;

    const ID: &str = "20261126T000000Z";

    async fn file(repo: &Repo, path: &str, data: &[u8], mode: u32) -> Value {
        let (r, _) = repo.put_chunk(Bytes::copy_from_slice(data)).await.unwrap();
        json!({"path": path, "kind": "file", "mode": mode, "size": data.len(), "mtime": 0,
               "chunks": [r]})
    }

    fn dir(path: &str, mode: u32) -> Value {
        json!({"path": path, "kind": "directory", "mode": mode, "size": 0, "mtime": 0})
    }

    fn link(path: &str, target: &str) -> Value {
        json!({"path": path, "kind": "symlink", "mode": 0o777, "size": 0, "mtime": 0,
               "link": target})
    }

    /// A memory repository holding one backup of `files` (a cluster without group access
    /// unless `files` says otherwise) and `tablespaces` (oid, location).
    async fn repo_with(
        files: impl AsyncFnOnce(&Repo) -> Vec<Value>,
        tablespaces: &[(u32, &str)],
    ) -> Repo {
        // One store per memory:// URL in the process: one per test repository.
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (repo, _) = Repo::init(&format!("memory://restore-test-{n}"), RepoConfig::default())
            .await
            .unwrap();
        let files = files(&repo).await;
        let server = file(&repo, "backup_manifest", b"{}", 0o600).await;
        let tablespaces: Vec<Value> = tablespaces
            .iter()
            .map(|(oid, loc)| json!({"oid": oid, "location": loc}))
            .collect();
        let m = json!({
            "format_version": 1, "id": ID, "label": ID,
            "start_time": "2026-11-26T00:00:00Z", "stop_time": "2026-11-26T00:00:01Z",
            "start_lsn": "0/2000028", "stop_lsn": "0/2000100", "timeline": 1,
            "system_identifier": "1", "pg_version": "15.18", "pg_version_num": 150018,
            "size_bytes": 3, "stored_bytes": 3,
            "wal_start": "000000010000000000000002", "wal_stop": "000000010000000000000002",
            "files": files, "tablespaces": tablespaces, "wal": [], "server_manifest": server,
        });
        repo.put_doc(
            &BackupManifest::key(ID),
            serde_json::to_vec(&m).unwrap().into(),
        )
        .await
        .unwrap();
        repo
    }

    fn request(pgdata: &Path) -> RestoreRequest {
        RestoreRequest {
            pgdata: pgdata.to_path_buf(),
            target: Target::Immediate,
            exclusive: false,
            timeline: TimelineChoice::Latest,
            action: TargetAction::Promote,
            backup: None,
            delta: false,
            remap: HashMap::new(),
            dry_run: false,
            archive_off: false,
            start: None,
        }
    }

    async fn refused(repo: &Repo, req: RestoreRequest) -> String {
        match restore(repo, req, &Silent).await {
            Ok(r) => panic!("restored {}, expected a refusal", r.pgdata.display()),
            Err(e) => format!("{e:#}"),
        }
    }

    fn mode_of(p: &Path) -> u32 {
        std::fs::symlink_metadata(p)
            .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o7777
    }

    fn is_empty(p: &Path) -> bool {
        std::fs::read_dir(p).unwrap().next().is_none()
    }

    /// A symlink entry pointing out of the data directory, then a file "inside" it: refused
    /// before anything is written (by --dry-run too), naming the backup and the entry.
    #[tokio::test]
    async fn a_symlink_entry_is_refused_and_nothing_is_written_through_it() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let target = outside.display().to_string();
        let repo = repo_with(
            async |r: &Repo| {
                vec![
                    link("base", &target),
                    file(r, "base/evil", b"owned", 0o600).await,
                ]
            },
            &[],
        )
        .await;
        let pgdata = tmp.path().join("data");
        let dry = RestoreRequest {
            dry_run: true,
            ..request(&pgdata)
        };
        for req in [dry, request(&pgdata)] {
            let e = refused(&repo, req).await;
            assert!(
                e.contains(ID)
                    && e.contains("entry base/evil is below base, which is a symbolic link"),
                "{e}"
            );
        }
        assert!(is_empty(&outside), "something was written outside");
        assert!(!pgdata.join("base").exists());
    }

    /// A DBA's link in the data directory (PostgreSQL backs up the link, not its target) is
    /// not made from the repository: the restore goes ahead and names it.
    #[tokio::test]
    async fn a_link_of_the_backup_is_named_not_made() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let target = outside.display().to_string();
        let repo = repo_with(
            async |r: &Repo| {
                vec![
                    dir("global", 0o700),
                    file(r, "global/pg_control", b"control", 0o600).await,
                    link("log", &target),
                ]
            },
            &[],
        )
        .await;
        let pgdata = tmp.path().join("data");
        let report = restore(&repo, request(&pgdata), &Silent).await.unwrap();
        let stats = report.stats.unwrap();
        assert_eq!(stats.links_not_restored, [format!("log -> {target}")]);
        assert!(
            std::fs::symlink_metadata(pgdata.join("log")).is_err(),
            "the link was made"
        );
        assert!(pgdata.join("global/pg_control").is_file());
    }

    /// `--delta` over a directory with links planted where the backup has a directory, a file
    /// and the files restore writes itself: none is followed, each is replaced.
    #[tokio::test]
    async fn delta_follows_no_planted_link() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let victim = outside.join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let repo = repo_with(
            async |r: &Repo| {
                vec![
                    dir("global", 0o700),
                    file(r, "global/pg_control", b"control", 0o600).await,
                    dir("base", 0o700),
                    file(r, "base/1", b"relation", 0o600).await,
                    file(r, "PG_VERSION", b"15\n", 0o600).await,
                ]
            },
            &[],
        )
        .await;
        let pgdata = tmp.path().join("data");
        std::fs::create_dir(&pgdata).unwrap();
        let planted = |name: &str, to: &Path| {
            std::os::unix::fs::symlink(to, pgdata.join(name)).unwrap();
        };
        planted("base", &outside);
        planted("PG_VERSION", &victim);
        planted("postgresql.auto.conf", &victim);
        planted("recovery.signal", &victim);
        planted("global", &outside);
        let req = RestoreRequest {
            delta: true,
            ..request(&pgdata)
        };
        restore(&repo, req, &Silent).await.unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            1,
            "only the victim file is outside"
        );
        for (p, want) in [
            ("base/1", &b"relation"[..]),
            ("PG_VERSION", b"15\n"),
            ("global/pg_control", b"control"),
        ] {
            let path = pgdata.join(p);
            assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
            assert_eq!(std::fs::read(&path).unwrap(), want, "{p}");
        }
        for p in ["base", "global", "postgresql.auto.conf", "recovery.signal"] {
            let meta = std::fs::symlink_metadata(pgdata.join(p)).unwrap();
            assert!(!meta.is_symlink(), "{p} is still a link");
        }
        let auto = std::fs::read_to_string(pgdata.join("postgresql.auto.conf")).unwrap();
        assert!(auto.contains("restore_command"), "{auto}");
    }

    /// Modes are PostgreSQL's, by the backup's group access: 0777 and setuid entries are laid
    /// down 0700/0600, or 0750/0640 when the backed-up directory allowed group access.
    #[tokio::test]
    async fn modes_are_masked_to_what_postgresql_creates() {
        for (global, want_dir, want_file) in [(0o700, 0o700, 0o600), (0o750, 0o750, 0o640)] {
            let tmp = tempfile::tempdir().unwrap();
            let repo = repo_with(
                async |r: &Repo| {
                    vec![
                        dir("global", global),
                        dir("base", 0o1777),
                        file(r, "base/x", b"x", 0o4777).await,
                        file(r, "base/y", b"y", 0o4755).await,
                        file(r, "global/pg_control", b"c", 0o2777).await,
                    ]
                },
                &[],
            )
            .await;
            let pgdata = tmp.path().join("data");
            restore(&repo, request(&pgdata), &Silent).await.unwrap();
            for (p, want) in [
                ("", want_dir),
                ("global", want_dir),
                ("base", want_dir),
                ("base/x", want_file),
                ("base/y", want_file),
                ("global/pg_control", want_file),
                ("postgresql.auto.conf", want_file),
                ("recovery.signal", want_file),
            ] {
                assert_eq!(
                    mode_of(&pgdata.join(p)),
                    want,
                    "mode of {p:?} (backup's global {global:o})"
                );
            }
        }
    }

    fn ts_files(oid: u32) -> impl AsyncFnOnce(&Repo) -> Vec<Value> {
        async move |r: &Repo| {
            let mut f = file(r, "PG_15_202209061/5/1", b"ts", 0o600).await;
            f["tablespace"] = json!(oid);
            vec![
                dir("global", 0o700),
                dir("pg_tblspc", 0o700),
                link(&format!("pg_tblspc/{oid}"), "/stored/target"),
                f,
            ]
        }
    }

    /// A tablespace location from the backup inside or above the data directory, or not
    /// absolute, is refused with and without --delta (and by --dry-run); a non-empty one
    /// without --delta; with --delta, one that holds no PG_15_* layout.
    #[tokio::test]
    async fn foreign_tablespace_locations_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let pgdata = tmp.path().join("data");
        let inside = pgdata.join("ts");
        let cases = [
            (inside.display().to_string(), "inside the data directory"),
            (
                tmp.path().display().to_string(),
                "contains the data directory",
            ),
            ("relative/ts".to_string(), "not a plain absolute path"),
            (
                format!("{}/x/../data/ts", tmp.path().display()),
                "not a plain absolute path",
            ),
        ];
        for (location, why) in &cases {
            let repo = repo_with(ts_files(16400), &[(16400, location)]).await;
            for (delta, dry_run) in [(false, false), (true, false), (false, true)] {
                let req = RestoreRequest {
                    delta,
                    dry_run,
                    ..request(&pgdata)
                };
                let e = refused(&repo, req).await;
                assert!(e.contains(why), "{location} (delta {delta}): {e}");
            }
            assert!(
                !pgdata.exists(),
                "{location}: the data directory was created"
            );
        }

        // Not empty: refused without --delta; with it, only if it holds this cluster's layout.
        let foreign = tmp.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("precious"), b"data").unwrap();
        let loc = foreign.display().to_string();
        let repo = repo_with(ts_files(16400), &[(16400, &loc)]).await;
        let e = refused(&repo, request(&pgdata)).await;
        assert!(e.contains("is not empty") && e.contains(&loc), "{e}");
        let delta = || RestoreRequest {
            delta: true,
            ..request(&pgdata)
        };
        let e = refused(&repo, delta()).await;
        assert!(
            e.contains("holds no PG_15_* tablespace layout") && e.contains(&loc),
            "{e}"
        );
        assert_eq!(std::fs::read(foreign.join("precious")).unwrap(), b"data");
        assert!(!pgdata.exists());

        // With the layout --delta goes ahead, but leaves what is not this backup's alone.
        std::fs::create_dir_all(foreign.join("PG_15_202209061/5/old")).unwrap();
        restore(&repo, delta(), &Silent).await.unwrap();
        assert_eq!(std::fs::read(foreign.join("precious")).unwrap(), b"data");
        assert!(!foreign.join("PG_15_202209061/5/old").exists());
        assert_eq!(
            std::fs::read(foreign.join("PG_15_202209061/5/1")).unwrap(),
            b"ts"
        );
    }

    /// The dry run shows each tablespace's directory; pitr makes the pg_tblspc link to it
    /// itself, never to the target the manifest stored; --tablespace-map wins.
    #[tokio::test]
    async fn tablespaces_go_where_the_plan_shows() {
        let tmp = tempfile::tempdir().unwrap();
        let pgdata = tmp.path().join("data");
        let orig = tmp.path().join("ts-orig");
        let moved = tmp.path().join("ts-moved");
        let loc = orig.display().to_string();
        let repo = repo_with(ts_files(16400), &[(16400, &loc)]).await;
        let dry = RestoreRequest {
            dry_run: true,
            ..request(&pgdata)
        };
        let r = restore(&repo, dry, &Silent).await.unwrap();
        let plan = serde_json::to_value(&r.plan).unwrap();
        assert_eq!(
            plan["tablespaces"],
            json!([{"oid": 16400, "location": loc, "directory": loc, "remapped": false}])
        );
        let r = restore(&repo, request(&pgdata), &Silent).await.unwrap();
        assert_eq!(r.plan.tablespaces[0].directory, orig);
        assert_eq!(
            std::fs::read_link(pgdata.join("pg_tblspc/16400")).unwrap(),
            orig
        );
        assert_eq!(
            std::fs::read(orig.join("PG_15_202209061/5/1")).unwrap(),
            b"ts"
        );

        let pgdata2 = tmp.path().join("data2");
        let mut req = request(&pgdata2);
        req.remap.insert(16400, moved.clone());
        // The backup has no tablespace_map file here; the remap itself is what is checked.
        let e = refused(&repo, req).await;
        assert!(e.contains("tablespace_map"), "{e}");
        assert_eq!(
            std::fs::read_link(pgdata2.join("pg_tblspc/16400")).unwrap(),
            moved
        );
        assert!(!pgdata2.join("global/pg_control").exists());
    }

    /// A lay-down that fails half-way (a chunk missing from the repository) leaves no
    /// global/pg_control, so PostgreSQL cannot be started on the directory; --delta removes
    /// the old one before it changes anything.
    #[tokio::test]
    async fn a_failed_restore_leaves_no_pg_control() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = ChunkRef {
            id: ChunkId::of(b"never stored"),
            len: 12,
        };
        let repo = repo_with(
            async |r: &Repo| {
                let mut files = vec![
                    dir("global", 0o700),
                    file(r, "global/pg_control", b"control", 0o600).await,
                    dir("base", 0o700),
                ];
                for i in 0..20 {
                    files.push(file(r, &format!("base/{i}"), b"x", 0o600).await);
                }
                files.push(json!({"path": "base/lost", "kind": "file", "mode": 0o600,
                                  "size": 12, "mtime": 0, "chunks": [missing]}));
                files
            },
            &[],
        )
        .await;
        let pgdata = tmp.path().join("data");
        let e = refused(&repo, request(&pgdata)).await;
        assert!(e.contains("base/lost"), "{e}");
        assert!(pgdata.join("base/0").exists(), "the lay-down had started");
        assert!(!pgdata.join("global/pg_control").exists());

        std::fs::write(pgdata.join("global/pg_control"), b"old cluster").unwrap();
        let req = RestoreRequest {
            delta: true,
            ..request(&pgdata)
        };
        refused(&repo, req).await;
        assert!(!pgdata.join("global/pg_control").exists());
    }

    /// What PostgreSQL does to a restore_command: %f, %p, %r substituted, %% → %.
    fn substitute(cmd: &str, f: &str, p: &str) -> String {
        let mut out = String::new();
        let mut it = cmd.chars();
        while let Some(c) = it.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match it.next() {
                Some('f') => out.push_str(f),
                Some('p') => out.push_str(p),
                Some('r') => out.push_str("000000010000000000000001"),
                Some('%') => out.push('%'),
                Some(o) => {
                    out.push('%');
                    out.push(o);
                }
                None => out.push('%'),
            }
        }
        out
    }

    /// A `%` in the repository URL or the binary's path reaches the shell as it was.
    #[test]
    fn percent_in_paths_is_escaped_for_postgresql() {
        let settings = recovery_settings_for(
            "/opt/pitr%p/bin/pitr",
            &HandedOn::default(),
            "file:///srv/repo%f%20x",
            &request(Path::new("/d")),
        );
        let value = |k: &str| {
            let v = &settings.iter().find(|(key, _)| key == k).unwrap().1;
            v.trim_matches('\'').to_string()
        };
        assert_eq!(
            substitute(
                &value("restore_command"),
                "000000010000000000000002",
                "pg_wal/RECOVERYXLOG"
            ),
            "/opt/pitr%p/bin/pitr --repo file:///srv/repo%f%20x restore-wal 000000010000000000000002 pg_wal/RECOVERYXLOG"
        );
        assert_eq!(
            substitute(&value("recovery_end_command"), "x", "y"),
            "/opt/pitr%p/bin/pitr --repo file:///srv/repo%f%20x spool-clean pg_wal"
        );
        // The configuration file and the passphrase file the restore read go along (quoted,
        // escaped).
        let settings = recovery_settings_for(
            "/usr/bin/pitr",
            &HandedOn {
                config: Some("/etc/pitr/my cluster%.toml".into()),
                passphrase_file: Some("/etc/pitr/key 100%".into()),
            },
            "s3://b/p",
            &request(Path::new("/d")),
        );
        let value = &settings
            .iter()
            .find(|(key, _)| key == "restore_command")
            .unwrap()
            .1;
        assert_eq!(
            substitute(&value[1..value.len() - 1].replace("''", "'"), "N", "P"),
            "/usr/bin/pitr --config '/etc/pitr/my cluster%.toml' --passphrase-file '/etc/pitr/key 100%' --repo s3://b/p restore-wal N P"
        );
    }

    /// `--archive-mode off` (a clone) writes archive_mode = off; the default keeps the
    /// backup's setting untouched.
    #[test]
    fn archive_mode_off_only_when_asked() {
        let has_off = |archive_off| {
            let req = RestoreRequest {
                archive_off,
                ..request(Path::new("/d"))
            };
            recovery_settings_for("/bin/pitr", &HandedOn::default(), "/repo", &req)
                .iter()
                .any(|(k, v)| k == "archive_mode" && v == "'off'")
        };
        assert!(has_off(true));
        assert!(!has_off(false));
    }
}

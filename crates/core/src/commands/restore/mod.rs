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

/// What the server does once recovery reached the target (`--target-action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
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
    /// `--tablespaces-as-recorded`: lay a tablespace not in `remap` down at the location the
    /// backup recorded (each is logged first). Without it, such a tablespace is refused.
    pub tablespaces_as_recorded: bool,
    /// Plan only; change nothing.
    pub dry_run: bool,
    /// Set `archive_mode = off` in the restored server (a clone); otherwise keep the backup's.
    pub archive_off: bool,
    /// Start PostgreSQL and wait until recovery reached the target.
    pub start: Option<StartOptions>,
    /// What the restore_command written passes on of this run's settings.
    pub handed_on: HandedOn,
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
    let config: String = handed_on
        .args()
        .iter()
        .map(|a| format!(" {}", escape_percent(&shell_word(a))))
        .collect();
    let prefix = format!(
        "{}{config} --repo {}",
        escape_percent(&shell_word(exe)),
        escape_percent(&shell_word(repo_url))
    );
    let expect: String = match &handed_on.repository_id {
        Some(id) => format!(" --repository-id {}", escape_percent(&shell_word(id))),
        None => String::new(),
    };
    (
        format!("{prefix} restore-wal{expect} %f %p"),
        format!("{prefix} spool-clean pg_wal"),
    )
}

/// What a pitr process this run writes or starts (restore_command, restore-wal's prefetch
/// worker) is given of this run's own settings, on its command line: files, absolute. The
/// rest it reads from the same configuration file, or inherits with the environment
/// (`PITR_JOBS`, `PITR_PASSPHRASE`, `AWS_*`, …), which pitr never changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandedOn {
    /// The configuration file read (it may hold the repository's endpoint, credentials and
    /// passphrase file), so that the child reads the same one (`--config`).
    pub config: Option<String>,
    /// The file `--passphrase-file` named: restore-wal needs the same secret.
    pub passphrase_file: Option<String>,
    /// The encrypted repository a restore came from (its `repository_id`), which the
    /// restore_command it writes insists on (`restore-wal --repository-id`): a config.json
    /// replaced by an unencrypted one, or another repository at the URL, is refused even by a
    /// restore-wal that has no secret to notice it with. Filled by [`restore`] from the
    /// repository it opened, never from settings.
    pub repository_id: Option<String>,
}

impl HandedOn {
    /// The options giving these settings to a pitr command line, before the subcommand.
    pub fn args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (flag, value) in [
            ("--config", &self.config),
            ("--passphrase-file", &self.passphrase_file),
        ] {
            if let Some(v) = value {
                out.push(flag.to_string());
                out.push(v.clone());
            }
        }
        out
    }
}

/// Recovery settings, appended to postgresql.auto.conf after removing any earlier ones.
fn recovery_settings(
    repo_url: &str,
    args: &RestoreRequest,
    repo: &Repo,
) -> anyhow::Result<Vec<(String, String)>> {
    let exe = std::env::current_exe().context("find the pitr binary's own path")?;
    let exe = exe.canonicalize().unwrap_or(exe);
    // restore_command insists on this repository when it is an encrypted one.
    let handed_on = HandedOn {
        repository_id: repo
            .config()
            .encryption
            .as_ref()
            .map(|e| e.repository_id.clone()),
        ..args.handed_on.clone()
    };
    Ok(recovery_settings_for(
        &exe.display().to_string(),
        &handed_on,
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
    let chosen = match target {
        Target::End => None,
        Target::Immediate => Some(("recovery_target", "immediate".to_string())),
        Target::Time(t) => Some(("recovery_target_time", format_pg_time(t))),
        Target::Lsn(l) => Some(("recovery_target_lsn", l.to_string())),
        Target::Xid(x) => Some(("recovery_target_xid", x.to_string())),
        Target::Name(n) => Some(("recovery_target_name", n.clone())),
    };
    // Every other target is written empty, before the chosen one: postgresql.auto.conf is read
    // last and a later setting of the same name wins, so a target the backup's configuration
    // (or a file it includes) still sets is switched off rather than combined with ours.
    for name in RECOVERY_TARGETS {
        if chosen.as_ref().is_none_or(|(c, _)| *c != name) {
            out.push((name.to_string(), conf_value("")));
        }
    }
    if let Some((name, value)) = chosen {
        out.push((name.to_string(), conf_value(&value)));
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

/// The settings that name what recovery stops at: at most one may be set.
const RECOVERY_TARGETS: [&str; 5] = [
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
];

/// The parameter a configuration file line sets, lower-cased as PostgreSQL compares names
/// (`  Recovery_Target_Time='…'`, `recovery_target_time '…'` and `RECOVERY_TARGET_TIME = …`
/// are one setting); `None` for a comment, a blank line or an `include`.
fn conf_key(line: &str) -> Option<String> {
    let key: String = line
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
        .collect();
    let key = key.to_ascii_lowercase();
    (!key.is_empty() && !key.starts_with("include")).then_some(key)
}

/// postgresql.conf with every `recovery_target*` setting of the backup commented out (a
/// restore to the end of the archive would otherwise stop at the backup's old target); `None`
/// when there is none.
fn neutralised_conf(text: &str) -> Option<String> {
    let mut changed = false;
    let out = text
        .lines()
        .map(|l| {
            if conf_key(l).is_some_and(|k| k.starts_with("recovery_target")) {
                changed = true;
                format!("{MARK}: the backup's recovery target, not used: {l}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    changed.then_some(out)
}

fn write_recovery_conf(
    pgdata: &Path,
    settings: &[(String, String)],
    header: &str,
) -> anyhow::Result<()> {
    let dir = laydown::open_dir(pgdata)?;
    let mode = if group_access(pgdata) { 0o640 } else { 0o600 };
    if let Some(conf) = laydown::read_at(&dir, pgdata, "postgresql.conf")? {
        if let Some(text) = neutralised_conf(&conf) {
            laydown::write_durably_at(&dir, pgdata, "postgresql.conf", text.as_bytes(), mode)?;
        }
    }
    let old = laydown::read_at(&dir, pgdata, "postgresql.auto.conf")?.unwrap_or_default();
    // Earlier settings of the keys written now go (a restore over a restore, with --delta),
    // and every recovery setting the backup carried, however its name is spelt.
    let ours = |key: &str| {
        key == "restore_command"
            || key.starts_with("recovery_")
            || settings.iter().any(|(k, _)| k == key)
    };
    let mut text: String = old
        .lines()
        .filter(|l| !(l.starts_with(MARK) || conf_key(l).is_some_and(|k| ours(&k))))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("{MARK}: {header}\n"));
    for (k, v) in settings {
        text.push_str(&format!("{k} = {v}\n"));
    }
    laydown::write_durably_at(&dir, pgdata, "postgresql.auto.conf", text.as_bytes(), mode)?;
    laydown::write_durably_at(&dir, pgdata, "recovery.signal", b"", mode)
}

/// Whether the laid-down data directory allows group access (0750), so that the files
/// restore writes itself get 0640 like the rest.
fn group_access(pgdata: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(pgdata).is_ok_and(|m| m.permissions().mode() & 0o050 != 0)
}

/// Write `tablespace_map` from the plan: one line per tablespace, pointing at the directory
/// the user named for it (PostgreSQL makes the pg_tblspc links from this file at startup, so
/// it must name no location the user did not). Lines of the backup's own file for a
/// tablespace the backup does not list are dropped, with a warning.
fn write_tablespace_map(
    pgdata: &Path,
    backup: &str,
    tablespaces: &[PlannedTablespace],
) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let dir = laydown::open_dir(pgdata)?;
    let old = laydown::read_at(&dir, pgdata, "tablespace_map")?;
    if old.is_none() && tablespaces.is_empty() {
        return Ok(());
    }
    for line in old.as_deref().unwrap_or("").lines() {
        let oid = line.split(' ').next().and_then(|o| o.parse::<u32>().ok());
        if !oid.is_some_and(|o| tablespaces.iter().any(|t| t.oid == o)) {
            tracing::warn!(
                "restore {backup}: dropped {line:?} from tablespace_map: the backup lists no such \
                 tablespace"
            );
        }
    }
    let mut out = Vec::new();
    for t in tablespaces {
        out.extend_from_slice(format!("{} ", t.oid).as_bytes());
        // As PostgreSQL writes it: newline, carriage return and backslash escaped.
        for &b in t.directory.as_os_str().as_bytes() {
            if matches!(b, b'\n' | b'\r' | b'\\') {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'\n');
    }
    let mode = if group_access(pgdata) { 0o640 } else { 0o600 };
    laydown::write_durably_at(&dir, pgdata, "tablespace_map", &out, mode)
}

/// Plan the restore, and unless it is a dry run lay the backup down, configure recovery and
/// (with `start`) run it.
pub async fn restore(
    repo: &Repo,
    mut args: RestoreRequest,
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
    plan.archive_mode = if args.archive_off { "off" } else { "preserve" };
    for s in &plan.stray_timelines {
        tracing::warn!(
            "restore {}: timeline {} is passed over: {} (a stray fork, e.g. a side-by-side restore \
             that archived here; `pitr expire --retire-timeline {}` removes it)",
            plan.backup,
            s.timeline,
            s.reason,
            s.timeline
        );
    }
    if args.timeline == TimelineChoice::Latest && !plan.stray_timelines.is_empty() {
        // PostgreSQL's `latest` would pick the stray (the newest history file it can fetch)
        // and refuse it: name the timeline the plan follows instead.
        args.timeline = TimelineChoice::Id(plan.timeline.0);
    }
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
        as_recorded: args.tablespaces_as_recorded,
        delta: args.delta,
        reporter,
    };
    plan.tablespaces = lay.planned_tablespaces()?;
    for t in plan.tablespaces.iter().filter(|t| !t.remapped) {
        tracing::warn!(
            "restore {}: tablespace {} goes to its recorded location {} \
             (--tablespaces-as-recorded)",
            plan.backup,
            t.oid,
            t.directory.display()
        );
    }
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
    tracing::info!(
        "restore {}: archive_mode {} in the restored server{}",
        plan.backup,
        plan.archive_mode,
        if args.archive_off {
            " (it archives nothing)"
        } else {
            " (the backup's setting: once promoted it archives where its archive_command points; \
             use --archive-mode off for a clone)"
        }
    );
    let (mut stats, last) = lay.run().await?;
    write_tablespace_map(&pgdata, &plan.backup, &plan.tablespaces)?;
    let settings = recovery_settings(repo.url(), &args, repo)?;
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
        let (repo, _) = Repo::init(
            &format!("memory://restore-test-{n}"),
            RepoConfig::default(),
            &pitr_store::RepoOptions::default(),
        )
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
            tablespaces_as_recorded: false,
            dry_run: false,
            archive_off: false,
            start: None,
            handed_on: HandedOn::default(),
        }
    }

    /// [`request`] with `--tablespaces-as-recorded`.
    fn as_recorded(pgdata: &Path) -> RestoreRequest {
        RestoreRequest {
            tablespaces_as_recorded: true,
            ..request(pgdata)
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

    /// Two tablespaces (16400, 16401), one file each.
    fn two_ts_files() -> impl AsyncFnOnce(&Repo) -> Vec<Value> {
        async move |r: &Repo| {
            let mut out = vec![dir("global", 0o700), dir("pg_tblspc", 0o700)];
            for oid in [16400u32, 16401] {
                let mut f = file(r, "PG_15_202209061/5/1", b"ts", 0o600).await;
                f["tablespace"] = json!(oid);
                out.push(link(&format!("pg_tblspc/{oid}"), "/stored/target"));
                out.push(f);
            }
            out
        }
    }

    /// Two tablespaces overlapping each other (one inside the other, or the same directory
    /// reached through a link), and a tablespace reaching into the data directory through a
    /// link, are refused before anything is laid down, by --dry-run too.
    #[tokio::test]
    async fn overlapping_tablespaces_are_refused_even_through_links() {
        let tmp = tempfile::tempdir().unwrap();
        let pgdata = tmp.path().join("data");
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        std::os::unix::fs::symlink(tmp.path(), tmp.path().join("up")).unwrap();
        let at = |p: &Path| p.display().to_string();
        let cases = [
            // one inside the other
            (
                at(&a),
                at(&a.join("inner")),
                "is inside or the same as tablespace",
            ),
            // the same directory, once through a link
            (at(&a), at(&b.join("x/..")), "not a plain absolute path"),
            (
                at(&a.join("t")),
                at(&b.join("t")),
                "is inside or the same as tablespace",
            ),
            // into the data directory through a link
            (
                at(&a.join("t")),
                at(&tmp.path().join("up/data/ts")),
                "inside the data directory",
            ),
        ];
        for (first, second, why) in &cases {
            let repo = repo_with(two_ts_files(), &[(16400, first), (16401, second)]).await;
            for dry_run in [false, true] {
                let e = refused(
                    &repo,
                    RestoreRequest {
                        dry_run,
                        ..as_recorded(&pgdata)
                    },
                )
                .await;
                assert!(e.contains(why), "{first} and {second}: {e}");
            }
            // the same through --tablespace-map
            let remap = HashMap::from([
                (16400, PathBuf::from(first)),
                (16401, PathBuf::from(second)),
            ]);
            let e = refused(
                &repo,
                RestoreRequest {
                    remap,
                    ..request(&pgdata)
                },
            )
            .await;
            assert!(
                e.contains(why) || (why.contains("plain") && e.contains("inside or the same")),
                "{first} and {second} mapped: {e}"
            );
            assert!(
                !pgdata.exists(),
                "{first}, {second}: the data directory was made"
            );
            assert!(
                is_empty(&a),
                "{first}, {second}: something was laid down in {}",
                a.display()
            );
        }
    }

    /// A tablespace location from the backup inside or above the data directory, or not
    /// absolute, is refused with and without --delta (and by --dry-run); a non-empty one
    /// without --delta; with --delta, one that holds none of the backup's catalog version
    /// directories.
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
                    ..as_recorded(&pgdata)
                };
                let e = refused(&repo, req).await;
                assert!(e.contains(why), "{location} (delta {delta}): {e}");
            }
            assert!(
                !pgdata.exists(),
                "{location}: the data directory was created"
            );
        }

        // Not empty: refused without --delta; with it, only if it holds this backup's layout.
        let foreign = tmp.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("precious"), b"data").unwrap();
        let loc = foreign.display().to_string();
        let repo = repo_with(ts_files(16400), &[(16400, &loc)]).await;
        let e = refused(&repo, as_recorded(&pgdata)).await;
        assert!(e.contains("is not empty") && e.contains(&loc), "{e}");
        let delta = || RestoreRequest {
            delta: true,
            ..as_recorded(&pgdata)
        };
        let e = refused(&repo, delta()).await;
        assert!(
            e.contains("holds none of backup") && e.contains("PG_15_202209061") && e.contains(&loc),
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

    /// The problems `verify` reports for backup `id` (all backups if `None`).
    async fn verify_problems(repo: &Repo, id: Option<&str>) -> Vec<String> {
        let req = crate::verify::VerifyRequest {
            backup: id.map(str::to_string),
            ..Default::default()
        };
        crate::verify::verify(repo, req, &Silent)
            .await
            .unwrap()
            .problems
    }

    /// Whatever a restore refuses in a manifest, verify reports (one check, run by both): a
    /// file whose chunks do not add up to its size, a deduplicated chunk named with another
    /// length at a later reference — in the same backup, or in another backup (where each
    /// manifest alone holds together, and verify reads the chunk at each length it is named
    /// with). The restore refuses before it creates anything.
    #[tokio::test]
    async fn verify_reports_what_restore_refuses() {
        let tmp = tempfile::tempdir().unwrap();
        let pgdata = tmp.path().join("data");
        let base = async |r: &Repo| {
            vec![
                dir("global", 0o700),
                file(r, "global/pg_control", b"control", 0o600).await,
                dir("base", 0o700),
            ]
        };
        // A file of 5 bytes whose one chunk has 3.
        let repo = repo_with(
            async |r: &Repo| {
                let mut f = base(r).await;
                let mut short = file(r, "base/short", b"abc", 0o600).await;
                short["size"] = json!(5);
                f.push(short);
                f
            },
            &[],
        )
        .await;
        let e = refused(&repo, request(&pgdata)).await;
        assert!(e.contains("file base/short has 5 bytes"), "{e}");
        assert!(!pgdata.exists(), "the restore began");
        let problems = verify_problems(&repo, Some(ID)).await;
        assert!(
            problems
                .iter()
                .any(|p| p.contains("file base/short has 5 bytes")),
            "{problems:?}"
        );

        // The same chunk twice in one backup, the second time one byte longer (the file's
        // size agreeing with it).
        let repo = repo_with(
            async |r: &Repo| {
                let mut f = base(r).await;
                let first = file(r, "base/a", b"shared", 0o600).await;
                let mut second = first.clone();
                second["path"] = json!("base/b");
                second["size"] = json!(7);
                second["chunks"][0]["len"] = json!(7);
                f.push(first);
                f.push(second);
                f
            },
            &[],
        )
        .await;
        let e = refused(&repo, request(&pgdata)).await;
        assert!(e.contains("is 7 bytes in file base/b"), "{e}");
        assert!(!pgdata.exists(), "the restore began");
        let problems = verify_problems(&repo, Some(ID)).await;
        assert!(
            problems
                .iter()
                .any(|p| p.contains("is 7 bytes in file base/b")),
            "{problems:?}"
        );

        // Across two backups: the first names the chunk rightly, the second (on its own
        // consistent) with a length one byte longer.
        let repo = repo_with(
            async |r: &Repo| {
                let mut f = base(r).await;
                f.push(file(r, "base/a", b"shared", 0o600).await);
                f
            },
            &[],
        )
        .await;
        let mut m = BackupManifest::list(&repo).await.unwrap().docs.remove(0);
        let later = "20261127T000000Z";
        m.id = later.to_string();
        m.label = later.to_string();
        m.start_time += chrono::Duration::days(1);
        m.stop_time += chrono::Duration::days(1);
        let f = m
            .files
            .iter_mut()
            .find(|f| f.path.as_str() == "base/a")
            .unwrap();
        f.chunks[0].len += 1;
        f.size += 1;
        repo.put_doc(
            &BackupManifest::key(later),
            serde_json::to_vec(&m).unwrap().into(),
        )
        .await
        .unwrap();
        let problems = verify_problems(&repo, None).await;
        assert!(
            problems
                .iter()
                .any(|p| p.contains(&format!("backup {later} file base/a"))),
            "{problems:?}"
        );
        assert!(verify_problems(&repo, Some(ID))
            .await
            .iter()
            .all(|p| !p.contains("base/a")));
    }

    /// `--delta` cleans a tablespace directory only if it proves to be this backup's: another
    /// cluster's tablespace of the same major version at that path (a database this backup
    /// does not have in its catalog version directory) is refused, whether the directory was
    /// mapped or recorded, and keeps every file; this backup's own goes ahead.
    #[tokio::test]
    async fn delta_refuses_another_clusters_tablespace() {
        let tmp = tempfile::tempdir().unwrap();
        let pgdata = tmp.path().join("data");
        let other = tmp.path().join("other");
        let theirs = other.join("PG_15_202209061/16999/2619");
        std::fs::create_dir_all(theirs.parent().unwrap()).unwrap();
        std::fs::write(&theirs, b"their rows").unwrap();
        let loc = other.display().to_string();
        let repo = repo_with(ts_files(16400), &[(16400, &loc)]).await;
        let mut mapped = request(&pgdata);
        mapped.remap.insert(16400, other.clone());
        for req in [as_recorded(&pgdata), mapped] {
            let req = RestoreRequest { delta: true, ..req };
            let e = refused(&repo, req).await;
            assert!(
                e.contains("not this backup's tablespace")
                    && e.contains("holds 16999")
                    && e.contains(&loc),
                "{e}"
            );
            assert_eq!(std::fs::read(&theirs).unwrap(), b"their rows");
            assert!(!pgdata.exists());
        }

        // This backup's own tablespace (only database 5) is cleaned and refilled.
        std::fs::remove_dir_all(other.join("PG_15_202209061/16999")).unwrap();
        std::fs::create_dir_all(other.join("PG_15_202209061/5")).unwrap();
        std::fs::write(other.join("PG_15_202209061/5/stale"), b"x").unwrap();
        let req = RestoreRequest {
            delta: true,
            ..as_recorded(&pgdata)
        };
        restore(&repo, req, &Silent).await.unwrap();
        assert!(!other.join("PG_15_202209061/5/stale").exists());
        assert_eq!(
            std::fs::read(other.join("PG_15_202209061/5/1")).unwrap(),
            b"ts"
        );
    }

    /// A tablespace location from the repository is a proposal: without --tablespace-map or
    /// --tablespaces-as-recorded a backup with a tablespace at an absent directory (here a
    /// `.ssh` with an `authorized_keys`) is refused by the restore and the dry run, naming
    /// the OID and the recorded location, and nothing is created; mapped, the file lands in
    /// the named directory only; as recorded, where the backup said.
    #[tokio::test]
    async fn recorded_tablespace_locations_are_used_only_when_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let pgdata = tmp.path().join("data");
        let ssh = tmp.path().join("home/.ssh");
        let loc = ssh.display().to_string();
        let files = async |r: &Repo| {
            let mut key = file(r, "authorized_keys", b"ssh-ed25519 AAAA attacker", 0o600).await;
            key["tablespace"] = json!(16400);
            // The server's tablespace_map, forged too: another place for the same
            // tablespace, and a line for one the backup does not list.
            let t = tmp.path().display();
            let map = format!("16400 {t}/elsewhere\n16999 {t}/evil\n");
            vec![
                dir("global", 0o700),
                file(r, "global/pg_control", b"control", 0o600).await,
                file(r, "tablespace_map", map.as_bytes(), 0o600).await,
                key,
            ]
        };
        let repo = repo_with(files, &[(16400, &loc)]).await;
        for dry_run in [false, true] {
            for delta in [false, true] {
                let req = RestoreRequest {
                    dry_run,
                    delta,
                    ..request(&pgdata)
                };
                let e = refused(&repo, req).await;
                assert!(
                    e.contains("tablespace 16400 (recorded location")
                        && e.contains(&loc)
                        && e.contains("--tablespace-map 16400=DIR")
                        && e.contains("--tablespaces-as-recorded"),
                    "dry run {dry_run}, delta {delta}: {e}"
                );
                assert!(!ssh.exists(), "the recorded location was created");
                assert!(!tmp.path().join("home").exists());
                assert!(!pgdata.exists(), "the data directory was created");
            }
        }

        // Mapped: the tablespace goes where the user said, the recorded location stays absent.
        let mapped = tmp.path().join("ts");
        let mut req = request(&pgdata);
        req.remap.insert(16400, mapped.clone());
        restore(&repo, req, &Silent).await.unwrap();
        assert_eq!(
            std::fs::read(mapped.join("authorized_keys")).unwrap(),
            b"ssh-ed25519 AAAA attacker"
        );
        assert!(!ssh.exists(), "the recorded location was created");
        // The backup's tablespace_map (from which PostgreSQL makes the links at startup) is
        // pitr's own: the planned directory only, the line for an unlisted tablespace gone.
        assert_eq!(
            std::fs::read_to_string(pgdata.join("tablespace_map")).unwrap(),
            format!("16400 {}\n", mapped.display())
        );

        // Asked for: the dry run shows the recorded location, the restore uses it.
        let pgdata2 = tmp.path().join("data2");
        let dry = RestoreRequest {
            dry_run: true,
            ..as_recorded(&pgdata2)
        };
        let r = restore(&repo, dry, &Silent).await.unwrap();
        assert_eq!(r.plan.tablespaces[0].location, loc);
        assert_eq!(r.plan.tablespaces[0].directory, ssh);
        assert!(!ssh.exists());
        restore(&repo, as_recorded(&pgdata2), &Silent)
            .await
            .unwrap();
        assert!(ssh.join("authorized_keys").is_file());
        assert_eq!(
            std::fs::read_to_string(pgdata2.join("tablespace_map")).unwrap(),
            format!("16400 {loc}\n")
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
            ..as_recorded(&pgdata)
        };
        let r = restore(&repo, dry, &Silent).await.unwrap();
        let plan = serde_json::to_value(&r.plan).unwrap();
        assert_eq!(
            plan["tablespaces"],
            json!([{"oid": 16400, "location": loc, "directory": loc, "remapped": false}])
        );
        let r = restore(&repo, as_recorded(&pgdata), &Silent).await.unwrap();
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
        // The backup has no tablespace_map file here: pitr writes it from the plan.
        restore(&repo, req, &Silent).await.unwrap();
        assert_eq!(
            std::fs::read_link(pgdata2.join("pg_tblspc/16400")).unwrap(),
            moved
        );
        assert_eq!(
            std::fs::read_to_string(pgdata2.join("tablespace_map")).unwrap(),
            format!("16400 {}\n", moved.display())
        );
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
                repository_id: Some("0123456789abcdef0123456789abcdef".into()),
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
            "/usr/bin/pitr --config '/etc/pitr/my cluster%.toml' --passphrase-file '/etc/pitr/key 100%' --repo s3://b/p restore-wal --repository-id 0123456789abcdef0123456789abcdef N P"
        );
    }

    /// What PostgreSQL itself reads as the value of `setting` in the restored `pgdata`
    /// (`postgres -C`, run as the PostgreSQL user): `Err` with its output if it refuses.
    fn effective(pgdata: &Path, setting: &str) -> Result<String, String> {
        let out = pitr_testkit::cmd::output(
            pitr_testkit::programs::pg_command("postgres")
                .arg("-D")
                .arg(pgdata)
                .args(["-C", setting]),
        );
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "postgres -C {setting}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The backup's own recovery target — in postgresql.conf or postgresql.auto.conf, in any
    /// case and spacing — never survives a restore: to the end of the archive PostgreSQL
    /// reads no target at all, to the backup's consistency point only that one (not
    /// "multiple recovery targets").
    #[tokio::test]
    async fn the_backups_recovery_target_settings_are_neutralised() {
        let cases: [(&str, &[u8]); 3] = [
            (
                "postgresql.conf",
                b"port = 5432\nRecovery_Target_Time = '2026-11-26 00:00:00+00'\n\
                  \tRECOVERY_TARGET_ACTION=shutdown\n#recovery_target_name = ''\n",
            ),
            (
                "postgresql.auto.conf",
                b"# Do not edit this file manually!\n  Recovery_Target_Time\t'2026-11-26 00:00:00+00'\n",
            ),
            (
                "postgresql.auto.conf",
                b"recovery_target_time = '2026-11-26 00:00:00+00'\nwork_mem = '8MB'\n",
            ),
        ];
        for (name, content) in cases {
            for target in [Target::End, Target::Immediate] {
                let tmp = tempfile::tempdir().unwrap();
                let repo = repo_with(
                    async |r: &Repo| {
                        let mut files = vec![
                            dir("global", 0o700),
                            file(r, "global/pg_control", b"control", 0o600).await,
                            file(r, "PG_VERSION", b"15\n", 0o600).await,
                            file(r, name, content, 0o600).await,
                        ];
                        if name != "postgresql.conf" {
                            files.push(file(r, "postgresql.conf", b"", 0o600).await);
                        }
                        files
                    },
                    &[],
                )
                .await;
                let pgdata = tmp.path().join("data");
                let req = RestoreRequest {
                    target: target.clone(),
                    ..request(&pgdata)
                };
                restore(&repo, req, &Silent).await.unwrap();
                pitr_testkit::user::give_to_pg(tmp.path());
                for entry in std::fs::read_dir(&pgdata).unwrap() {
                    pitr_testkit::user::give_to_pg(&entry.unwrap().path());
                }
                pitr_testkit::user::give_to_pg(&pgdata);
                // With no target of ours the backup's action is gone too (the default); with
                // one, ours.
                let (want_target, want_action) = match target {
                    Target::Immediate => ("immediate", "promote"),
                    _ => ("", "pause"),
                };
                let case = format!(
                    "{name} {:?}, target {target:?}",
                    String::from_utf8_lossy(content)
                );
                assert_eq!(
                    effective(&pgdata, "recovery_target_time").as_deref(),
                    Ok(""),
                    "{case}"
                );
                assert_eq!(
                    effective(&pgdata, "recovery_target").as_deref(),
                    Ok(want_target),
                    "{case}"
                );
                if name == "postgresql.conf" {
                    let conf = std::fs::read_to_string(pgdata.join(name)).unwrap();
                    assert!(conf.contains("port = 5432\n"), "{conf}");
                    assert!(conf.contains("#recovery_target_name = ''\n"), "{conf}");
                    assert_eq!(
                        effective(&pgdata, "recovery_target_action").as_deref(),
                        Ok(want_action),
                        "{case}"
                    );
                } else {
                    let auto = std::fs::read_to_string(pgdata.join(name)).unwrap();
                    assert!(!auto.contains("2026-11-26"), "{auto}");
                }
            }
        }
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

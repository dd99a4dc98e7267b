//! `pitr verify --restore-test`: restore a backup into a scratch directory, start it as a
//! local instance (crate::instance) with archiving off, run the checks, and remove it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use pitr_store::Repo;
use serde::Serialize;

use crate::instance;
use crate::progress::Reporter;
use crate::repofile::BackupManifest;
use crate::restore::{RestoreRequest, StartOptions, Target, TargetAction, TimelineChoice};

/// `--restore-test`: where and how to run the scratch instance.
#[derive(Clone, Debug, Default)]
pub struct RestoreTest {
    /// Directory to restore into (absent or empty; removed afterwards). Default: a new
    /// directory under the system's temp dir.
    pub scratch: Option<PathBuf>,
    /// Port of the scratch instance (default: a free one). It listens only on a socket in
    /// the scratch directory.
    pub port: Option<u16>,
    /// SQL run with psql once the instance is up; each must succeed. Empty: the defaults
    /// (`SELECT count(*) FROM pg_class`, and pg_amcheck when it and amcheck are installed).
    pub check_sql: Vec<String>,
    /// Stop as soon as the backup is consistent instead of at the end of the archived WAL.
    pub immediate: bool,
    /// What the scratch instance's restore_command is given of this run's settings.
    pub handed_on: crate::restore::HandedOn,
    /// `--target-timeline` (default: latest, the newest timeline containing the backup).
    pub timeline: Option<TimelineChoice>,
}

/// What `--restore-test` did.
#[derive(Debug, Default, Serialize)]
pub struct RestoreTestReport {
    pub backup: String,
    pub scratch: PathBuf,
    pub target: String,
    /// Laying the backup down.
    pub restore_seconds: f64,
    /// Starting PostgreSQL until recovery was done and it accepted connections.
    pub recovery_seconds: f64,
    /// Where recovery stopped, in PostgreSQL's words.
    pub recovery: Option<String>,
    pub checks: Vec<CheckRun>,
}

/// One check run on the scratch instance.
#[derive(Debug, Serialize)]
pub struct CheckRun {
    pub check: String,
    pub ok: bool,
    /// Its output (the last lines when it failed).
    pub output: String,
}

/// `--restore-test` of backup `wanted` (none: a problem): its report, or its failure and the
/// checks that failed as problems.
pub(super) async fn run(
    repo: &Repo,
    wanted: Option<String>,
    test: &RestoreTest,
    reporter: &dyn Reporter,
    problems: &mut Vec<String>,
) -> Option<RestoreTestReport> {
    let Some(id) = wanted else {
        problems.push("restore test: no backup to restore".to_string());
        return None;
    };
    match restore_test(repo, &id, test, reporter).await {
        Ok(report) => {
            for c in report.checks.iter().filter(|c| !c.ok) {
                problems.push(format!(
                    "restore test of backup {id}: check {:?} failed: {}",
                    c.check, c.output
                ));
            }
            Some(report)
        }
        Err(e) => {
            problems.push(format!("restore test of backup {id}: {e:#}"));
            None
        }
    }
}

/// `--restore-test`: restore backup `id` into a scratch directory, start it with archiving
/// off (a test restore must never push a new timeline into the production archive), on a
/// socket in the scratch directory only, with a pg_hba.conf of its own (trust on that private
/// socket), run the checks, stop it and remove the directory.
pub async fn restore_test(
    repo: &Repo,
    id: &str,
    test: &RestoreTest,
    reporter: &dyn Reporter,
) -> anyhow::Result<RestoreTestReport> {
    instance::refuse_root("pitr verify --restore-test")?;
    let (scratch, made) = scratch_dir(test.scratch.as_deref())?;
    let pgdata = scratch.join("data");
    let result = restore_and_check(repo, id, test, &scratch, &pgdata, reporter).await;
    let bindir = result.as_ref().ok().map(|(_, b)| b.clone());
    // Whatever happened: the server down, the directory gone.
    if pgdata.join("postmaster.pid").exists() {
        if let Some(bindir) = bindir.or_else(|| instance::bindir_of(&pgdata)) {
            let _ = instance::stop(&bindir, &pgdata, &["fast", "immediate"]);
        }
    }
    let removed = if made {
        std::fs::remove_dir_all(&scratch)
    } else {
        clear_dir(&scratch)
    };
    if let Err(e) = removed {
        tracing::warn!("remove scratch directory {}: {e}", scratch.display());
    }
    result.map(|(report, _)| report)
}

async fn restore_and_check(
    repo: &Repo,
    id: &str,
    test: &RestoreTest,
    scratch: &Path,
    pgdata: &Path,
    reporter: &dyn Reporter,
) -> anyhow::Result<(RestoreTestReport, PathBuf)> {
    let manifest = BackupManifest::list(repo)
        .await?
        .for_restore(Some(id))?
        .into_iter()
        .find(|b| b.id == id)
        .with_context(|| format!("no backup {id} in {}", repo.url()))?;
    let bindir = instance::pg_bindir(manifest.pg_version_num / 10000)?;
    let hba = scratch.join("pg_hba.conf");
    std::fs::write(&hba, "local all all trust\nlocal replication all trust\n")
        .with_context(|| format!("write {}", hba.display()))?;
    let remap = manifest
        .tablespaces
        .iter()
        .map(|t| (t.oid, scratch.join("tablespaces").join(t.oid.to_string())))
        .collect();
    let port = match test.port {
        Some(p) => p,
        None => instance::free_port()?,
    };
    let target = if test.immediate {
        Target::Immediate
    } else {
        Target::End
    };
    let start = StartOptions {
        port: Some(port),
        stop_after: false,
        pg_options: vec![
            // Never archive: the promoted test instance's new timeline must not reach the
            // production archive. The command line beats postgresql(.auto).conf.
            "archive_mode=off".into(),
            "listen_addresses=''".into(),
            format!(
                "unix_socket_directories={}",
                instance::shell_word(&scratch.display().to_string())
            ),
            format!(
                "hba_file={}",
                instance::shell_word(&hba.display().to_string())
            ),
            // The production value may not fit next to the production server.
            "shared_buffers=128MB".into(),
            // No read-only phase: so recovery does not insist on max_connections and the
            // like being at least the production server's.
            "hot_standby=off".into(),
        ],
    };
    let req = RestoreRequest {
        pgdata: pgdata.to_path_buf(),
        target: target.clone(),
        exclusive: false,
        timeline: test.timeline.clone().unwrap_or(TimelineChoice::Latest),
        action: TargetAction::Promote,
        backup: Some(id.to_string()),
        delta: false,
        remap,
        // Every tablespace is mapped into the scratch directory above: never a recorded one.
        tablespaces_as_recorded: false,
        dry_run: false,
        // Written into postgresql.auto.conf too: the scratch instance must never archive.
        archive_off: true,
        start: None,
        handed_on: test.handed_on.clone(),
    };
    tracing::info!(
        "restore test: backup {id} into {} on port {port}",
        pgdata.display()
    );
    let began = Instant::now();
    let restored = crate::restore::restore(repo, req, reporter).await?;
    let restore_seconds = began.elapsed().as_secs_f64();
    // Where the configuration lives outside the data directory (Debian's /etc/postgresql),
    // the backup has none: the scratch instance runs on PostgreSQL's defaults plus the
    // settings above.
    for conf in ["postgresql.conf", "pg_ident.conf"] {
        let path = pgdata.join(conf);
        if !path.exists() {
            std::fs::write(&path, "")
                .with_context(|| format!("write an empty {}", path.display()))?;
        }
    }
    let began = Instant::now();
    let recovery = Some(
        crate::restore::start_and_wait(
            pgdata,
            &restored.plan.manifest,
            TargetAction::Promote,
            &start,
        )
        .await?,
    );
    let recovery_seconds = began.elapsed().as_secs_f64();
    let mut report = RestoreTestReport {
        backup: id.to_string(),
        scratch: scratch.to_path_buf(),
        target: target.describe(),
        restore_seconds,
        recovery_seconds,
        recovery: recovery.as_ref().map(|r| {
            let redo = r.redo_done.as_deref().map(|d| {
                // "0/3000148 system usage: CPU: …": the position is what matters here.
                let at = d.split(" system usage").next().unwrap_or(d).trim();
                format!("redo done at {at}")
            });
            let mut said: Vec<String> = r.stopped.iter().cloned().chain(redo).collect();
            if let Some(t) = &r.last_transaction {
                said.push(format!("last transaction at {t}"));
            }
            if said.is_empty() {
                r.state.clone()
            } else {
                said.join("; ")
            }
        }),
        checks: Vec::new(),
    };
    if !recovery
        .as_ref()
        .is_some_and(|r| r.state.starts_with("promoted"))
    {
        bail!(
            "the scratch instance did not finish recovery: {}",
            recovery.map_or("not started".into(), |r| r.state)
        );
    }
    let psql = |sql: &str| instance::psql(&bindir, scratch, port, sql);
    let mut checks: Vec<(String, std::process::Command)> = Vec::new();
    if test.check_sql.is_empty() {
        let sql = "SELECT count(*) FROM pg_class";
        checks.push((sql.to_string(), psql(sql)));
        let amcheck = bindir.join("pg_amcheck");
        let available = instance::run(psql(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'amcheck'",
        ))
        .is_ok_and(|out| out.trim() == "1");
        if amcheck.is_file() && available {
            let mut cmd = std::process::Command::new(&amcheck);
            instance::clear_pg_env(&mut cmd);
            cmd.arg("-h").arg(scratch).args([
                "-p",
                &port.to_string(),
                "--install-missing",
                "--all",
            ]);
            checks.push(("pg_amcheck --install-missing --all".into(), cmd));
        } else {
            tracing::info!(
                "restore test: pg_amcheck or the amcheck extension is not installed; skipping it"
            );
        }
    } else {
        for sql in &test.check_sql {
            checks.push((sql.clone(), psql(sql)));
        }
    }
    for (what, cmd) in checks {
        let (ok, output) = match instance::run(cmd) {
            Ok(out) => (true, out),
            Err(out) => (false, out),
        };
        report.checks.push(CheckRun {
            check: what,
            ok,
            output: tail(&output, 20),
        });
    }
    let _ = instance::stop(&bindir, pgdata, &["fast", "immediate"]);
    Ok((report, bindir))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The scratch directory, and whether it was made here (then it is removed whole; a given
/// one is emptied). A given one must be absent or empty: it is cleared afterwards.
fn scratch_dir(given: Option<&Path>) -> anyhow::Result<(PathBuf, bool)> {
    use std::os::unix::fs::DirBuilderExt;
    let (dir, made) = match given {
        Some(d) => {
            let d = std::path::absolute(d).with_context(|| format!("resolve {}", d.display()))?;
            match std::fs::read_dir(&d) {
                Ok(mut entries) => {
                    if entries.next().is_some() {
                        bail!(
                            "--scratch {} is not empty: the restore test needs an empty directory it may remove",
                            d.display()
                        );
                    }
                    return Ok((d, false));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (d, true),
                Err(e) => return Err(e).with_context(|| format!("read {}", d.display())),
            }
        }
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let name = format!("pitr-verify-{}-{nanos:08x}", std::process::id());
            (std::env::temp_dir().join(name), true)
        }
    };
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("create scratch directory {}", dir.display()))?;
    Ok((dir, made))
}

fn clear_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

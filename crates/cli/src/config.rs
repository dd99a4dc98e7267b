//! The configuration file as the binary applies it: `pitr_core::config` reads and checks the
//! file and its secrets; here its values fill the flags a command left open (a flag beats a
//! variable beats the file).

use pitr_core::config::{self, Settings};

use crate::cli::{Checkpoint, Cli, Command, Global, LogFormat};

/// The configuration file `global` names (`--config`/`PITR_CONFIG`, which clap has merged).
pub fn load(global: &Global, env: &config::Env) -> anyhow::Result<Settings> {
    Settings::load(global.config.as_deref(), env)
}

/// The repository URL: `--repo`/`PITR_REPO`, else the file's.
pub fn repo_url(settings: &Settings, global: &Global) -> anyhow::Result<String> {
    settings.repo_url(global.repo.as_deref())
}

/// The log format: the flag, else the file, else text.
pub fn log_format(settings: &Settings, global: &Global) -> LogFormat {
    global
        .log_format
        .or(settings.file.log_format.map(|f| match f {
            config::LogFormat::Text => LogFormat::Text,
            config::LogFormat::Json => LogFormat::Json,
        }))
        .unwrap_or(LogFormat::Text)
}

/// What a command is given besides its arguments, resolved from the flags, the environment
/// and the file: nothing reaches the store or core any other way.
pub struct Given {
    /// How to reach and unlock the repository.
    pub repo: pitr_store::RepoOptions,
    /// What a pitr process this one writes or starts is given (restore_command, the prefetch
    /// worker).
    pub handed_on: pitr_core::restore::HandedOn,
    /// The backup connection's password from the file (backup and check only: archive_command
    /// has no systemd credentials).
    pub pg_password: Option<String>,
}

/// The settings of `cli`'s command that are not its flags: the repository's options, the
/// secret, what child processes are handed, the connection password.
pub fn resolve(
    settings: &Settings,
    cli: &Cli,
    repo_url: &str,
    env: &config::Env,
) -> anyhow::Result<Given> {
    let flag_file = cli.global.passphrase_file.as_deref();
    let repo = pitr_store::RepoOptions {
        remote: settings.remote_options(repo_url)?,
        secret: settings.passphrase(flag_file, env)?,
        jobs: settings.jobs(env),
        ..Default::default()
    };
    // Absolute, for restore_command (run in the data directory) and helper processes.
    let absolute = |p: &std::path::Path| {
        std::path::absolute(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    let handed_on = pitr_core::restore::HandedOn {
        config: settings.path.as_deref().map(absolute),
        passphrase_file: flag_file.map(absolute),
    };
    let pg_password = match cli.command {
        Command::Backup(_) | Command::Check(_) => settings.pg_password(env)?,
        _ => None,
    };
    Ok(Given {
        repo,
        handed_on,
        pg_password,
    })
}

/// Fills the settings a command's flags left open from the file (a flag beats the file).
pub fn apply(settings: &Settings, command: &mut Command) -> anyhow::Result<()> {
    let f = &settings.file;
    match command {
        Command::Init(a) => {
            if a.compression_level.is_none() {
                a.compression_level = f.init.compression_level;
            }
            if a.chunk_size.is_none() {
                a.chunk_size = size(&f.init.chunk_size, "init.chunk_size")?;
            }
            if a.wal_chunk_size.is_none() {
                a.wal_chunk_size = size(&f.init.wal_chunk_size, "init.wal_chunk_size")?;
            }
        }
        Command::ArchiveWal(a) => {
            a.lookahead = a.lookahead.or(f.archive_wal.lookahead);
        }
        Command::RestoreWal(a) => {
            a.prefetch = a.prefetch.or(f.restore_wal.prefetch);
        }
        Command::Backup(a) => {
            if a.dbname.is_none() {
                a.dbname = f.backup.dbname.clone();
            }
            a.checkpoint = a.checkpoint.or(f.backup.checkpoint.map(|c| match c {
                config::Checkpoint::Fast => Checkpoint::Fast,
                config::Checkpoint::Spread => Checkpoint::Spread,
            }));
            a.max_rate = a.max_rate.or(f.backup.max_rate);
        }
        Command::Expire(a) => {
            a.retain_full = a.retain_full.or(f.expire.retain_full.map(|n| n as usize));
            a.retain_days = a.retain_days.or(f.expire.retain_days);
            a.retain_wal_days = a.retain_wal_days.or(f.expire.retain_wal_days);
        }
        // check connects like backup does.
        Command::Check(a) if a.dbname.is_none() => {
            a.dbname = f.backup.dbname.clone();
        }
        Command::Verify(a) if a.check_sql.is_empty() => {
            a.check_sql = f.verify.check_sql.clone();
        }
        _ => {}
    }
    Ok(())
}

fn size(value: &Option<String>, key: &str) -> anyhow::Result<Option<u32>> {
    value
        .as_deref()
        .map(crate::cli::parse_size)
        .transpose()
        .map_err(|e| anyhow::anyhow!("{key}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use clap::Parser;
    use pitr_core::config::{ConfigFile, Env};

    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("pitr").chain(args.iter().copied())).unwrap()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// --repo beats PITR_REPO beats the file; PITR_JOBS beats `jobs`; a flag beats the file.
    #[test]
    fn precedence_flag_env_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "pitr.toml",
            "repo = \"/from/file\"\njobs = 3\nlog_format = \"json\"\n\
             [archive_wal]\nlookahead = 2\n",
        );
        let p = path.to_str().unwrap();
        let env = Env::of(&[]);
        let c = cli(&["--config", p, "archive-wal", "X", "Y"]);
        let s = load(&c.global, &env).unwrap();
        assert_eq!(repo_url(&s, &c.global).unwrap(), "/from/file");
        assert_eq!(s.jobs(&env), Some(3));
        assert_eq!(log_format(&s, &c.global), LogFormat::Json);
        let mut cmd = c.command;
        apply(&s, &mut cmd).unwrap();
        let Command::ArchiveWal(a) = cmd else {
            unreachable!()
        };
        assert_eq!(a.lookahead, Some(2));

        let env = Env::of(&[("PITR_JOBS", "5")]);
        let c = cli(&[
            "--config",
            p,
            "--repo",
            "/from/flag",
            "--log-format",
            "text",
            "archive-wal",
            "--lookahead",
            "7",
            "X",
            "Y",
        ]);
        let s = load(&c.global, &env).unwrap();
        assert_eq!(repo_url(&s, &c.global).unwrap(), "/from/flag");
        assert_eq!(s.jobs(&env), Some(5));
        assert_eq!(log_format(&s, &c.global), LogFormat::Text);
        let mut cmd = c.command;
        apply(&s, &mut cmd).unwrap();
        let Command::ArchiveWal(a) = cmd else {
            unreachable!()
        };
        assert_eq!(a.lookahead, Some(7));

        // PITR_REPO and PITR_CONFIG reach `global` through clap (integration/config.rs runs
        // them: setting variables here would race the other tests' parsing).
    }

    #[test]
    fn no_file_behaves_as_before() {
        let c = cli(&["list"]);
        let s = Settings::default();
        assert_eq!(s.file, ConfigFile::default());
        let e = repo_url(&s, &c.global).unwrap_err().to_string();
        assert!(e.contains("--repo URL, PITR_REPO"), "{e}");
        let missing = cli(&["--config", "/nonexistent/pitr.toml", "list"]);
        let e = load(&missing.global, &Env::of(&[])).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/pitr.toml"), "{e:#}");
    }
}

//! The configuration file as the binary reads and applies it. Where each setting is defined is
//! `options.rs`; here the file is loaded (secrets from files and systemd credentials), and
//! [`merge`] applies the precedence, the one place it is decided: a flag (or the variable clap
//! reads for it, `PITR_REPO`, `PITR_PASSPHRASE_FILE`) beats pitr's other variables
//! (`PITR_JOBS`), which beat the file. [`resolve`] then gives each command what it needs
//! besides its arguments, explicitly: nothing reaches the store or core through the
//! environment or a static.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::cli::{Cli, Command};
use crate::options::{parse, ConfigFile, GlobalOptions, LogFormat};

/// Read when neither `--config` nor `PITR_CONFIG` names a file, if it exists.
pub const DEFAULT_PATH: &str = "/etc/pitr/pitr.toml";

/// What the binary runs with: the file (if any) and what was resolved from it.
#[derive(Debug, Default)]
pub struct Settings {
    /// The file read, if any.
    pub path: Option<PathBuf>,
    pub file: ConfigFile,
    /// Where secret files and credentials are looked up (`$CREDENTIALS_DIRECTORY`).
    credentials_dir: Option<PathBuf>,
}

/// The process environment, passed in so that tests can give their own.
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    pub fn process() -> Env {
        Env {
            vars: std::env::vars().collect(),
        }
    }

    /// An environment of these variables only (tests).
    #[cfg(test)]
    pub fn of(pairs: &[(&str, &str)]) -> Env {
        Env {
            vars: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }
}

impl Settings {
    /// Reads the configuration file `config` names (`--config`/`PITR_CONFIG`), or
    /// [`DEFAULT_PATH`] when it exists.
    pub fn load(config: Option<&Path>, env: &Env) -> anyhow::Result<Settings> {
        let credentials_dir = env.get("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        let (path, explicit) = match config {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let opened = std::fs::File::open(&path).and_then(|mut f| {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut f, &mut text)?;
            Ok((text, f.metadata()?))
        });
        let (text, meta) = match opened {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Settings {
                    path: None,
                    file: ConfigFile::default(),
                    credentials_dir,
                })
            }
            Err(e) => {
                return Err(e).with_context(|| format!("read config file {}", path.display()))
            }
        };
        let mut file = parse(&text).with_context(|| format!("config file {}", path.display()))?;
        if let Some(key) = file.inline_secret() {
            only_owner_reads(
                &path,
                &meta,
                &format!("config file (it holds {key} inline)"),
            )?;
        }
        // Absolute, because it is handed on (restore_command runs in the data directory).
        let path = std::path::absolute(&path).unwrap_or(path);
        if let Some(dir) = path.parent() {
            file.rebase(dir);
        }
        Ok(Settings {
            path: Some(path),
            file,
            credentials_dir,
        })
    }

    /// The repository URL: `flag` (`--repo` or `PITR_REPO`), else `repo = "…"`.
    pub fn repo_url(&self, flag: Option<&str>) -> anyhow::Result<String> {
        if let Some(repo) = flag {
            return Ok(repo.to_string());
        }
        match (&self.file.global.repo, &self.path) {
            (Some(repo), _) => Ok(repo.clone()),
            (None, Some(path)) => bail!(
                "no repository given: config file {} has no repo = \"...\" (or use --repo URL, PITR_REPO)",
                path.display()
            ),
            (None, None) => bail!(
                "no repository given: use --repo URL, PITR_REPO, or repo = \"...\" in {DEFAULT_PATH}"
            ),
        }
    }

    /// The backup connection's password from `[backup] password_file`/`password_credential`,
    /// unless `PGPASSWORD` is set (a variable beats the file).
    pub fn pg_password(&self, env: &Env) -> anyhow::Result<Option<String>> {
        if env.get("PGPASSWORD").is_some() {
            return Ok(None);
        }
        let b = &self.file.backup;
        self.secret(
            "backup.password",
            None,
            &b.password_file,
            &b.password_credential,
        )
    }

    /// Options for a cloud repository at `url`, as `object_store` configuration keys (the
    /// store's mapping), with secrets read from their files or credentials.
    pub fn remote_options(&self, url: &str) -> anyhow::Result<Vec<(String, String)>> {
        let f = &self.file;
        pitr_store::remote::object_store_options(url, &f.s3, &f.gcs, &f.azure, &mut |s| {
            self.secret(s.name, s.inline, s.file, s.credential)
        })
    }

    /// The secret that opens an encrypted repository, first found of: `flag_file`
    /// (`--passphrase-file`, `PITR_PASSPHRASE_FILE`), `PITR_PASSPHRASE`, the file's
    /// `passphrase_file` or `passphrase_credential`, the systemd credential `pitr-passphrase`.
    /// Never from the command line itself. `None`: repositories must be unencrypted.
    pub fn passphrase(
        &self,
        flag_file: Option<&Path>,
        env: &Env,
    ) -> anyhow::Result<Option<pitr_store::Secret>> {
        if let Some(path) = flag_file {
            let text = read_secret_file(path)?;
            return Ok(Some(pitr_store::Secret::new(
                text,
                format!("--passphrase-file {}", path.display()),
            )));
        }
        if let Some(v) = env.get("PITR_PASSPHRASE") {
            return Ok(Some(pitr_store::Secret::new(v, "PITR_PASSPHRASE")));
        }
        let f = &self.file;
        let f = &f.global;
        if f.passphrase_file.is_some() && f.passphrase_credential.is_some() {
            bail!("give only one of passphrase_file, passphrase_credential");
        }
        if let (Some(p), Some(config)) = (&f.passphrase_file, &self.path) {
            let path = self.relative(p);
            let text = read_secret_file(&path)?;
            let origin = format!("passphrase_file {} in {}", path.display(), config.display());
            return Ok(Some(pitr_store::Secret::new(text, origin)));
        }
        if let Some(v) = self.secret("passphrase", None, &None, &f.passphrase_credential)? {
            let name = f.passphrase_credential.as_deref().unwrap_or_default();
            let origin = format!("systemd credential {name}");
            return Ok(Some(pitr_store::Secret::new(v, origin)));
        }
        if let Some(dir) = &self.credentials_dir {
            let path = dir.join(DEFAULT_CREDENTIAL);
            if path.exists() {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("read the passphrase from {}", path.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string();
                if text.is_empty() {
                    bail!("{}: the passphrase credential is empty", path.display());
                }
                return Ok(Some(pitr_store::Secret::new(
                    text,
                    format!("systemd credential {DEFAULT_CREDENTIAL}"),
                )));
            }
        }
        Ok(None)
    }

    /// A secret given inline, as `<name>_file`, or as `<name>_credential` (a file in
    /// `$CREDENTIALS_DIRECTORY`, systemd's `LoadCredential=`); at most one of them.
    pub fn secret(
        &self,
        name: &str,
        inline: Option<&str>,
        file: &Option<PathBuf>,
        credential: &Option<String>,
    ) -> anyhow::Result<Option<String>> {
        let given = usize::from(inline.is_some())
            + usize::from(file.is_some())
            + usize::from(credential.is_some());
        if given > 1 {
            bail!("give only one of {name}, {name}_file, {name}_credential");
        }
        if let Some(v) = inline {
            return Ok(Some(v.to_string()));
        }
        let path = match (file, credential) {
            (Some(f), _) => {
                let path = self.relative(f);
                let text = read_private(&path, &format!("{name}_file"))?;
                if text.is_empty() {
                    bail!("{name}: {} is empty", path.display());
                }
                return Ok(Some(text));
            }
            (_, Some(c)) => {
                if c.is_empty() || c.contains('/') || c == "." || c == ".." {
                    bail!("{name}_credential = {c:?}: a credential is a plain name");
                }
                let Some(dir) = &self.credentials_dir else {
                    bail!(
                        "{name}_credential = {c:?}: $CREDENTIALS_DIRECTORY is not set \
                         (LoadCredential={c}:/path in the systemd unit sets it)"
                    );
                };
                dir.join(c)
            }
            (None, None) => return Ok(None),
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("read {name} from {}", path.display()))?;
        let value = text.trim_end_matches(['\n', '\r']).to_string();
        if value.is_empty() {
            bail!("{name}: {} is empty", path.display());
        }
        Ok(Some(value))
    }

    /// A path from the file, relative to the file's directory.
    fn relative(&self, p: &Path) -> PathBuf {
        match self.path.as_ref().and_then(|c| c.parent()) {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }
}

/// The systemd credential an encrypted repository's secret is read from when nothing else
/// names one (`LoadCredentialEncrypted=pitr-passphrase:…`).
pub const DEFAULT_CREDENTIAL: &str = "pitr-passphrase";

/// A passphrase or key file's text, its trailing line ends left out; an empty one, or one
/// anyone but its owner may read, is refused.
pub fn read_secret_file(path: &Path) -> anyhow::Result<String> {
    let value = read_private(path, "passphrase file")?;
    if value.is_empty() {
        bail!("{}: the passphrase file is empty", path.display());
    }
    Ok(value)
}

/// A file holding a secret, its trailing line ends left out, under [`only_owner_reads`].
fn read_private(path: &Path, what: &str) -> anyhow::Result<String> {
    let read = || -> std::io::Result<(String, std::fs::Metadata)> {
        let mut f = std::fs::File::open(path)?;
        let meta = f.metadata()?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut f, &mut text)?;
        Ok((text, meta))
    };
    let (text, meta) = read().with_context(|| format!("read the {what} {}", path.display()))?;
    only_owner_reads(path, &meta, what)?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// The one rule for every file that holds a secret (a passphrase or key file, a `…_file` of
/// `[s3]`, `[azure]` or `[backup]`, pitr.toml with a secret inline): only its owner may read
/// it, so group or other read permission is refused (0640 too), naming the file. A systemd
/// credential is not checked: systemd makes it the service's alone (through an ACL, which
/// shows as group bits).
fn only_owner_reads(path: &Path, meta: &std::fs::Metadata, what: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode() & 0o7777;
    let who = if mode & 0o004 != 0 {
        "every user"
    } else if mode & 0o040 != 0 {
        "its group"
    } else {
        return Ok(());
    };
    bail!(
        "{}: the {what} is readable by {who} (mode {mode:04o}); chmod go-rwx it, so that \
         only the user pitr runs as reads it",
        path.display()
    )
}

/// The top-level settings in effect: the flags (and `PITR_REPO`, `PITR_PASSPHRASE_FILE`
/// through clap), then `PITR_JOBS`, then the file. `passphrase_file` is one of the secret's
/// sources, which [`Settings::passphrase`] tries in their own order (`PITR_PASSPHRASE` comes
/// between the flag and the file): use the flag's from `cli.global.options`, not this.
pub fn global(cli: &Cli, settings: &Settings, env: &Env) -> GlobalOptions {
    let variables = GlobalOptions {
        // Not a positive number: the default (0), as it always was, not the file's value.
        jobs: env.get("PITR_JOBS").map(|v| v.parse().unwrap_or(0)),
        ..GlobalOptions::default()
    };
    cli.global
        .options
        .clone()
        .or(variables)
        .or(settings.file.global.clone())
}

/// The log format in effect (text unless a flag or the file says otherwise).
pub fn log_format(global: &GlobalOptions) -> LogFormat {
    global.log_format.unwrap_or(LogFormat::Text)
}

/// Fills what `command`'s flags left open from the file: each command group's options struct
/// is both its flags and its table.
pub fn merge(settings: &Settings, command: &mut Command) {
    let f = &settings.file;
    use std::mem::take;
    match command {
        Command::Init(a) => a.options = take(&mut a.options).or(f.init.clone()),
        Command::ArchiveWal(a) => a.options = take(&mut a.options).or(f.archive_wal.clone()),
        Command::RestoreWal(a) => a.options = take(&mut a.options).or(f.restore_wal.clone()),
        Command::Backup(a) => a.options = take(&mut a.options).or(f.backup.clone()),
        Command::Expire(a) => a.options = take(&mut a.options).or(f.expire.clone()),
        Command::Verify(a) => a.options = take(&mut a.options).or(f.verify.clone()),
        // check connects like backup does.
        Command::Check(a) => a.dbname = a.dbname.take().or(f.backup.dbname.clone()),
        _ => {}
    }
}

/// What a command is given besides its arguments, resolved from the settings.
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

/// The repository's options, the secret, what child processes are handed, the connection
/// password, for `cli`'s command at `repo_url`.
pub fn resolve(
    settings: &Settings,
    cli: &Cli,
    global: &GlobalOptions,
    repo_url: &str,
    env: &Env,
) -> anyhow::Result<Given> {
    let flag_file = cli.global.options.passphrase_file.as_deref();
    let repo = pitr_store::RepoOptions {
        remote: settings.remote_options(repo_url)?,
        secret: settings.passphrase(flag_file, env)?,
        jobs: global.jobs,
        ..Default::default()
    };
    // Absolute, for restore_command (run in the data directory) and helper processes.
    let absolute = |p: &Path| {
        std::path::absolute(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    let handed_on = pitr_core::restore::HandedOn {
        config: settings.path.as_deref().map(absolute),
        passphrase_file: flag_file.map(absolute),
        // What the repository is, not a setting: the restore fills it in.
        repository_id: None,
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

#[cfg(test)]
mod tests {
    use clap::Parser;

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
        let s = Settings::load(c.global.config.as_deref(), &env).unwrap();
        let g = global(&c, &s, &env);
        assert_eq!(s.repo_url(g.repo.as_deref()).unwrap(), "/from/file");
        assert_eq!(g.jobs, Some(3));
        assert_eq!(log_format(&g), LogFormat::Json);
        let mut cmd = c.command;
        merge(&s, &mut cmd);
        let Command::ArchiveWal(a) = cmd else {
            unreachable!()
        };
        assert_eq!(a.options.lookahead, Some(2));

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
        let s = Settings::load(c.global.config.as_deref(), &env).unwrap();
        let g = global(&c, &s, &env);
        assert_eq!(s.repo_url(g.repo.as_deref()).unwrap(), "/from/flag");
        assert_eq!(g.jobs, Some(5));
        assert_eq!(log_format(&g), LogFormat::Text);
        let mut cmd = c.command;
        merge(&s, &mut cmd);
        let Command::ArchiveWal(a) = cmd else {
            unreachable!()
        };
        assert_eq!(a.options.lookahead, Some(7));

        // PITR_REPO and PITR_CONFIG reach `global` through clap (integration/config.rs runs
        // them: setting variables here would race the other tests' parsing).
    }

    /// One rule for every file holding a secret, whatever names it: only its owner may read
    /// it (0640 is refused too), and the error names the file. pitr.toml is held to it only
    /// when it holds a secret inline; a systemd credential is systemd's to protect (issue 17,
    /// item 15).
    #[test]
    fn secret_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let with_mode = |name: &str, text: &str, mode: u32| {
            let p = write(dir.path(), name, text);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let refused = |e: anyhow::Error, file: &Path, who: &str| {
            let e = format!("{e:#}");
            assert!(
                e.contains(&file.display().to_string()) && e.contains(who),
                "{e}"
            );
        };
        let env = Env::of(&[]);
        for (mode, who) in [
            (0o640, "its group"),
            (0o644, "every user"),
            (0o604, "every user"),
        ] {
            let pass = with_mode("pass", "p\n", mode);
            let s3 = with_mode("s3-secret", "k\n", mode);
            let azure = with_mode("azure-key", "k\n", mode);
            let pg = with_mode("pg-password", "pw\n", mode);
            let config = with_mode(
                "pitr.toml",
                "[s3]\nsecret_access_key_file = \"s3-secret\"\n\
                 [azure]\naccess_key_file = \"azure-key\"\n\
                 [backup]\npassword_file = \"pg-password\"\n",
                0o644,
            );
            // No inline secret: the file itself may be 0644 (contrib/install.sh installs it so).
            let s = Settings::load(Some(&config), &env).unwrap();
            refused(s.passphrase(Some(&pass), &env).unwrap_err(), &pass, who);
            refused(s.remote_options("s3://b/p").unwrap_err(), &s3, who);
            refused(s.remote_options("az://c/p").unwrap_err(), &azure, who);
            refused(s.pg_password(&env).unwrap_err(), &pg, who);
            let inline = with_mode("inline.toml", "[s3]\nsecret_access_key = \"k\"\n", mode);
            refused(
                Settings::load(Some(&inline), &env).unwrap_err(),
                &inline,
                who,
            );
            let in_dbname = with_mode(
                "dbname.toml",
                "[backup]\ndbname = \"host=h password=pw\"\n",
                mode,
            );
            refused(
                Settings::load(Some(&in_dbname), &env).unwrap_err(),
                &in_dbname,
                who,
            );
        }
        for p in [
            "pass",
            "s3-secret",
            "azure-key",
            "pg-password",
            "inline.toml",
        ] {
            let p = dir.path().join(p);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let s = Settings::load(Some(&dir.path().join("pitr.toml")), &env).unwrap();
        assert!(s.passphrase(Some(&dir.path().join("pass")), &env).is_ok());
        assert_eq!(s.remote_options("s3://b/p").unwrap().len(), 1);
        assert_eq!(s.pg_password(&env).unwrap().as_deref(), Some("pw"));
        Settings::load(Some(&dir.path().join("inline.toml")), &env).unwrap();
        // A credential systemd granted through an ACL shows group bits: accepted.
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        let cred = creds.join(DEFAULT_CREDENTIAL);
        std::fs::write(&cred, "c\n").unwrap();
        std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o440)).unwrap();
        let env = Env::of(&[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())]);
        let bare = Settings::load(None, &env).unwrap();
        assert!(bare.passphrase(None, &env).unwrap().is_some());
    }

    /// `[verify] scratch` gives the restore test's directory (relative to the file's own);
    /// `--scratch` beats it.
    #[test]
    fn verify_scratch_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "pitr.toml", "[verify]\nscratch = \"scratch\"\n");
        let p = path.to_str().unwrap();
        let s = Settings::load(Some(&path), &Env::of(&[])).unwrap();
        for (flag, want) in [
            (None, dir.path().join("scratch")),
            (Some("/elsewhere"), PathBuf::from("/elsewhere")),
        ] {
            let mut args = vec!["--config", p, "verify", "--restore-test"];
            args.extend(flag.iter().flat_map(|f| ["--scratch", f]));
            let mut cmd = cli(&args).command;
            merge(&s, &mut cmd);
            let Command::Verify(a) = cmd else {
                unreachable!()
            };
            assert_eq!(a.options.scratch, Some(want));
        }
    }

    #[test]
    fn no_file_behaves_as_before() {
        let c = cli(&["list"]);
        let s = Settings::default();
        assert_eq!(s.file, ConfigFile::default());
        let g = global(&c, &s, &Env::of(&[]));
        let e = s.repo_url(g.repo.as_deref()).unwrap_err().to_string();
        assert!(e.contains("--repo URL, PITR_REPO"), "{e}");
        let missing = cli(&["--config", "/nonexistent/pitr.toml", "list"]);
        let e = Settings::load(missing.global.config.as_deref(), &Env::of(&[])).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/pitr.toml"), "{e:#}");
    }

    /// --passphrase-file beats PITR_PASSPHRASE beats the file's passphrase_file beats the
    /// default systemd credential; each names where it came from, never its value; a file
    /// every user can read is refused.
    #[test]
    fn passphrase_sources_in_order() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let private = |name: &str, text: &str| {
            let p = write(dir.path(), name, text);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            p
        };
        let flag = private("flag-pass", "from flag\n");
        private("file-pass", "from file\n");
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        let cred = write(&creds, DEFAULT_CREDENTIAL, "from credential\n");
        std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o400)).unwrap();
        let config = write(dir.path(), "pitr.toml", "passphrase_file = \"file-pass\"\n");
        let creds_env = ("CREDENTIALS_DIRECTORY", creds.to_str().unwrap());
        let env = Env::of(&[("PITR_PASSPHRASE", "from env"), creds_env]);
        let s = Settings::load(Some(&config), &env).unwrap();
        let got = s.passphrase(Some(&flag), &env).unwrap().unwrap();
        assert!(got.origin().contains("--passphrase-file"), "{got:?}");
        let got = s.passphrase(None, &env).unwrap().unwrap();
        assert_eq!(got.origin(), "PITR_PASSPHRASE");
        let env = Env::of(&[creds_env]);
        let got = s.passphrase(None, &env).unwrap().unwrap();
        assert!(got.origin().contains("file-pass"), "{got:?}");
        let bare = Settings::load(None, &env).unwrap();
        let got = bare.passphrase(None, &env).unwrap().unwrap();
        assert_eq!(got.origin(), "systemd credential pitr-passphrase");
        assert!(!format!("{got:?}").contains("from credential"));
        let none = Settings::load(None, &Env::of(&[])).unwrap();
        assert!(none.passphrase(None, &Env::of(&[])).unwrap().is_none());
        let open = write(dir.path(), "open-pass", "x\n");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = bare.passphrase(Some(&open), &env).unwrap_err().to_string();
        assert!(e.contains("readable by every user"), "{e}");
    }

    /// Server-side encryption settings reach object_store's S3 keys, checked first.
    #[test]
    fn s3_server_side_encryption_options() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write(
            dir.path(),
            "ok.toml",
            "[s3]\nserver_side_encryption = \"aws:kms\"\nsse_kms_key_id = \"k1\"\n\
             sse_bucket_key_enabled = true\n",
        );
        let s = Settings::load(Some(&ok), &Env::of(&[])).unwrap();
        let opts = s.remote_options("s3://b/p").unwrap();
        for (k, v) in [
            ("aws_server_side_encryption", "aws:kms"),
            ("aws_sse_kms_key_id", "k1"),
            ("aws_sse_bucket_key_enabled", "true"),
        ] {
            assert!(opts.contains(&(k.to_string(), v.to_string())), "{opts:?}");
        }
        let bad = write(
            dir.path(),
            "bad.toml",
            "[s3]\nserver_side_encryption = \"rot13\"\n",
        );
        let s = Settings::load(Some(&bad), &Env::of(&[])).unwrap();
        let e = s.remote_options("s3://b/p").unwrap_err().to_string();
        assert!(e.contains("rot13"), "{e}");
        let kms_only = write(dir.path(), "k.toml", "[s3]\nsse_kms_key_id = \"k1\"\n");
        let s = Settings::load(Some(&kms_only), &Env::of(&[])).unwrap();
        assert!(s.remote_options("s3://b/p").is_err());
    }

    #[test]
    fn secrets_from_a_file_and_a_credential() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s3_secret = write(dir.path(), "s3-secret", "file-secret\n");
        std::fs::set_permissions(&s3_secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        write(&creds, "pg-password", "cred-password\n");
        let path = write(
            dir.path(),
            "pitr.toml",
            "repo = \"s3://bucket/p\"\n[s3]\nregion = \"eu-west-1\"\n\
             secret_access_key_file = \"s3-secret\"\n\
             [backup]\npassword_credential = \"pg-password\"\n",
        );
        let env = Env::of(&[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())]);
        let s = Settings::load(Some(&path), &env).unwrap();
        let opts = s.remote_options("s3://bucket/p").unwrap();
        assert!(opts.contains(&("aws_region".into(), "eu-west-1".into())));
        assert!(opts.contains(&("aws_secret_access_key".into(), "file-secret".into())));
        assert_eq!(
            s.pg_password(&env).unwrap().as_deref(),
            Some("cred-password")
        );
        // PGPASSWORD beats the file.
        let env2 = Env::of(&[("PGPASSWORD", "x")]);
        assert_eq!(s.pg_password(&env2).unwrap(), None);
        // Without $CREDENTIALS_DIRECTORY the credential is an error that says how to set it.
        let s = Settings::load(Some(&path), &Env::of(&[])).unwrap();
        let e = s.pg_password(&Env::of(&[])).unwrap_err().to_string();
        assert!(e.contains("CREDENTIALS_DIRECTORY"), "{e}");
        // Two sources for one secret is refused.
        let both = write(
            dir.path(),
            "both.toml",
            "[s3]\nsecret_access_key = \"a\"\nsecret_access_key_file = \"b\"\n",
        );
        std::fs::set_permissions(&both, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = Settings::load(Some(&both), &Env::of(&[])).unwrap();
        assert!(s.remote_options("s3://b/p").is_err());
        // A credential name cannot leave the directory.
        let s = Settings {
            credentials_dir: Some(creds.clone()),
            ..Settings::default()
        };
        assert!(s
            .secret("x", None, &None, &Some("../s3-secret".into()))
            .is_err());
    }
}

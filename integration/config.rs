//! The configuration file: `pitr --config FILE` (and `PITR_CONFIG`) with the repository and
//! the settings only in the file, a variable beating the file, and an unknown key refused
//! with the nearest valid one named.

use pitr_testkit::cmd::{describe, output, stdout_of};
use pitr_testkit::TestDir;

use crate::harness::Pitr;

#[test]
fn config_file_gives_repository_and_settings() {
    let dir = TestDir::new();
    // Not created through the harness's `--repo`: init reads the repository and its
    // compression level from the file alone.
    let pitr = Pitr::new(&dir, "repo");
    let config = dir.path().join("pitr.toml");
    std::fs::write(
        &config,
        format!(
            "repo = \"{}\"\njobs = 4\n[init]\ncompression_level = 5\n",
            pitr.repo().display()
        ),
    )
    .unwrap();

    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = pitr.bare_command();
        cmd.args(args).envs(env.iter().copied());
        let out = output(&mut cmd);
        (out.status.success(), stdout_of(&out), describe(&cmd, &out))
    };
    let conf = config.to_str().unwrap();
    let (ok, _, what) = run(&["--config", conf, "init"], &[]);
    assert!(ok, "init with the repository from --config\n{what}");
    let (ok, stdout, what) = run(&["--config", conf, "info"], &[]);
    assert!(
        ok && stdout.contains("zstd level 5") && stdout.contains(&*pitr.repo().to_string_lossy()),
        "info with the repository from --config, init's level from [init]\n{what}"
    );
    let (ok, stdout, what) = run(&["list"], &[("PITR_CONFIG", conf)]);
    assert!(
        ok && stdout.contains("no backups"),
        "list with PITR_CONFIG\n{what}"
    );

    // PITR_REPO beats the file, --repo beats PITR_REPO.
    let elsewhere = dir.path().join("no-such-repo");
    let elsewhere = elsewhere.to_str().unwrap();
    let (ok, _, what) = run(&["--config", conf, "info"], &[("PITR_REPO", elsewhere)]);
    assert!(
        !ok && what.contains("no-such-repo"),
        "PITR_REPO beats the file\n{what}"
    );
    let repo = pitr.repo().to_str().unwrap();
    let (ok, _, what) = run(
        &["--config", conf, "--repo", repo, "info"],
        &[("PITR_REPO", elsewhere)],
    );
    assert!(ok, "--repo beats PITR_REPO\n{what}");
}

#[test]
fn unknown_config_key_names_the_nearest() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let config = dir.path().join("typo.toml");
    std::fs::write(
        &config,
        format!(
            "repo = \"{}\"\n[archive_wal]\nlookahed = 4\n",
            pitr.repo().display()
        ),
    )
    .unwrap();
    let mut cmd = pitr.bare_command();
    cmd.arg("--config").arg(&config).arg("info");
    let out = output(&mut cmd);
    let what = describe(&cmd, &out);
    assert!(!out.status.success(), "a typo in the config file\n{what}");
    assert!(
        what.contains("archive_wal.lookahed")
            && what.contains("did you mean \"archive_wal.lookahead\""),
        "the error names the key and the nearest valid one\n{what}"
    );
    assert!(
        what.contains("typo.toml"),
        "the error names the file\n{what}"
    );

    // restore_command must stop recovery on a broken configuration, not read "not archived".
    let mut cmd = pitr.bare_command();
    cmd.arg("--config")
        .arg(&config)
        .args(["restore-wal", "000000010000000000000001"])
        .arg(dir.path().join("dest"));
    let out = output(&mut cmd);
    assert_eq!(out.status.code(), Some(255), "{}", describe(&cmd, &out));
}

/// An S3 repository whose endpoint, keys and region come from the configuration file alone
/// (the secret key from a `_file`), with no `AWS_*` variable set: the options reach the store.
#[test]
fn s3_options_from_the_config_file() {
    let Some(server) = pitr_testkit::s3::start_or_skip("s3_options_from_the_config_file") else {
        return;
    };
    server.create_bucket("pitr-config");
    let dir = TestDir::new();
    let pitr = Pitr::new(&dir, "unused");
    let secret = dir.path().join("s3-secret");
    std::fs::write(&secret, "pitr-test-secret\n").unwrap();
    // A secret file only its owner, the user pitr runs as, may read (any other is refused).
    pitr_testkit::user::chmod(&secret, 0o600);
    pitr_testkit::user::give_to_pg(&secret);
    let config = dir.path().join("s3.toml");
    std::fs::write(
        &config,
        format!(
            "repo = \"s3://pitr-config/cluster\"\n[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
             access_key_id = \"pitr-test-key\"\nsecret_access_key_file = \"s3-secret\"\n\
             virtual_hosted_style_request = false\nallow_http = true\n",
            server.endpoint()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut cmd = pitr.bare_command();
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("--config").arg(&config).args(args);
        let out = output(&mut cmd);
        (out.status.success(), stdout_of(&out), describe(&cmd, &out))
    };
    let (ok, _, what) = run(&["init"]);
    assert!(
        ok,
        "init on S3 configured by the file\n{what}\n{}",
        server.log()
    );
    let (ok, stdout, what) = run(&["info"]);
    assert!(
        ok && stdout.contains("s3://pitr-config/cluster"),
        "info on S3 configured by the file\n{what}"
    );
}

/// Issue 19 #4: the shipped configuration, with only its `repo` line pointed at a real
/// repository, gives `pitr expire` a retention: the daily expire unit succeeds out of the box.
#[test]
fn the_shipped_configuration_lets_expire_run() {
    let dir = TestDir::new();
    let pitr = Pitr::init(&dir, "repo");
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/pitr.toml"))
            .expect("read contrib/pitr.toml");
    let repo_line = shipped
        .lines()
        .find(|l| l.starts_with("repo = "))
        .expect("the shipped configuration names a repository")
        .to_string();
    let text = shipped.replace(&repo_line, &format!("repo = \"{}\"", pitr.repo().display()));
    let config = dir.path().join("pitr.toml");
    std::fs::write(&config, text).unwrap();
    pitr_testkit::user::chmod(&config, 0o600);
    pitr_testkit::user::give_to_pg(&config);
    for args in [&["expire", "--dry-run"][..], &["expire"]] {
        let mut cmd = pitr.bare_command();
        cmd.arg("--config").arg(&config).args(args);
        let out = output(&mut cmd);
        assert!(
            out.status.success(),
            "{args:?} with the shipped configuration\n{}",
            describe(&cmd, &out)
        );
    }
}

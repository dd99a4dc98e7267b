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

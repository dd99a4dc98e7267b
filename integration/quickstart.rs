//! The README's first command, `contrib/demo.sh`, run against the binary under test: archive,
//! backup, a mistake, and a restore to the moment before it that must bring the data back.

use std::process::Command;

#[test]
fn quick_start_demo_restores_to_before_the_mistake() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/contrib/demo.sh"))
        .env("PITR_BIN", env!("CARGO_BIN_EXE_pitr"))
        .output()
        .expect("run contrib/demo.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("demo OK"),
        "contrib/demo.sh failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("restored: 10000 rows, sum 1000010"),
        "{stdout}"
    );
}

//! Tests that can only run somewhere (as root, with the other PostgreSQL majors installed, with
//! an S3 server) skip loudly elsewhere, and fail instead where CI says the condition holds:
//! `.ci/run` sets `PITR_REQUIRE_S3`, `PITR_REQUIRE_ROOT` and `PITR_REQUIRE_EXTRA_PG`, so a
//! test cannot quietly narrow to nothing there.

/// Whether `var` is set to `1`.
pub fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// `what` cannot be tested here: panics when `var=1` demands it, else says the test skipped
/// (where it is seen even when the harness captures output).
#[track_caller]
pub fn skip_unless_required(var: &str, what: &str) {
    if required(var) {
        panic!("{what}; {var}=1 requires it");
    }
    crate::s3::shout(&format!(
        "skipped: {what} (set {var}=1 to make this an error)"
    ));
}

/// Whether this process runs as root; when not, [`skip_unless_required`] with
/// `PITR_REQUIRE_ROOT`.
#[track_caller]
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip_unless_required("PITR_REQUIRE_ROOT", &format!("{test}: not running as root"));
    false
}

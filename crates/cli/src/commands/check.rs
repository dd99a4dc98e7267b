//! `pitr check`: one line per check on stdout (a Nagios summary line first), or one JSON
//! object; the worst status becomes the exit status in main's table.

use pitr_core::check::{CheckRequest, Status};
use pitr_core::CheckFailed;
use pitr_store::Repo;

use pitr_settings::cli::CheckArgs;

pub async fn run(
    url: &str,
    options: &pitr_store::RepoOptions,
    args: CheckArgs,
    password: Option<String>,
) -> anyhow::Result<()> {
    let repo = Repo::open(url, options).await?;
    let req = CheckRequest {
        dbname: args.dbname,
        password,
        archive_timeout: args.archive_timeout,
        max_archive_age: args.max_archive_age,
        max_backup_age: args.max_backup_age,
    };
    let report = if args.server {
        pitr_core::check::check_server_and_ages(&repo, &req).await
    } else {
        pitr_core::check::check(&repo, &req).await
    };
    let status = report.status();
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "status": status,
                "repository": repo.url(),
                "checks": report.checks,
            }))?
        );
    } else {
        let worst: Vec<String> = report
            .checks
            .iter()
            .filter(|c| c.status == status && status != Status::Ok)
            .map(|c| format!("{}: {}", c.check, c.message))
            .collect();
        let summary = if worst.is_empty() {
            format!("{} checks passed", report.checks.len())
        } else {
            worst.join("; ")
        };
        outln!("PITR {status} - {summary}");
        for c in &report.checks {
            outln!("{:<8} {}: {}", c.status.to_string(), c.check, c.message);
        }
    }
    if status == Status::Ok {
        Ok(())
    } else {
        Err(CheckFailed(status).into())
    }
}

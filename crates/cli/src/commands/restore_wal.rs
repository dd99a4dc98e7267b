//! `pitr restore-wal NAME DEST`: restore_command.

use pitr_core::restore_wal::RestoreWalRequest;

use pitr_settings::cli::RestoreWalArgs;

pub async fn run(
    url: &str,
    options: &pitr_store::RepoOptions,
    args: RestoreWalArgs,
    handed_on: pitr_core::restore::HandedOn,
) -> anyhow::Result<()> {
    let req = RestoreWalRequest {
        name: args.name.parse()?,
        dest: args.dest,
        prefetch: args
            .options
            .prefetch
            .unwrap_or(pitr_settings::cli::DEFAULT_PREFETCH),
        prefetch_worker: args.prefetch_worker,
        handed_on,
        repository_id: args.repository_id,
    };
    pitr_core::restore_wal::restore_wal(url, options, req).await
}

//! `pitr archive-wal PATH NAME`: archive_command.

use pitr_core::archive::ArchiveWalRequest;

use pitr_settings::cli::ArchiveWalArgs;

pub async fn run(
    url: &str,
    options: &pitr_store::RepoOptions,
    args: ArchiveWalArgs,
) -> anyhow::Result<()> {
    let req = ArchiveWalRequest {
        name: args.name.parse()?,
        path: args.path,
        lookahead: args
            .options
            .lookahead
            .unwrap_or(pitr_settings::cli::DEFAULT_LOOKAHEAD),
    };
    pitr_core::archive::archive_wal(url, options, req).await
}

//! `pitr spool-clean [PG_WAL]`: recovery_end_command.

use pitr_settings::cli::SpoolCleanArgs;

pub fn run(args: SpoolCleanArgs) -> anyhow::Result<()> {
    pitr_core::restore_wal::clean_spool(&args.pg_wal)
}

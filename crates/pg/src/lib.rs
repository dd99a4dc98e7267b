//! PostgreSQL's own vocabulary for pitr: LSNs, timelines, WAL file names, WAL page headers and
//! the pieces of `pg_control` we read. Parsing, plus reading `pg_control` and finding
//! PostgreSQL's programs (`programs`, the one search order).

mod backuphistory;
mod control;
mod history;
mod lsn;
pub mod programs;
mod serde_impls;
mod walname;
mod walpage;
mod walrecords;

pub use backuphistory::{parse_backup_history, BackupHistory, BackupHistoryError};
pub use control::{read_cluster_state, read_system_identifier, ClusterState, ControlError};
pub use history::{parse_history, parse_history_file, timeline_path, HistoryEntry, HistoryError};
pub use lsn::{Lsn, LsnParseError};
pub use walname::{TimelineId, WalFileKind, WalFileName, WalNameError};
pub use walpage::{LongPageHeader, PageHeaderError, LONG_PAGE_HEADER_LEN};
pub use walrecords::{timed_records, TimedKind, TimedRecord};

/// PostgreSQL's default WAL segment size (16 MiB); the real size of a cluster is in every
/// segment's long page header.
pub const DEFAULT_WAL_SEGMENT_SIZE: u32 = 16 * 1024 * 1024;

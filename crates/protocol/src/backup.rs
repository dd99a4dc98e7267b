//! BASE_BACKUP with PostgreSQL 15+ syntax and its CopyOut stream, turned into a sequence of
//! events the caller pulls one at a time; archive data is passed on as it arrives.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};
use pitr_pg::{Lsn, TimelineId};

use crate::client::{RawResultSet, ReplicationClient, State};
use crate::conn::Reader;
use crate::Error;

/// CHECKPOINT 'fast' or 'spread'.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckpointMode {
    /// Checkpoint as fast as possible (I/O burst, backup starts at once).
    Fast,
    /// A normal checkpoint, paced by checkpoint_completion_target.
    #[default]
    Spread,
}

/// What to ask BASE_BACKUP for. `Default` mirrors the server's defaults, except that a manifest
/// (with SHA-256 checksums) is requested.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseBackupOptions {
    pub label: String,
    /// Ask the server to estimate sizes (Tablespaces' `size_kb`) and send progress messages.
    pub progress: bool,
    pub checkpoint: CheckpointMode,
    /// Wait until the WAL needed by the backup is archived. Send `false` when that WAL is
    /// streamed on a second connection.
    pub wait: bool,
    /// Request a backup manifest with SHA-256 file checksums.
    pub manifest: bool,
    /// Put a `tablespace_map` file into base.tar instead of symlinks.
    pub tablespace_map: bool,
    /// Limit the transfer rate, in kB/s (32 to 1048576).
    pub max_rate: Option<u32>,
    /// Let the server verify page checksums (its default) and warn about failures.
    pub verify_checksums: bool,
}

impl Default for BaseBackupOptions {
    fn default() -> Self {
        BaseBackupOptions {
            label: "pitr base backup".into(),
            progress: false,
            checkpoint: CheckpointMode::Spread,
            wait: true,
            manifest: true,
            tablespace_map: false,
            max_rate: None,
            verify_checksums: true,
        }
    }
}

impl BaseBackupOptions {
    /// The BASE_BACKUP command (PostgreSQL 15+ option syntax).
    pub fn command(&self) -> String {
        let mut opts = vec![format!("LABEL '{}'", self.label.replace('\'', "''"))];
        if self.progress {
            opts.push("PROGRESS".into());
        }
        opts.push(match self.checkpoint {
            CheckpointMode::Fast => "CHECKPOINT 'fast'".into(),
            CheckpointMode::Spread => "CHECKPOINT 'spread'".into(),
        });
        opts.push(format!("WAIT {}", self.wait));
        if self.manifest {
            opts.push("MANIFEST 'yes'".into());
            // CRC32C, pg_basebackup's default: the repository already holds a SHA-256 of every
            // chunk and file, and a SHA-256 manifest would cost the server a core for the backup.
            opts.push("MANIFEST_CHECKSUMS 'CRC32C'".into());
        }
        if self.tablespace_map {
            opts.push("TABLESPACE_MAP".into());
        }
        if let Some(rate) = self.max_rate {
            opts.push(format!("MAX_RATE {rate}"));
        }
        if !self.verify_checksums {
            opts.push("VERIFY_CHECKSUMS false".into());
        }
        format!("BASE_BACKUP ({})", opts.join(", "))
    }
}

/// One row of BASE_BACKUP's tablespace list. The main data directory comes last, with
/// `oid` and `location` NULL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tablespace {
    pub oid: Option<u32>,
    pub location: Option<String>,
    /// Estimated size; only with `progress`.
    pub size_kb: Option<i64>,
}

/// What the backup stream yields, in this order: `Start`, `Tablespaces`, then for each archive
/// `NewArchive` followed by its `Data` (and `Progress`) chunks, then `ManifestStart` and
/// `ManifestData` chunks when a manifest was asked for, and `End` last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupEvent {
    /// The backup's start (checkpoint redo) position and timeline.
    Start {
        lsn: Lsn,
        timeline: TimelineId,
    },
    Tablespaces(Vec<Tablespace>),
    /// A tar archive begins: `base.tar` for the data directory, `<oid>.tar` for a tablespace
    /// at `tablespace_location`.
    NewArchive {
        name: String,
        tablespace_location: Option<String>,
    },
    /// The next bytes of the current archive (a tar stream).
    Data(Bytes),
    /// Bytes of archive data the server has sent so far.
    Progress(u64),
    ManifestStart,
    /// The next bytes of the backup_manifest (JSON).
    ManifestData(Bytes),
    /// The backup's end position: WAL up to here is needed to restore it.
    End {
        lsn: Lsn,
        timeline: TimelineId,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Result sets before the copy: start position, tablespaces.
    Header,
    Copy,
    /// The result set after the copy: end position.
    Trailer,
    Done,
}

/// A running BASE_BACKUP. Pull events with [`BaseBackupStream::next`] until it returns `None`;
/// the client is then idle again. Dropping the stream early leaves the client unusable.
#[derive(Debug)]
pub struct BaseBackupStream<'a> {
    client: &'a mut ReplicationClient,
    phase: Phase,
    header_sets: usize,
    current: Option<RawResultSet>,
    in_manifest: bool,
    end: Option<(Lsn, TimelineId)>,
    queue: VecDeque<BackupEvent>,
}

/// The oldest server whose BASE_BACKUP syntax and copy protocol this client speaks.
pub const MIN_SERVER_VERSION_NUM: u32 = 150000;

impl ReplicationClient {
    /// Start BASE_BACKUP. Refuses servers older than PostgreSQL 15.
    pub async fn base_backup(
        &mut self,
        options: &BaseBackupOptions,
    ) -> Result<BaseBackupStream<'_>, Error> {
        self.check_idle()?;
        let version = self.server_version_num().ok_or_else(|| {
            Error::Unsupported(format!(
                "server at {} reported no usable server_version ({:?})",
                self.target(),
                self.parameter("server_version")
            ))
        })?;
        check_server_version(version)?;
        let command = options.command();
        tracing::debug!(server = %self.target(), %command, "starting base backup");
        self.send_query(&command).await?;
        self.state = State::Busy("BASE_BACKUP");
        Ok(BaseBackupStream {
            client: self,
            phase: Phase::Header,
            header_sets: 0,
            current: None,
            in_manifest: false,
            end: None,
            queue: VecDeque::new(),
        })
    }
}

/// Refuse servers whose BASE_BACKUP this client cannot speak.
fn check_server_version(version_num: u32) -> Result<(), Error> {
    if version_num >= MIN_SERVER_VERSION_NUM {
        return Ok(());
    }
    let major = if version_num >= 100000 {
        format!("{}", version_num / 10000)
    } else {
        format!("{}.{}", version_num / 10000, version_num / 100 % 100)
    };
    Err(Error::Unsupported(format!(
        "PostgreSQL {major} is not supported by pitr backup: needs 15 or later"
    )))
}

impl BaseBackupStream<'_> {
    /// The next event, `None` after `End`. On an error the server reported, the client is
    /// idle again; on any other error it is unusable.
    pub async fn next(&mut self) -> Result<Option<BackupEvent>, Error> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Ok(Some(event));
            }
            if self.phase == Phase::Done {
                return Ok(None);
            }
            let msg = self.client.next_message().await?;
            match (&self.phase, msg.tag) {
                (Phase::Copy, b'd') => {
                    if let Some(event) = self.copy_data(msg.body)? {
                        return Ok(Some(event));
                    }
                }
                (Phase::Copy, b'c') => self.phase = Phase::Trailer,
                (Phase::Header | Phase::Trailer, b'T') => {
                    self.finish_result_set()?;
                    let columns = self.client.parse_row_description(&msg.body)?;
                    self.current = Some(RawResultSet {
                        columns,
                        rows: Vec::new(),
                    });
                }
                (Phase::Header | Phase::Trailer, b'D') => {
                    let row = self.client.parse_data_row(&msg.body)?;
                    match self.current.as_mut() {
                        Some(set) => set.rows.push(row),
                        None => {
                            return Err(self.client.violation("DataRow without RowDescription"))
                        }
                    }
                }
                (Phase::Header | Phase::Trailer, b'C') => self.finish_result_set()?,
                (Phase::Header, b'H') => {
                    self.finish_result_set()?;
                    if self.header_sets != 2 {
                        return Err(self.client.violation(format!(
                            "BASE_BACKUP sent {} result sets before its data, expected 2",
                            self.header_sets
                        )));
                    }
                    self.phase = Phase::Copy;
                }
                (Phase::Trailer, b'Z') => {
                    self.finish_result_set()?;
                    let (lsn, timeline) = match self.end {
                        Some(end) => end,
                        None => {
                            return Err(self
                                .client
                                .violation("BASE_BACKUP ended without its end position"))
                        }
                    };
                    self.phase = Phase::Done;
                    self.client.state = State::Idle;
                    tracing::debug!(server = %self.client.target(), %lsn, "base backup ended");
                    self.queue.push_back(BackupEvent::End { lsn, timeline });
                }
                (_, b'E') => {
                    let err = self.client.server_error(&msg.body);
                    let err = self.client.finish_with_error(err).await;
                    self.phase = Phase::Done;
                    return Err(err);
                }
                (phase, tag) => {
                    let message = format!(
                        "unexpected message {:?} during BASE_BACKUP ({phase:?})",
                        char::from(tag)
                    );
                    return Err(self.client.violation(message));
                }
            }
        }
    }

    /// Turn a completed result set into its event.
    fn finish_result_set(&mut self) -> Result<(), Error> {
        let Some(set) = self.current.take() else {
            return Ok(());
        };
        let position = |set: &RawResultSet| -> Option<(Lsn, TimelineId)> {
            let lsn = set.text(0)?.parse().ok()?;
            let tli = set.text(1)?.parse().ok()?;
            Some((lsn, TimelineId(tli)))
        };
        match (&self.phase, self.header_sets) {
            (Phase::Header, 0) => {
                let (lsn, timeline) = position(&set).ok_or_else(|| {
                    self.client
                        .violation(format!("BASE_BACKUP start position {:?}", set.rows))
                })?;
                tracing::debug!(server = %self.client.target(), %lsn, %timeline, "base backup started");
                self.queue.push_back(BackupEvent::Start { lsn, timeline });
            }
            (Phase::Header, 1) => {
                let mut tablespaces = Vec::with_capacity(set.rows.len());
                for row in &set.rows {
                    let text = |i: usize| {
                        row.get(i)
                            .and_then(Option::as_ref)
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    };
                    let oid = match text(0) {
                        None => None,
                        Some(s) => Some(s.parse().map_err(|_| {
                            self.client
                                .violation(format!("BASE_BACKUP tablespace oid {s:?}"))
                        })?),
                    };
                    let size_kb = match text(2) {
                        None => None,
                        Some(s) => Some(s.parse().map_err(|_| {
                            self.client
                                .violation(format!("BASE_BACKUP tablespace size {s:?}"))
                        })?),
                    };
                    tablespaces.push(Tablespace {
                        oid,
                        location: text(1),
                        size_kb,
                    });
                }
                self.queue.push_back(BackupEvent::Tablespaces(tablespaces));
            }
            (Phase::Header, n) => {
                return Err(self.client.violation(format!(
                    "BASE_BACKUP sent result set {} before its data, expected 2",
                    n + 1
                )))
            }
            (Phase::Trailer, _) => {
                self.end = Some(position(&set).ok_or_else(|| {
                    self.client
                        .violation(format!("BASE_BACKUP end position {:?}", set.rows))
                })?);
            }
            (phase, _) => {
                let message = format!("result set during BASE_BACKUP ({phase:?})");
                return Err(self.client.violation(message));
            }
        }
        if self.phase == Phase::Header {
            self.header_sets += 1;
        }
        Ok(())
    }

    /// One CopyData message of the PostgreSQL 15+ backup stream.
    fn copy_data(&mut self, mut body: Bytes) -> Result<Option<BackupEvent>, Error> {
        let Some(&kind) = body.first() else {
            return Err(self.client.violation("empty CopyData in BASE_BACKUP"));
        };
        body.advance(1);
        Ok(Some(match kind {
            b'd' if self.in_manifest => BackupEvent::ManifestData(body),
            b'd' => BackupEvent::Data(body),
            b'n' => {
                let mut r = Reader::new(&body);
                match (r.cstr(), r.cstr()) {
                    (Some(name), Some(location)) => BackupEvent::NewArchive {
                        name,
                        tablespace_location: (!location.is_empty()).then_some(location),
                    },
                    _ => return Err(self.client.violation("malformed new-archive message")),
                }
            }
            b'p' => match Reader::new(&body).i64() {
                Some(done) => BackupEvent::Progress(u64::try_from(done).unwrap_or(0)),
                None => return Err(self.client.violation("malformed progress message")),
            },
            b'm' => {
                self.in_manifest = true;
                BackupEvent::ManifestStart
            }
            other => {
                return Err(self.client.violation(format!(
                    "unknown BASE_BACKUP CopyData type {:?}",
                    char::from(other)
                )))
            }
        }))
    }

    /// Notices the server sent so far, e.g. checksum failure warnings (see
    /// [`ReplicationClient::take_notices`]).
    pub fn take_notices(&mut self) -> Vec<crate::ServerMessage> {
        self.client.take_notices()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_servers_are_refused() {
        assert_eq!(
            check_server_version(140011).unwrap_err().to_string(),
            "PostgreSQL 14 is not supported by pitr backup: needs 15 or later"
        );
        assert_eq!(
            check_server_version(90624).unwrap_err().to_string(),
            "PostgreSQL 9.6 is not supported by pitr backup: needs 15 or later"
        );
        assert!(check_server_version(150000).is_ok());
        assert!(check_server_version(180004).is_ok());
    }

    #[test]
    fn command_syntax() {
        let opts = BaseBackupOptions {
            label: "it's".into(),
            progress: true,
            checkpoint: CheckpointMode::Fast,
            wait: false,
            manifest: true,
            tablespace_map: true,
            max_rate: Some(1024),
            verify_checksums: true,
        };
        assert_eq!(
            opts.command(),
            "BASE_BACKUP (LABEL 'it''s', PROGRESS, CHECKPOINT 'fast', WAIT false, \
             MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', TABLESPACE_MAP, MAX_RATE 1024)"
        );
        let plain = BaseBackupOptions {
            manifest: false,
            verify_checksums: false,
            ..Default::default()
        };
        assert_eq!(
            plain.command(),
            "BASE_BACKUP (LABEL 'pitr base backup', CHECKPOINT 'spread', WAIT true, \
             VERIFY_CHECKSUMS false)"
        );
    }
}

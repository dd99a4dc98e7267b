//! Turning BASE_BACKUP's tar streams into manifest entries: each file's bytes go to the
//! chunk writer as they arrive; an entry is complete once its chunks are stored. What the
//! server sends is checked here, where it enters: every name must be a [`RelPath`], a link in
//! `pg_tblspc` is refused (pitr asks for TABLESPACE_MAP, with which PostgreSQL sends none
//! there), and base.tar must hold what a restore starts from. Other symbolic links (a DBA's
//! `log -> /var/log/…`) are recorded as they are, target and all: nothing here follows them,
//! and the lay-down never creates them (it names them instead).

use anyhow::{bail, Context};

use pitr_store::{ChunkedFile, PendingChunks, Uploader};

use super::tar::{EntryKind, TarEvent, TarHeader, TarParser};
use super::KnownFiles;
use crate::repofile::{chunks_hash, FileEntry, FileKind, RelPath};

/// A manifest entry whose chunks may still be uploading.
pub(super) struct PendingEntry {
    pub entry: FileEntry,
    pub chunks: Option<PendingChunks>,
}

impl PendingEntry {
    pub async fn resolve(self) -> anyhow::Result<FileEntry> {
        let mut entry = self.entry;
        if let Some(p) = self.chunks {
            (entry.chunks, entry.fingerprints) = p.wait().await?;
            entry.hash = Some(chunks_hash(&entry.chunks));
        }
        Ok(entry)
    }
}

/// Files a base backup cannot be restored without; a base.tar lacking one fails the backup.
pub(super) const REQUIRED_FILES: [&str; 2] = ["backup_label", "global/pg_control"];

fn place(tablespace: Option<u32>) -> String {
    tablespace.map_or("the data directory".to_string(), |t| {
        format!("tablespace {t}")
    })
}

/// The manifest entry for a tar header; a name that could leave its directory, or a
/// symbolic link where tablespaces live, fails the backup.
fn entry_from(h: &TarHeader, tablespace: Option<u32>) -> anyhow::Result<FileEntry> {
    let path: RelPath = h.path.parse().with_context(|| {
        format!(
            "the server sent a backup entry {:?} in {}",
            h.path,
            place(tablespace)
        )
    })?;
    if h.kind == EntryKind::Symlink && path.components().next() == Some("pg_tblspc") {
        // PostgreSQL sends pg_tblspc/<oid> links only without TABLESPACE_MAP, which pitr
        // always asks for: a server that sends one anyway is not telling the truth.
        bail!(
            "the server sent a symbolic link {path} -> {:?} in {}: pitr asks for \
             TABLESPACE_MAP, with which PostgreSQL sends no tablespace links; refusing it",
            h.link_target,
            place(tablespace)
        );
    }
    Ok(FileEntry {
        path,
        tablespace,
        kind: match h.kind {
            EntryKind::File => FileKind::File,
            EntryKind::Directory => FileKind::Directory,
            EntryKind::Symlink => FileKind::Symlink,
        },
        mode: h.mode & 0o7777,
        size: h.size,
        mtime: h.mtime,
        chunks: Vec::new(),
        fingerprints: Vec::new(),
        hash: None,
        link: (h.kind == EntryKind::Symlink).then(|| h.link_target.clone()),
    })
}

enum Act<'a> {
    Start(TarHeader),
    Data(&'a [u8]),
    End,
}

/// Receives one tablespace's tar stream and turns it into manifest entries.
pub(super) struct ArchiveSink {
    tablespace: Option<u32>,
    parser: TarParser,
    current: Option<(FileEntry, ChunkedFile)>,
    /// Which of [`REQUIRED_FILES`] arrived (base.tar only).
    required: [bool; 2],
}

impl ArchiveSink {
    pub fn new(tablespace: Option<u32>) -> Self {
        ArchiveSink {
            tablespace,
            parser: TarParser::default(),
            current: None,
            required: [false; 2],
        }
    }

    pub async fn feed(
        &mut self,
        data: &[u8],
        up: &Uploader,
        known: &KnownFiles,
        out: &mut Vec<PendingEntry>,
    ) -> anyhow::Result<()> {
        let mut acts = Vec::new();
        self.parser.feed(data, |e| {
            acts.push(match e {
                TarEvent::Entry(h) => Act::Start(h),
                TarEvent::Data(d) => Act::Data(d),
                TarEvent::EntryEnd => Act::End,
            });
            Ok(())
        })?;
        for act in acts {
            match act {
                Act::Start(h) => {
                    let entry = entry_from(&h, self.tablespace)?;
                    if self.tablespace.is_none() && entry.kind == FileKind::File {
                        if let Some(i) = REQUIRED_FILES
                            .iter()
                            .position(|f| *f == entry.path.as_str())
                        {
                            self.required[i] = true;
                        }
                    }
                    let key = (self.tablespace, entry.path.clone());
                    let file = up.file(known.get(&key).cloned());
                    self.current = Some((entry, file));
                }
                Act::Data(d) => {
                    let (_, file) = self.current.as_mut().context("tar data outside an entry")?;
                    file.push(up, d).await;
                }
                Act::End => {
                    let (entry, file) = self.current.take().context("tar entry end twice")?;
                    let chunks = (entry.kind == FileKind::File).then_some(file);
                    let chunks = match chunks {
                        Some(f) => Some(f.finish(up).await),
                        None => None,
                    };
                    out.push(PendingEntry { entry, chunks });
                }
            }
        }
        Ok(())
    }

    /// The archive is over: it must have ended properly and, for base.tar, held
    /// [`REQUIRED_FILES`].
    pub fn finish(&self, name: &str) -> anyhow::Result<()> {
        self.parser
            .finish()
            .with_context(|| format!("archive {name}"))?;
        if self.tablespace.is_none() {
            let missing: Vec<&str> = REQUIRED_FILES
                .iter()
                .zip(self.required)
                .filter(|(_, seen)| !seen)
                .map(|(f, _)| *f)
                .collect();
            if !missing.is_empty() {
                bail!(
                    "archive {name} lacks {}: the server sent a base backup that cannot be \
                     restored",
                    missing.join(" and ")
                );
            }
        }
        Ok(())
    }
}

//! A push parser for the tar streams BASE_BACKUP sends: bytes arrive in CopyData pieces of any
//! size, entries come out as header events followed by their data, without buffering a file.
//! The stream comes from the server, so it is parsed strictly: PostgreSQL 15+ ends each
//! archive with two zero blocks, and a stream that stops before them (a truncated member, a
//! missing end) or carries anything after them is an error, not a shorter backup.

/// One thing found in the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum TarEvent<'a> {
    /// Start of an entry; for regular files, `Data` events for `size` bytes follow.
    Entry(TarHeader),
    Data(&'a [u8]),
    /// All of the current entry's data has been seen.
    EntryEnd,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarHeader {
    /// Path with any leading `./` removed.
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub size: u64,
    pub mtime: i64,
    pub link_target: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
}

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("tar header at offset {offset}: {detail}")]
    BadHeader { offset: u64, detail: String },
    #[error("tar stream ended inside an entry (at offset {offset})")]
    Truncated { offset: u64 },
    #[error(
        "tar stream ended at offset {offset} without the two zero blocks that end an archive \
         (truncated)"
    )]
    MissingEnd { offset: u64 },
    #[error("a single zero block at offset {offset} is followed by more entries, not by the second zero block that ends an archive")]
    LoneZeroBlock { offset: u64 },
    #[error("data after the end of the archive (at offset {offset})")]
    TrailingData { offset: u64 },
}

enum State {
    /// Collecting a 512-byte header block.
    Header,
    /// Inside an entry's data: bytes left, then padding to skip.
    Data {
        left: u64,
        pad: u64,
    },
    Padding {
        left: u64,
    },
    /// One zero block seen: the next block must be zeros too.
    SecondZero,
    /// Two zero blocks seen: only zero padding (as tar's record blocking adds) may follow.
    End,
}

pub struct TarParser {
    state: State,
    block: Vec<u8>,
    offset: u64,
}

impl Default for TarParser {
    fn default() -> Self {
        TarParser {
            state: State::Header,
            block: Vec::with_capacity(512),
            offset: 0,
        }
    }
}

impl TarParser {
    /// Move bytes of `input` into the 512-byte block being collected; whether it is whole.
    fn fill_block(&mut self, input: &mut &[u8]) -> bool {
        let take = (512 - self.block.len()).min(input.len());
        self.block.extend_from_slice(&input[..take]);
        *input = &input[take..];
        self.offset += take as u64;
        self.block.len() == 512
    }

    /// Feed `input`; `on_event` sees every event in order.
    pub fn feed<'a>(
        &mut self,
        mut input: &'a [u8],
        mut on_event: impl FnMut(TarEvent<'a>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        while !input.is_empty() {
            match &mut self.state {
                State::End => {
                    if let Some(i) = input.iter().position(|&b| b != 0) {
                        return Err(TarError::TrailingData {
                            offset: self.offset + i as u64,
                        }
                        .into());
                    }
                    self.offset += input.len() as u64;
                    return Ok(());
                }
                State::SecondZero => {
                    if !self.fill_block(&mut input) {
                        continue;
                    }
                    if self.block.iter().any(|&b| b != 0) {
                        return Err(TarError::LoneZeroBlock {
                            offset: self.offset - 1024,
                        }
                        .into());
                    }
                    self.block.clear();
                    self.state = State::End;
                }
                State::Header => {
                    if !self.fill_block(&mut input) {
                        continue;
                    }
                    if self.block.iter().all(|&b| b == 0) {
                        self.block.clear();
                        self.state = State::SecondZero;
                        continue;
                    }
                    let block = std::mem::take(&mut self.block);
                    let header = parse_header(&block).map_err(|detail| TarError::BadHeader {
                        offset: self.offset - 512,
                        detail,
                    })?;
                    let size = if header.kind == EntryKind::File {
                        header.size
                    } else {
                        0
                    };
                    on_event(TarEvent::Entry(header))?;
                    self.state = if size == 0 {
                        on_event(TarEvent::EntryEnd)?;
                        State::Header
                    } else {
                        State::Data {
                            left: size,
                            pad: (512 - size % 512) % 512,
                        }
                    };
                    self.block.reserve(512);
                }
                State::Data { left, pad } => {
                    let take = (*left).min(input.len() as u64) as usize;
                    on_event(TarEvent::Data(&input[..take]))?;
                    input = &input[take..];
                    self.offset += take as u64;
                    *left -= take as u64;
                    if *left == 0 {
                        let pad = *pad;
                        on_event(TarEvent::EntryEnd)?;
                        self.state = if pad == 0 {
                            State::Header
                        } else {
                            State::Padding { left: pad }
                        };
                    }
                }
                State::Padding { left } => {
                    let take = (*left).min(input.len() as u64);
                    input = &input[take as usize..];
                    self.offset += take;
                    *left -= take;
                    if *left == 0 {
                        self.state = State::Header;
                    }
                }
            }
        }
        Ok(())
    }

    /// The stream is over: it must have reached the two zero blocks that end it.
    pub fn finish(&self) -> Result<(), TarError> {
        let offset = self.offset;
        match self.state {
            State::End => Ok(()),
            State::Header | State::SecondZero => Err(TarError::MissingEnd { offset }),
            State::Data { .. } | State::Padding { .. } => Err(TarError::Truncated { offset }),
        }
    }
}

fn field_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Octal, or base-256 when the high bit is set (PostgreSQL uses it for files >= 8 GiB).
fn number(b: &[u8]) -> Result<u64, String> {
    if b[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(b[0] & 0x7F);
        for &c in &b[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(c)))
                .ok_or("base-256 number overflows")?;
        }
        return Ok(v);
    }
    let s = field_str(b);
    let s = s.trim_matches(|c: char| c == ' ' || c == '\0');
    if s.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(s, 8).map_err(|_| format!("bad octal number {s:?}"))
}

fn parse_header(b: &[u8]) -> Result<TarHeader, String> {
    let stored = number(&b[148..156])?;
    let sum: u64 = b
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(c)
            }
        })
        .sum();
    if sum != stored {
        return Err(format!("checksum {stored} does not match {sum}"));
    }
    let mut path = field_str(&b[0..100]);
    if &b[257..262] == b"ustar" {
        let prefix = field_str(&b[345..500]);
        if !prefix.is_empty() {
            path = format!("{prefix}/{path}");
        }
    }
    let path = path
        .trim_start_matches("./")
        .trim_end_matches('/')
        .to_string();
    if path.split('/').any(|c| c == "..") || path.starts_with('/') {
        return Err(format!("unsafe path {path:?}"));
    }
    let kind = match b[156] {
        b'0' | 0 => EntryKind::File,
        b'5' => EntryKind::Directory,
        b'2' => EntryKind::Symlink,
        other => {
            return Err(format!(
                "unsupported entry type {:?} for {path}",
                other as char
            ))
        }
    };
    Ok(TarHeader {
        path,
        kind,
        mode: number(&b[100..108])? as u32,
        size: number(&b[124..136])?,
        mtime: number(&b[136..148])? as i64,
        link_target: field_str(&b[157..257]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, kind: u8, size: u64, link: &str) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..name.len()].copy_from_slice(name.as_bytes());
        b[100..107].copy_from_slice(b"0000600");
        b[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        b[136..147].copy_from_slice(b"14723312345");
        b[156] = kind;
        b[157..157 + link.len()].copy_from_slice(link.as_bytes());
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        b[148..156].copy_from_slice(b"        ");
        let sum: u64 = b.iter().map(|&c| u64::from(c)).sum();
        b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        b
    }

    fn archive() -> (Vec<u8>, Vec<u8>) {
        let content: Vec<u8> = (0..1300u32).map(|i| (i % 251) as u8).collect();
        let mut t = header("./backup_label", b'0', content.len() as u64, "");
        t.extend_from_slice(&content);
        t.resize(t.len() + (512 - content.len() % 512), 0);
        t.extend(header("./pg_wal/", b'5', 0, ""));
        t.extend(header("./pg_tblspc/16384", b'2', 0, "/srv/ts"));
        t.extend(header("empty", b'0', 0, ""));
        t.extend(vec![0u8; 1024]);
        (t, content)
    }

    fn collect(stream: &[u8], piece: usize) -> (Vec<TarHeader>, Vec<u8>, usize) {
        let mut p = TarParser::default();
        let mut headers = Vec::new();
        let mut data = Vec::new();
        let mut ends = 0;
        for part in stream.chunks(piece) {
            p.feed(part, |e| {
                match e {
                    TarEvent::Entry(h) => headers.push(h),
                    TarEvent::Data(d) => data.extend_from_slice(d),
                    TarEvent::EntryEnd => ends += 1,
                }
                Ok(())
            })
            .unwrap();
        }
        p.finish().unwrap();
        (headers, data, ends)
    }

    #[test]
    fn parses_in_any_piece_size() {
        let (t, content) = archive();
        for piece in [1, 7, 511, 512, 513, 4096, t.len()] {
            let (headers, data, ends) = collect(&t, piece);
            assert_eq!(headers.len(), 4, "piece {piece}");
            assert_eq!(ends, 4);
            assert_eq!(headers[0].path, "backup_label");
            assert_eq!(headers[0].mode, 0o600);
            assert_eq!(headers[1].path, "pg_wal");
            assert_eq!(headers[1].kind, EntryKind::Directory);
            assert_eq!(headers[2].kind, EntryKind::Symlink);
            assert_eq!(headers[2].link_target, "/srv/ts");
            assert_eq!(data, content);
        }
    }

    fn feed_all(stream: &[u8], piece: usize) -> anyhow::Result<()> {
        let mut p = TarParser::default();
        for part in stream.chunks(piece) {
            p.feed(part, |_| Ok(()))?;
        }
        p.finish()?;
        Ok(())
    }

    #[track_caller]
    fn assert_refused(stream: &[u8], words: &str) {
        for piece in [1, 100, 512, 1000, stream.len().max(1)] {
            let err = feed_all(stream, piece).expect_err("damaged stream accepted");
            let text = format!("{err:#}");
            assert!(
                text.contains(words),
                "piece {piece}: {text:?} lacks {words:?}"
            );
        }
    }

    /// The end of an archive is two zero blocks: without them, or with one only, the stream
    /// is truncated; zero padding may follow them, nothing else may.
    #[test]
    fn end_of_archive_is_two_zero_blocks() {
        let (t, _) = archive();
        let body = &t[..t.len() - 1024];
        assert_refused(body, "without the two zero blocks");
        assert_refused(&t[..t.len() - 512], "without the two zero blocks");
        assert_refused(&t[..t.len() - 1], "without the two zero blocks");
        let mut lone = body.to_vec();
        lone.extend([0u8; 512]);
        lone.extend(header("late", b'0', 0, ""));
        lone.extend([0u8; 1024]);
        assert_refused(&lone, "single zero block");
        let mut after = t.clone();
        after.extend(header("hidden", b'0', 0, ""));
        assert_refused(&after, "data after the end of the archive");
        let mut after = t.clone();
        after.extend([0u8; 700]);
        after.push(1);
        assert_refused(&after, &format!("(at offset {})", t.len() + 700));
        let mut padded = t.clone();
        padded.extend(vec![0u8; 10240 - t.len() % 10240]);
        feed_all(&padded, 333).expect("zero padding after the end blocks");
        feed_all(&[0u8; 1024], 1).expect("an empty archive");
    }

    /// A member cut short (in its data or its padding) is truncation, named as such.
    #[test]
    fn truncated_members_are_refused() {
        let (t, _) = archive();
        assert_refused(&t[..512 + 700], "ended inside an entry");
        assert_refused(&t[..512 + 1300 + 10], "ended inside an entry");
        assert_refused(&t[..300], "without the two zero blocks");
    }

    #[test]
    fn unsafe_names_are_refused() {
        for name in ["../x", "./../x", "a/../../x", "/etc/passwd"] {
            let mut t = header(name, b'0', 0, "");
            t.extend([0u8; 1024]);
            assert_refused(&t, "unsafe path");
        }
    }

    #[test]
    fn rejects_damage() {
        let (mut t, _) = archive();
        t[10] ^= 1; // checksum no longer matches
        let mut p = TarParser::default();
        assert!(p.feed(&t, |_| Ok(())).is_err());
        let (t, _) = archive();
        let mut p = TarParser::default();
        p.feed(&t[..700], |_| Ok(())).unwrap();
        assert!(p.finish().is_err());
    }

    #[test]
    fn base256_sizes() {
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[11] = 1;
        f[10] = 2;
        assert_eq!(number(&f).unwrap(), 0x201);
        assert_eq!(number(b"00000001750\0").unwrap(), 1000);
    }
}

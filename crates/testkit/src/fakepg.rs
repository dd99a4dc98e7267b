//! A scripted replication server on 127.0.0.1 for the cases a real PostgreSQL never produces:
//! authentication that skips steps, a password request over plain TCP, and BASE_BACKUP tar
//! streams that are damaged or hostile. It speaks just enough of the protocol (raw bytes, no
//! pitr crate) for a backup to reach the part under test; every connection runs on its own
//! thread and the server stops when the [`FakePg`] is dropped.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How the server authenticates the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// AuthenticationOk straight away.
    Trust,
    /// AuthenticationCleartextPassword, then Ok whatever the password.
    Cleartext,
    /// AuthenticationMD5Password, then Ok whatever the hash.
    Md5,
    /// AuthenticationSASL offering these mechanisms, then AuthenticationOk right after the
    /// client's first message: SCRAM skipped entirely.
    ScramOkAfterStart(Vec<String>),
    /// A real SCRAM server-first message, then AuthenticationOk instead of SASLFinal: the
    /// server never proves it knows the password.
    ScramOkBeforeFinal,
    /// A real SCRAM server-first message, then a SASLFinal whose server signature is forged
    /// (the server does not know the password), then AuthenticationOk.
    ScramForgedFinal,
    /// FATAL 28P01 without asking for anything.
    Refuse,
    /// AuthenticationSASL (SCRAM-SHA-256), then, after the client's first message, a switch
    /// to another method: AuthenticationCleartextPassword (`3`) or AuthenticationMD5Password
    /// (`5`); Ok after whatever the client answers.
    ScramThenSwitch(i32),
}

/// A tar member for [`tar`]: name, type flag (`b'0'` file, `b'5'` directory, `b'2'` symlink),
/// content (files) or link target (symlinks).
#[derive(Clone, Debug)]
pub struct Member {
    pub name: String,
    pub kind: u8,
    pub data: Vec<u8>,
}

impl Member {
    pub fn file(name: &str, data: &[u8]) -> Member {
        Member {
            name: name.into(),
            kind: b'0',
            data: data.to_vec(),
        }
    }

    pub fn dir(name: &str) -> Member {
        Member {
            name: name.into(),
            kind: b'5',
            data: Vec::new(),
        }
    }

    pub fn symlink(name: &str, target: &str) -> Member {
        Member {
            name: name.into(),
            kind: b'2',
            data: target.as_bytes().to_vec(),
        }
    }
}

/// A ustar header block for `m` (file size from its data; symlink target in the link field).
pub fn tar_header(m: &Member) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    let name = m.name.as_bytes();
    let n = name.len().min(100);
    b[..n].copy_from_slice(&name[..n]);
    b[100..107].copy_from_slice(if m.kind == b'5' {
        b"0000700"
    } else {
        b"0000600"
    });
    b[108..115].copy_from_slice(b"0000000");
    b[116..123].copy_from_slice(b"0000000");
    let size = if m.kind == b'0' { m.data.len() } else { 0 };
    b[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    b[136..147].copy_from_slice(b"14723312345");
    b[156] = m.kind;
    if m.kind == b'2' {
        let n = m.data.len().min(100);
        b[157..157 + n].copy_from_slice(&m.data[..n]);
    }
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
    b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    b
}

/// A tar archive of `members` ending with the two zero blocks PostgreSQL 15+ sends.
pub fn tar(members: &[Member]) -> Vec<u8> {
    let mut t = Vec::new();
    for m in members {
        t.extend(tar_header(m));
        if m.kind == b'0' {
            t.extend_from_slice(&m.data);
            t.resize(t.len().next_multiple_of(512), 0);
        }
    }
    t.extend([0u8; 1024]);
    t
}

/// The members of a base.tar a restore can start from (backup_label, pg_control, a table).
pub fn minimal_base_members() -> Vec<Member> {
    vec![
        Member::file(
            "backup_label",
            b"START WAL LOCATION: 0/100028 (file 000000010000000000000001)\n\
              CHECKPOINT LOCATION: 0/100060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
              START TIME: 2026-11-26 00:00:00 UTC\nLABEL: fake\nSTART TIMELINE: 1\n",
        ),
        Member::dir("global"),
        Member::file("global/pg_control", &[7u8; 8192]),
        Member::dir("base"),
        Member::dir("base/1"),
        Member::file("base/1/1259", &[1u8; 8192]),
        Member::dir("pg_wal"),
    ]
}

/// What BASE_BACKUP answers.
#[derive(Clone, Debug)]
pub struct BackupScript {
    /// (archive name, bytes) in order; the bytes go out as CopyData pieces of `piece` bytes.
    pub archives: Vec<(String, Vec<u8>)>,
    pub piece: usize,
    /// The server's backup_manifest.
    pub manifest: Vec<u8>,
    /// When set, BASE_BACKUP stops after its start position until the test opens the gate.
    pub gate: Option<Gate>,
}

/// A point where the fake server waits for the test: [`Gate::wait_reached`] returns once the
/// server is there, [`Gate::open`] lets it go on.
#[derive(Clone, Debug, Default)]
pub struct Gate(Arc<(Mutex<(bool, bool)>, std::sync::Condvar)>);

impl Gate {
    /// Block until the server has reached the gate (call from a blocking thread).
    pub fn wait_reached(&self) {
        let (lock, cv) = &*self.0;
        let mut state = lock.lock().expect("gate lock");
        while !state.0 {
            state = cv.wait(state).expect("gate lock");
        }
    }

    pub fn open(&self) {
        let (lock, cv) = &*self.0;
        lock.lock().expect("gate lock").1 = true;
        cv.notify_all();
    }

    /// The server side: say it is here, then wait for the test to open the gate.
    fn pass(&self) {
        let (lock, cv) = &*self.0;
        let mut state = lock.lock().expect("gate lock");
        state.0 = true;
        cv.notify_all();
        while !state.1 {
            state = cv.wait(state).expect("gate lock");
        }
    }
}

impl BackupScript {
    /// One base.tar holding `tar_bytes`.
    pub fn base_tar(tar_bytes: Vec<u8>) -> BackupScript {
        BackupScript {
            archives: vec![("base.tar".into(), tar_bytes)],
            piece: 700,
            manifest: br#"{"PostgreSQL-Backup-Manifest-Version": 1, "Files": []}"#.to_vec(),
            gate: None,
        }
    }
}

/// What the server does.
#[derive(Clone, Debug)]
pub struct Script {
    pub auth: Auth,
    pub backup: Option<BackupScript>,
    /// After authentication, before ReadyForQuery: this many NoticeResponses, each with a
    /// message of this many bytes (a server flooding the client).
    pub notice_flood: Option<(usize, usize)>,
}

/// The system identifier the fake server reports.
pub const SYSTEM_IDENTIFIER: u64 = 7_300_000_000_000_000_001;

/// What the server saw, for the tests' assertions.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Every password message's payload (cleartext, MD5 hash or SASL message).
    pub passwords: Vec<Vec<u8>>,
    /// SASL mechanisms the client chose.
    pub sasl_mechanisms: Vec<String>,
    /// Simple queries, in order.
    pub queries: Vec<String>,
    pub ssl_requests: usize,
    pub connections: usize,
}

/// The running server; stops on drop.
pub struct FakePg {
    port: u16,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl FakePg {
    pub fn start(script: Script) -> FakePg {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("listener address").port();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (seen, stop) = (seen.clone(), stop.clone());
            let script = Arc::new(script);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((sock, _)) => {
                            let (seen, script) = (seen.clone(), script.clone());
                            seen.lock().expect("seen lock").connections += 1;
                            std::thread::spawn(move || {
                                let _ = sock.set_nonblocking(false);
                                let _ = Session { sock, seen }.run(&script);
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(_) => return,
                    }
                }
            })
        };
        FakePg {
            port,
            seen,
            stop,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string for this server with `extra` settings appended.
    pub fn conn(&self, extra: &str) -> String {
        format!("host=127.0.0.1 port={} user=fake {extra}", self.port)
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().expect("seen lock").clone()
    }
}

impl Drop for FakePg {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

struct Session {
    sock: TcpStream,
    seen: Arc<Mutex<Seen>>,
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len() + 5);
    m.push(tag);
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn auth(code: i32, extra: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(extra);
    msg(b'R', &body)
}

fn error(code: &str, text: &str) -> Vec<u8> {
    let body = format!("SFATAL\0VFATAL\0C{code}\0M{text}\0\0");
    msg(b'E', body.as_bytes())
}

/// RowDescription + DataRows (text) + CommandComplete.
fn result_set(columns: &[&str], rows: &[Vec<Option<&str>>]) -> Vec<u8> {
    let mut body = (columns.len() as i16).to_be_bytes().to_vec();
    for c in columns {
        body.extend_from_slice(c.as_bytes());
        body.push(0);
        body.extend_from_slice(&[0; 4]); // table oid
        body.extend_from_slice(&[0; 2]); // column
        body.extend_from_slice(&25i32.to_be_bytes()); // text
        body.extend_from_slice(&(-1i16).to_be_bytes());
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&[0; 2]);
    }
    let mut out = msg(b'T', &body);
    for row in rows {
        let mut body = (row.len() as i16).to_be_bytes().to_vec();
        for v in row {
            match v {
                Some(v) => {
                    body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    body.extend_from_slice(v.as_bytes());
                }
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        out.extend(msg(b'D', &body));
    }
    out.extend(msg(b'C', b"SELECT\0"));
    out
}

const READY: &[u8] = b"Z\0\0\0\x05I";

impl Session {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().expect("seen lock")
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sock.write_all(bytes)
    }

    /// A typed message: (tag, body).
    fn read_msg(&mut self) -> io::Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.sock.read_exact(&mut head)?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let len = usize::try_from(len - 4).map_err(|_| io::ErrorKind::InvalidData)?;
        let mut body = vec![0u8; len];
        self.sock.read_exact(&mut body)?;
        Ok((head[0], body))
    }

    fn run(mut self, script: &Script) -> io::Result<()> {
        // Startup, answering SSLRequest/GSSENCRequest with "no".
        loop {
            let mut len = [0u8; 4];
            self.sock.read_exact(&mut len)?;
            let len = usize::try_from(i32::from_be_bytes(len) - 4)
                .map_err(|_| io::ErrorKind::InvalidData)?;
            let mut body = vec![0u8; len];
            self.sock.read_exact(&mut body)?;
            match body.get(..4) {
                Some([0x04, 0xd2, 0x16, 0x2f]) => {
                    self.seen().ssl_requests += 1;
                    self.send(b"N")?;
                }
                Some([0x04, 0xd2, 0x16, 0x30]) => self.send(b"N")?,
                _ => break,
            }
        }
        if !self.authenticate(&script.auth)? {
            return Ok(());
        }
        if let Some((count, size)) = script.notice_flood {
            let mut body = b"SWARNING\0VWARNING\0C01000\0M".to_vec();
            body.extend(std::iter::repeat_n(b'x', size));
            body.extend_from_slice(b"\0\0");
            let notice = msg(b'N', &body);
            for _ in 0..count {
                self.send(&notice)?;
            }
        }
        let mut hello = msg(b'S', b"server_version\x0015.4\0");
        hello.extend(msg(b'S', b"integer_datetimes\0on\0"));
        hello.extend(msg(b'K', &[0, 0, 0, 42, 0, 0, 0, 7]));
        hello.extend_from_slice(READY);
        self.send(&hello)?;
        loop {
            let (tag, body) = self.read_msg()?;
            match tag {
                b'X' => return Ok(()),
                b'Q' => {
                    let sql = String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(&body))
                        .into_owned();
                    self.seen().queries.push(sql.clone());
                    self.query(&sql, script)?;
                }
                _ => {
                    self.send(&error("08P01", "unexpected message"))?;
                    return Ok(());
                }
            }
        }
    }

    /// False when the server refused the client.
    fn authenticate(&mut self, how: &Auth) -> io::Result<bool> {
        match how {
            Auth::Trust => {}
            Auth::Refuse => {
                self.send(&error("28P01", "authentication refused by the fake server"))?;
                return Ok(false);
            }
            Auth::Cleartext | Auth::Md5 => {
                if *how == Auth::Cleartext {
                    self.send(&auth(3, &[]))?;
                } else {
                    self.send(&auth(5, b"salt"))?;
                }
                let (tag, body) = self.read_msg()?;
                if tag != b'p' {
                    return Ok(false);
                }
                self.seen().passwords.push(body);
            }
            Auth::ScramOkAfterStart(mechanisms) => {
                let mut list = Vec::new();
                for m in mechanisms {
                    list.extend_from_slice(m.as_bytes());
                    list.push(0);
                }
                list.push(0);
                self.send(&auth(10, &list))?;
                let Some(_) = self.sasl_initial()? else {
                    return Ok(false);
                };
            }
            Auth::ScramThenSwitch(code) => {
                self.send(&auth(10, b"SCRAM-SHA-256\0\0"))?;
                let Some(_) = self.sasl_initial()? else {
                    return Ok(false);
                };
                let salt: &[u8] = if *code == 5 { b"salt" } else { b"" };
                self.send(&auth(*code, salt))?;
                let (tag, body) = self.read_msg()?;
                if tag != b'p' {
                    return Ok(false);
                }
                self.seen().passwords.push(body);
            }
            Auth::ScramOkBeforeFinal | Auth::ScramForgedFinal => {
                self.send(&auth(10, b"SCRAM-SHA-256\0\0"))?;
                let Some(first) = self.sasl_initial()? else {
                    return Ok(false);
                };
                // client-first-message: gs2 header, then "n=,r=<nonce>".
                let text = String::from_utf8_lossy(&first).into_owned();
                let nonce = text
                    .split(',')
                    .find_map(|p| p.strip_prefix("r="))
                    .unwrap_or("")
                    .to_string();
                let server_first = format!("r={nonce}ZmFrZXNlcnZlcm5vbmNl,s=c2FsdHNhbHQ=,i=4096");
                self.send(&auth(11, server_first.as_bytes()))?;
                let (tag, body) = self.read_msg()?;
                if tag != b'p' {
                    return Ok(false);
                }
                self.seen().passwords.push(body);
                if matches!(how, Auth::ScramForgedFinal) {
                    // 32 bytes of signature, base64, that no password produces.
                    self.send(&auth(12, b"v=Zm9yZ2VkIHNlcnZlciBzaWduYXR1cmUgMDEyMzQ1Njc="))?;
                }
            }
        }
        self.send(&auth(0, &[]))?;
        Ok(true)
    }

    /// The SASLInitialResponse's client-first message.
    fn sasl_initial(&mut self) -> io::Result<Option<Vec<u8>>> {
        let (tag, body) = self.read_msg()?;
        if tag != b'p' {
            return Ok(None);
        }
        let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
        let mechanism = String::from_utf8_lossy(&body[..end]).into_owned();
        self.seen().sasl_mechanisms.push(mechanism);
        let data = body.get(end + 5..).unwrap_or(&[]).to_vec();
        self.seen().passwords.push(data.clone());
        Ok(Some(data))
    }

    fn query(&mut self, sql: &str, script: &Script) -> io::Result<()> {
        let mut out = if sql == "IDENTIFY_SYSTEM" {
            let id = SYSTEM_IDENTIFIER.to_string();
            result_set(
                &["systemid", "timeline", "xlogpos", "dbname"],
                &[vec![Some(&id), Some("1"), Some("0/100100"), None]],
            )
        } else if sql.starts_with("SHOW") {
            result_set(&["wal_segment_size"], &[vec![Some("1MB")]])
        } else if sql.starts_with("CREATE_REPLICATION_SLOT") {
            result_set(
                &[
                    "slot_name",
                    "consistent_point",
                    "snapshot_name",
                    "output_plugin",
                ],
                &[vec![Some("slot"), Some("0/100000"), None, None]],
            )
        } else if sql.starts_with("BASE_BACKUP") {
            return self.base_backup(script.backup.as_ref());
        } else if sql.starts_with("START_REPLICATION") {
            return self.start_replication();
        } else {
            // Severity ERROR: the session goes on.
            let text =
                format!("SERROR\0VERROR\0C42601\0Mthe fake server does not know {sql:?}\0\0");
            msg(b'E', text.as_bytes())
        };
        out.extend_from_slice(READY);
        self.send(&out)
    }

    fn base_backup(&mut self, script: Option<&BackupScript>) -> io::Result<()> {
        let Some(script) = script else {
            let mut out = msg(b'E', b"SERROR\0VERROR\0C0A000\0Mno backup scripted\0\0");
            out.extend_from_slice(READY);
            return self.send(&out);
        };
        let mut out = result_set(&["recptr", "tli"], &[vec![Some("0/100028"), Some("1")]]);
        out.extend(result_set(
            &["spcoid", "spclocation", "size"],
            &[vec![None, None, Some("100")]],
        ));
        out.extend(msg(b'H', &[0, 0, 0]));
        self.send(&out)?;
        if let Some(gate) = &script.gate {
            gate.pass();
        }
        for (name, bytes) in &script.archives {
            let mut new = vec![b'n'];
            new.extend_from_slice(name.as_bytes());
            new.extend_from_slice(b"\0\0");
            self.send(&msg(b'd', &new))?;
            for piece in bytes.chunks(script.piece.max(1)) {
                let mut data = vec![b'd'];
                data.extend_from_slice(piece);
                self.send(&msg(b'd', &data))?;
            }
        }
        self.send(&msg(b'd', b"m"))?;
        let mut data = vec![b'd'];
        data.extend_from_slice(&script.manifest);
        self.send(&msg(b'd', &data))?;
        let mut out = msg(b'c', &[]);
        out.extend(result_set(
            &["recptr", "tli"],
            &[vec![Some("0/100100"), Some("1")]],
        ));
        out.extend(msg(b'C', b"BASE_BACKUP\0"));
        out.extend_from_slice(READY);
        self.send(&out)
    }

    /// CopyBoth with the WAL from 0/100000 past the backup's end (zeros: nothing reads it),
    /// then the end of the copy when the client ends it.
    fn start_replication(&mut self) -> io::Result<()> {
        self.send(&msg(b'W', &[0, 0, 0]))?;
        let mut w = vec![b'w'];
        w.extend_from_slice(&0x100000u64.to_be_bytes());
        w.extend_from_slice(&0x101000u64.to_be_bytes());
        w.extend_from_slice(&0i64.to_be_bytes());
        w.extend(vec![0u8; 0x1000]);
        self.send(&msg(b'd', &w))?;
        loop {
            let (tag, _) = self.read_msg()?;
            match tag {
                b'c' => {
                    let mut out = msg(b'c', &[]);
                    out.extend(msg(b'C', b"START_STREAMING\0"));
                    out.extend_from_slice(READY);
                    return self.send(&out);
                }
                b'X' => return Ok(()),
                _ => {}
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

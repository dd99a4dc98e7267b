//! START_REPLICATION PHYSICAL: the CopyBoth stream of XLogData and keepalives, with standby
//! status updates sent when the server asks and at least every ten seconds.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use pitr_pg::{Lsn, TimelineId};
use postgres_protocol::message::frontend;

use crate::client::{quote_ident, ReplicationClient, State};
use crate::conn::Reader;
use crate::Error;

/// How often a status update goes out even when the server does not ask (wal_receiver_
/// status_interval's default; wal_sender_timeout defaults to 60 s).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// What the WAL stream yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalEvent {
    /// WAL bytes starting at `start` (at most 128 KiB; may cross a segment boundary).
    XLogData { start: Lsn, data: Bytes },
    /// The server's WAL end; when `reply_requested`, a status update was already sent.
    Keepalive { end: Lsn, reply_requested: bool },
    /// The streamed timeline ended (the server switched to `next_tli` at `next_start`). The
    /// connection is idle again and the stream yields nothing more.
    EndOfTimeline {
        next_tli: TimelineId,
        next_start: Lsn,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// In CopyBoth.
    Streaming,
    /// The server ended the copy (we answered with CopyDone); a result set may follow.
    ServerDone,
    /// Back to ReadyForQuery.
    Done,
}

/// The WAL stream of one START_REPLICATION. Pull events with [`WalStream::next`]; end it with
/// [`WalStream::finish`] to get the client back for more commands.
#[derive(Debug)]
pub struct WalStream<'a> {
    client: &'a mut ReplicationClient,
    phase: Phase,
    /// End of the last XLogData handed out: reported as the write position.
    received: Lsn,
    written: Lsn,
    flushed: Lsn,
    applied: Lsn,
    last_status: Instant,
    status_interval: Duration,
    end_of_timeline: Option<(TimelineId, Lsn)>,
}

/// Microseconds since 2000-01-01, PostgreSQL's timestamp epoch.
fn pg_now() -> i64 {
    const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_unix.as_micros()).unwrap_or(i64::MAX) - PG_EPOCH_UNIX_SECS * 1_000_000
}

impl ReplicationClient {
    /// `START_REPLICATION [SLOT "slot"] PHYSICAL start TIMELINE tli`. `start` should be the
    /// start of a segment (as pg_basebackup and pg_receivewal do), so that whole segments can
    /// be written.
    pub async fn start_replication(
        &mut self,
        slot: Option<&str>,
        start: Lsn,
        timeline: TimelineId,
    ) -> Result<WalStream<'_>, Error> {
        let slot = slot
            .map(|s| format!("SLOT {} ", quote_ident(s)))
            .unwrap_or_default();
        let sql = format!(
            "START_REPLICATION {slot}PHYSICAL {start} TIMELINE {}",
            timeline.0
        );
        self.send_query(&sql).await?;
        let msg = self.next_message().await?;
        let phase = match msg.tag {
            b'W' => Phase::Streaming,
            // A historic timeline that ends exactly at `start`: no copy, just the result set
            // naming the next timeline.
            b'T' => Phase::ServerDone,
            b'E' => {
                let err = self.server_error(&msg.body);
                return Err(self.finish_with_error(err).await);
            }
            tag => {
                return Err(self.violation(format!(
                    "unexpected message {:?} in reply to {sql}",
                    char::from(tag)
                )))
            }
        };
        self.state = State::Busy("START_REPLICATION");
        tracing::debug!(server = %self.target(), %start, %timeline, "WAL streaming started");
        Ok(WalStream {
            client: self,
            phase,
            received: start,
            written: Lsn(0),
            flushed: Lsn(0),
            applied: Lsn(0),
            last_status: Instant::now(),
            status_interval: STATUS_INTERVAL,
            end_of_timeline: None,
        })
    }
}

impl WalStream<'_> {
    /// The next event, or `None` once the server has ended the stream without a timeline
    /// switch (e.g. shutdown) or after [`WalEvent::EndOfTimeline`]. Cancel-safe as far as
    /// reading goes: a cancelled call loses no data.
    pub async fn next(&mut self) -> Result<Option<WalEvent>, Error> {
        loop {
            if self.phase == Phase::Done {
                return Ok(None);
            }
            if self.phase == Phase::Streaming && self.last_status.elapsed() >= self.status_interval
            {
                self.send_current_status(false).await?;
            }
            let deadline = tokio::time::Instant::from_std(self.last_status + self.status_interval);
            let msg = match tokio::time::timeout_at(deadline, self.client.next_message()).await {
                Ok(msg) => msg?,
                Err(_) => continue, // time for a status update
            };
            match (&self.phase, msg.tag) {
                (Phase::Streaming, b'd') => return self.copy_data(msg.body).await.map(Some),
                (Phase::Streaming, b'c') => {
                    frontend::copy_done(&mut self.client.conn.wbuf);
                    self.client.conn.flush().await?;
                    self.phase = Phase::ServerDone;
                }
                (Phase::ServerDone, b'T' | b'C') => {}
                (Phase::ServerDone, b'D') => {
                    let row = self.client.parse_data_row(&msg.body)?;
                    let text = |i: usize| {
                        row.get(i)
                            .and_then(Option::as_ref)
                            .and_then(|v| std::str::from_utf8(v).ok())
                    };
                    let tli = text(0).and_then(|s| s.parse().ok());
                    let lsn = text(1).and_then(|s| s.parse().ok());
                    match (tli, lsn) {
                        (Some(tli), Some(lsn)) => {
                            self.end_of_timeline = Some((TimelineId(tli), lsn))
                        }
                        _ => {
                            return Err(self.client.violation(format!(
                                "end-of-timeline result {row:?} is not (timeline, LSN)"
                            )))
                        }
                    }
                }
                (Phase::ServerDone, b'Z') => {
                    self.phase = Phase::Done;
                    self.client.state = State::Idle;
                    return Ok(self.end_of_timeline.take().map(|(next_tli, next_start)| {
                        WalEvent::EndOfTimeline {
                            next_tli,
                            next_start,
                        }
                    }));
                }
                (_, b'E') => {
                    let err = self.client.server_error(&msg.body);
                    let err = self.client.finish_with_error(err).await;
                    self.phase = Phase::Done;
                    return Err(err);
                }
                (phase, tag) => {
                    let message = format!(
                        "unexpected message {:?} while streaming WAL ({phase:?})",
                        char::from(tag)
                    );
                    return Err(self.client.violation(message));
                }
            }
        }
    }

    async fn copy_data(&mut self, mut body: Bytes) -> Result<WalEvent, Error> {
        let kind = body.first().copied();
        match kind {
            Some(b'w') if body.len() >= 25 => {
                let mut r = Reader::new(&body[1..25]);
                let start = Lsn(r.i64().unwrap_or_default() as u64);
                body.advance(25);
                self.received = Lsn(start.0 + body.len() as u64);
                Ok(WalEvent::XLogData { start, data: body })
            }
            Some(b'k') if body.len() >= 18 => {
                let mut r = Reader::new(&body[1..]);
                let end = Lsn(r.i64().unwrap_or_default() as u64);
                r.i64(); // server clock
                let reply_requested = r.u8().unwrap_or(0) != 0;
                if reply_requested {
                    self.send_current_status(false).await?;
                }
                Ok(WalEvent::Keepalive {
                    end,
                    reply_requested,
                })
            }
            _ => Err(self.client.violation(format!(
                "unknown or short CopyData message {:?} ({} bytes) in the WAL stream",
                kind.map(char::from),
                body.len()
            ))),
        }
    }

    /// Send a standby status update. Positions are remembered: the periodic updates repeat
    /// them (the write position never goes below what has been received). `flush` is what
    /// lets the server recycle WAL reserved by the slot. No-op once the server ended the copy.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply: bool,
    ) -> Result<(), Error> {
        self.written = write;
        self.flushed = flush;
        self.applied = apply;
        if self.phase != Phase::Streaming {
            return Ok(());
        }
        self.send_current_status(reply).await
    }

    async fn send_current_status(&mut self, reply: bool) -> Result<(), Error> {
        let write = self.written.max(self.received);
        let mut payload = [0u8; 34];
        payload[0] = b'r';
        payload[1..9].copy_from_slice(&write.0.to_be_bytes());
        payload[9..17].copy_from_slice(&self.flushed.0.to_be_bytes());
        payload[17..25].copy_from_slice(&self.applied.0.to_be_bytes());
        payload[25..33].copy_from_slice(&pg_now().to_be_bytes());
        payload[33] = u8::from(reply);
        frontend::CopyData::new(&payload[..])
            .map_err(|e| self.client.violation(format!("status update: {e}")))?
            .write(&mut self.client.conn.wbuf);
        self.client.conn.flush().await?;
        self.last_status = Instant::now();
        Ok(())
    }

    /// Send status updates at least this often while [`WalStream::next`] is being called
    /// (default [`STATUS_INTERVAL`]); keep it well below the server's wal_sender_timeout.
    pub fn set_status_interval(&mut self, interval: Duration) {
        self.status_interval = interval;
    }

    /// End of the last XLogData received.
    pub fn received(&self) -> Lsn {
        self.received
    }

    /// Stop streaming: send CopyDone (after a last status update) and read up to
    /// ReadyForQuery, discarding WAL still in flight. The client is idle afterwards.
    pub async fn finish(mut self) -> Result<(), Error> {
        if self.phase == Phase::Streaming {
            self.send_current_status(false).await?;
            frontend::copy_done(&mut self.client.conn.wbuf);
            self.client.conn.flush().await?;
        }
        while self.phase != Phase::Done {
            let msg = self.client.next_message().await?;
            match msg.tag {
                b'd' | b'c' | b'T' | b'D' | b'C' => {}
                b'Z' => {
                    self.phase = Phase::Done;
                    self.client.state = State::Idle;
                }
                b'E' => {
                    let err = self.client.server_error(&msg.body);
                    let err = self.client.finish_with_error(err).await;
                    return Err(err);
                }
                tag => {
                    return Err(self.client.violation(format!(
                        "unexpected message {:?} while ending the WAL stream",
                        char::from(tag)
                    )))
                }
            }
        }
        Ok(())
    }

    /// Notices the server sent so far (see [`ReplicationClient::take_notices`]).
    pub fn take_notices(&mut self) -> Vec<crate::ServerMessage> {
        self.client.take_notices()
    }
}

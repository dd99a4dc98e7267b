//! The byte pipe and message framing: a TCP, Unix or TLS stream, a read buffer that hands out
//! message bodies as `Bytes` without copying them, and a write buffer for outgoing messages.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::Error;

pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One backend message: its type byte and its body (without the length word).
#[derive(Debug)]
pub(crate) struct Message {
    pub tag: u8,
    pub body: Bytes,
}

/// Reads ask for at least this much room, so small messages arrive many to a read.
const READ_CHUNK: usize = 64 * 1024;
/// No message from PostgreSQL comes near this; a larger length means a garbled stream.
const MAX_MESSAGE: usize = 1 << 30;

pub(crate) struct Connection {
    stream: Stream,
    rbuf: BytesMut,
    pub wbuf: BytesMut,
    /// "socket /tmp/.s.PGSQL.5432" or "host:port", for error messages.
    pub target: String,
}

impl Connection {
    pub fn new(stream: Stream, target: String) -> Connection {
        Connection {
            stream,
            rbuf: BytesMut::with_capacity(4 * READ_CHUNK),
            wbuf: BytesMut::with_capacity(1024),
            target,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// A Unix socket: local, so no one on the network sees what goes over it.
    pub fn is_unix(&self) -> bool {
        matches!(self.stream, Stream::Unix(_))
    }

    /// The server certificate (DER) of a TLS connection.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        match &self.stream {
            Stream::Tls(s) => s
                .get_ref()
                .1
                .peer_certificates()?
                .first()
                .map(|c| c.as_ref()),
            _ => None,
        }
    }

    pub fn io_error(&self, source: io::Error) -> Error {
        Error::Io {
            target: self.target.clone(),
            source,
        }
    }

    pub fn protocol_error(&self, message: impl Into<String>) -> Error {
        Error::Protocol {
            target: self.target.clone(),
            message: message.into(),
        }
    }

    /// Send what has been written into `wbuf`. Cancel-safe: sent bytes leave the buffer as
    /// each write completes, so a later flush continues where a cancelled one stopped.
    pub async fn flush(&mut self) -> Result<(), Error> {
        while !self.wbuf.is_empty() {
            match self.stream.write(&self.wbuf).await {
                Ok(0) => {
                    return Err(self.io_error(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "server stopped accepting data",
                    )))
                }
                Ok(n) => self.wbuf.advance(n),
                Err(e) => return Err(self.io_error(e)),
            }
        }
        self.stream.flush().await.map_err(|e| self.io_error(e))
    }

    /// The next message. Cancel-safe: bytes read before a cancellation stay in the buffer.
    pub async fn read_message(&mut self) -> Result<Message, Error> {
        loop {
            if self.rbuf.len() >= 5 {
                let len =
                    i32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]);
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&l| (4..=MAX_MESSAGE).contains(&l))
                    .ok_or_else(|| {
                        self.protocol_error(format!(
                            "message {:?} has invalid length {len}",
                            char::from(self.rbuf[0])
                        ))
                    })?;
                let total = 1 + len;
                if self.rbuf.len() >= total {
                    let mut frame = self.rbuf.split_to(total).freeze();
                    let tag = frame[0];
                    frame.advance(5);
                    return Ok(Message { tag, body: frame });
                }
                self.rbuf.reserve((total - self.rbuf.len()).max(READ_CHUNK));
            } else {
                self.rbuf.reserve(READ_CHUNK);
            }
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| self.io_error(e))?;
            if n == 0 {
                return Err(self.io_error(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection unexpectedly",
                )));
            }
        }
    }
}

/// A cursor over a message body, for the few fields this client reads.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(b)
    }

    pub fn i16(&mut self) -> Option<i16> {
        let bytes = self.take(2)?;
        Some(i16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    pub fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    /// A NUL-terminated string.
    pub fn cstr(&mut self) -> Option<String> {
        let end = self.buf.iter().position(|&b| b == 0)?;
        let s = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf = &self.buf[end + 1..];
        Some(s)
    }
}

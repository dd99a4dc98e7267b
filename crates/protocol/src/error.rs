//! Errors of the replication client: each names what failed (host or socket, user, command) in
//! one line, and server-reported errors keep their SQLSTATE so callers can tell cases apart.

use std::fmt;

/// An ErrorResponse or NoticeResponse from the server, reduced to the fields worth showing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerMessage {
    /// `ERROR`, `FATAL`, `PANIC`, `WARNING`, `NOTICE`, … (the non-localised `V` field when the
    /// server sends it).
    pub severity: String,
    /// Five-character SQLSTATE, e.g. `28P01`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

/// The most bytes of one text field (message, detail, hint, …) of an ErrorResponse or
/// NoticeResponse that the client keeps: the server is untrusted, and a message may be up to
/// 1 GiB long. The rest is cut, saying how much.
pub const MAX_SERVER_FIELD: usize = 8 * 1024;

impl ServerMessage {
    /// Parse the fields of an ErrorResponse/NoticeResponse body (`code byte, C string`…, `\0`).
    pub(crate) fn parse(body: &[u8]) -> Result<ServerMessage, String> {
        let mut msg = ServerMessage {
            severity: String::new(),
            code: String::new(),
            message: String::new(),
            detail: None,
            hint: None,
        };
        let mut localized_severity = None;
        let mut rest = body;
        loop {
            let (&kind, tail) = rest
                .split_first()
                .ok_or("error fields end without a terminator")?;
            if kind == 0 {
                break;
            }
            let end = tail
                .iter()
                .position(|&b| b == 0)
                .ok_or("error field is not NUL-terminated")?;
            let value = bounded_text(&tail[..end]);
            rest = &tail[end + 1..];
            match kind {
                b'V' => msg.severity = value,
                b'S' => localized_severity = Some(value),
                b'C' => msg.code = value,
                b'M' => msg.message = value,
                b'D' => msg.detail = Some(value),
                b'H' => msg.hint = Some(value),
                _ => {}
            }
        }
        if msg.severity.is_empty() {
            msg.severity = localized_severity.unwrap_or_default();
        }
        Ok(msg)
    }
}

/// A server text field as a string of at most [`MAX_SERVER_FIELD`] bytes (plus a note of what
/// was cut).
fn bounded_text(raw: &[u8]) -> String {
    if raw.len() <= MAX_SERVER_FIELD {
        return String::from_utf8_lossy(raw).into_owned();
    }
    let mut text = String::from_utf8_lossy(&raw[..MAX_SERVER_FIELD]).into_owned();
    text.push_str(&format!(
        " … ({} more bytes cut)",
        raw.len() - MAX_SERVER_FIELD
    ));
    text
}

/// One line: newlines inside server texts would break log lines apart.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl fmt::Display for ServerMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, one_line(&self.message))?;
        if let Some(detail) = &self.detail {
            write!(f, " (detail: {})", one_line(detail))?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {})", one_line(hint))?;
        }
        Ok(())
    }
}

/// What can go wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection string or environment is unusable.
    #[error("invalid connection settings: {0}")]
    Config(String),
    /// Could not open the TCP connection or Unix socket.
    #[error("connect to {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    /// Reading from or writing to an established connection failed, or it was closed.
    #[error("connection to {target}: {source}")]
    Io {
        target: String,
        source: std::io::Error,
    },
    /// TLS negotiation or certificate verification failed.
    #[error("TLS with {target}: {message}")]
    Tls { target: String, message: String },
    /// Authentication failed on the client side (no password available, unsupported method,
    /// server signature mismatch). A password the server rejects is a [`Error::Server`] with
    /// SQLSTATE class 28; [`Error::is_auth_failure`] covers both.
    #[error("authenticate as user \"{user}\" with {target}: {message}")]
    Auth {
        user: String,
        target: String,
        message: String,
    },
    /// The server answered with an ErrorResponse.
    #[error("server error {0}")]
    Server(Box<ServerMessage>),
    /// The server sent something this client does not expect at this point.
    #[error("protocol violation from {target}: {message}")]
    Protocol { target: String, message: String },
    /// The server is too old (or otherwise unsuitable) for what was asked.
    #[error("{0}")]
    Unsupported(String),
    /// The client was used while a previous stream on it was abandoned half way.
    #[error("connection to {target} is unusable: {reason}")]
    Unusable { target: String, reason: String },
}

impl Error {
    /// The SQLSTATE when the server reported the error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Server(m) => Some(&m.code),
            _ => None,
        }
    }

    /// The server's error fields when the server reported the error.
    pub fn server_message(&self) -> Option<&ServerMessage> {
        match self {
            Error::Server(m) => Some(m),
            _ => None,
        }
    }

    /// True for authentication failures, whether the client gave up or the server rejected
    /// the credentials (SQLSTATE class 28: invalid authorization).
    pub fn is_auth_failure(&self) -> bool {
        match self {
            Error::Auth { .. } => true,
            Error::Server(m) => m.code.starts_with("28"),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_shows_error_fields() {
        let body = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"x\"\0\0";
        let msg = ServerMessage::parse(body).unwrap();
        assert_eq!(msg.severity, "FATAL");
        let err = Error::Server(Box::new(msg));
        assert_eq!(
            err.to_string(),
            "server error 28P01: password authentication failed for user \"x\""
        );
        assert!(err.is_auth_failure());
        assert_eq!(err.code(), Some("28P01"));
    }

    #[test]
    fn detail_and_hint_stay_on_one_line() {
        let body = b"SERROR\0C42501\0Mno\0Dline one\nline two\0Hdo this\0\0";
        let msg = ServerMessage::parse(body).unwrap();
        assert_eq!(
            msg.to_string(),
            "42501: no (detail: line one line two) (hint: do this)"
        );
        assert!(ServerMessage::parse(b"SERROR\0C42501").is_err());
    }
}

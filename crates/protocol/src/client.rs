//! The replication client: connect (TCP or Unix socket, TLS per `sslmode`), authenticate, run
//! replication commands with the simple-query protocol, and hand out the COPY streams of
//! BASE_BACKUP and START_REPLICATION.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use pitr_pg::{Lsn, TimelineId};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::conn::{Connection, Message, Reader, Stream};
use crate::{tls, AuthMethod, ChannelBinding, ConnConfig, Error, ServerMessage, SslMode};

/// The answer to IDENTIFY_SYSTEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemInfo {
    pub system_identifier: u64,
    pub timeline: TimelineId,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
    /// `None` on physical replication connections.
    pub dbname: Option<String>,
}

/// One result set of a simple query, values in text form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultSet {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl ResultSet {
    /// The value of column `name` in row `row` (`None` for NULL or no such cell).
    pub fn get(&self, row: usize, name: &str) -> Option<&str> {
        let col = self.columns.iter().position(|c| c == name)?;
        self.rows.get(row)?.get(col)?.as_deref()
    }
}

/// A result set with raw values, for the internal commands.
#[derive(Debug, Default)]
pub(crate) struct RawResultSet {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<Bytes>>>,
}

impl RawResultSet {
    /// Column `col` of the first row as text.
    pub fn text(&self, col: usize) -> Option<&str> {
        let value = self.rows.first()?.get(col)?.as_ref()?;
        std::str::from_utf8(value).ok()
    }
}

#[derive(Debug)]
pub(crate) enum State {
    Idle,
    /// A COPY stream was handed out and has not reached its end.
    Busy(&'static str),
    /// An I/O error or protocol violation: the stream position is unknown.
    Broken(String),
}

/// How many notices a connection keeps for [`ReplicationClient::take_notices`]: the last ones
/// (each also logged when it arrived). A server may send any number, each up to 1 GiB; with
/// every text field cut to [`crate::error::MAX_SERVER_FIELD`] bytes, what is kept stays within
/// a few MiB however much the server sends.
pub const MAX_NOTICES_KEPT: usize = 32;

/// How many distinct ParameterStatus names a connection keeps (PostgreSQL reports about 15);
/// values are cut like notice fields.
const MAX_PARAMETERS: usize = 64;

/// A physical replication connection. Independent connections share nothing, so a backup can
/// stream WAL on a second client while the first runs BASE_BACKUP.
pub struct ReplicationClient {
    pub(crate) conn: Connection,
    pub(crate) state: State,
    parameters: HashMap<String, String>,
    notices: std::collections::VecDeque<ServerMessage>,
    /// Notices dropped (oldest first) since the last `take_notices`, past [`MAX_NOTICES_KEPT`].
    notices_dropped: u64,
    backend_pid: i32,
    user: String,
    authentication: &'static str,
    /// The server sent an authentication request (so credentials may have been sent).
    auth_requested: bool,
}

impl std::fmt::Debug for ReplicationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationClient")
            .field("target", &self.conn.target)
            .field("user", &self.user)
            .field("tls", &self.conn.is_tls())
            .field("backend_pid", &self.backend_pid)
            .field("authentication", &self.authentication)
            .field("state", &self.state)
            .finish()
    }
}

impl ReplicationClient {
    /// Connect, negotiate TLS, authenticate and wait until the server is ready for commands.
    pub async fn connect(config: &ConnConfig) -> Result<ReplicationClient, Error> {
        match config.connect_timeout {
            Some(limit) => tokio::time::timeout(limit, Self::connect_inner(config))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Connect {
                        target: config.target(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("timed out after {} s", limit.as_secs()),
                        ),
                    })
                }),
            None => Self::connect_inner(config).await,
        }
    }

    /// As libpq with sslmode=prefer (and allow): when the TLS handshake fails, or the server
    /// refuses the connection over TLS before asking for any credentials (a `hostnossl`-only
    /// pg_hba.conf entry, say), try once more without TLS. Once authentication has begun
    /// over TLS, its failure is final: retrying in plain text would hand the credentials to
    /// whoever made the TLS attempt fail.
    async fn connect_inner(config: &ConnConfig) -> Result<ReplicationClient, Error> {
        match Self::connect_once(config).await {
            Err((e, true)) if config.sslmode == SslMode::Prefer => {
                tracing::debug!("{e}; sslmode=prefer: trying again without TLS");
                let mut plain = config.clone();
                plain.sslmode = SslMode::Disable;
                Self::connect_once(&plain).await.map_err(|(e, _)| e)
            }
            other => other.map_err(|(e, _)| e),
        }
    }

    /// One connection attempt; on failure also whether trying again without TLS is allowed.
    async fn connect_once(config: &ConnConfig) -> Result<ReplicationClient, (Error, bool)> {
        let target = config.target();
        let stream = open_stream(config, &target).await.map_err(|e| {
            let tls_failed = matches!(e, Error::Tls { .. });
            (e, tls_failed)
        })?;
        let conn = Connection::new(stream, target);
        let mut client = ReplicationClient {
            conn,
            state: State::Idle,
            parameters: HashMap::new(),
            notices: std::collections::VecDeque::new(),
            notices_dropped: 0,
            backend_pid: 0,
            user: config.user.clone(),
            authentication: "trust",
            auth_requested: false,
        };
        if let Err(e) = client.startup(config).await {
            let refused_over_tls =
                client.conn.is_tls() && !client.auth_requested && matches!(e, Error::Server(_));
            return Err((e, refused_over_tls));
        }
        tracing::debug!(
            target = %client.conn.target,
            user = %config.user,
            tls = client.conn.is_tls(),
            server_version = client.parameter("server_version").unwrap_or("?"),
            "replication connection ready"
        );
        Ok(client)
    }

    async fn startup(&mut self, config: &ConnConfig) -> Result<(), Error> {
        let mut params: Vec<(&str, &str)> = vec![("user", config.user.as_str())];
        if config.replication_database {
            params.push(("replication", "database"));
            params.push(("database", config.startup_database()));
        } else {
            params.push(("replication", "true"));
        }
        if let Some(app) = &config.application_name {
            params.push(("application_name", app));
        }
        if let Some(options) = &config.options {
            params.push(("options", options));
        }
        frontend::startup_message(params, &mut self.conn.wbuf)
            .map_err(|e| Error::Config(format!("startup message: {e}")))?;
        self.conn.flush().await?;
        self.authenticate(config).await?;
        loop {
            let msg = self.next_message().await?;
            match msg.tag {
                b'K' => {
                    let mut r = Reader::new(&msg.body);
                    self.backend_pid = r
                        .i32()
                        .ok_or_else(|| self.violation("short BackendKeyData"))?;
                }
                b'Z' => return Ok(()),
                b'E' => return Err(self.server_error(&msg.body)),
                tag => {
                    return Err(self.violation(format!(
                        "unexpected message {:?} after authentication",
                        char::from(tag)
                    )))
                }
            }
        }
    }

    /// Answer the server's authentication requests until AuthenticationOk. The server is
    /// untrusted: each request is checked against `require_auth` and `channel_binding`
    /// before anything is sent, a cleartext password goes out only over an encrypted (or
    /// local) connection, and SCRAM must end with the server's verified final message —
    /// AuthenticationOk before it means the server never proved it knows the password.
    async fn authenticate(&mut self, config: &ConnConfig) -> Result<(), Error> {
        let mut x = AuthExchange::default();
        loop {
            let msg = self.next_message().await?;
            match msg.tag {
                b'R' => {}
                b'E' => return Err(self.server_error(&msg.body)),
                // NegotiateProtocolVersion: we ask for nothing optional, nothing to adjust.
                b'v' => continue,
                tag => {
                    return Err(self.violation(format!(
                        "unexpected message {:?} during authentication",
                        char::from(tag)
                    )))
                }
            }
            let mut r = Reader::new(&msg.body);
            let code = r
                .i32()
                .ok_or_else(|| self.violation("short authentication request"))?;
            if code != 0 {
                self.auth_requested = true;
            }
            match code {
                0 => return self.auth_ok(config, &x),
                3 | 5 | 10 if x.method.is_some() => return Err(self.method_switch(code, &x)),
                3 => self.answer_password(config, &mut x).await?,
                5 => self.answer_md5(config, &mut x, &mut r).await?,
                10 => self.start_sasl(config, &mut x, &mut r).await?,
                11 => self.continue_sasl(&mut x, &r).await?,
                12 => self.finish_sasl(&mut x, &r)?,
                2 | 6 | 7 | 8 | 9 => {
                    let method = match code {
                        2 => "Kerberos V5",
                        6 => "SCM credentials",
                        9 => "SSPI",
                        _ => "GSSAPI",
                    };
                    return Err(self.auth_error(format!(
                        "server asks for {method} authentication, which pitr does not support"
                    )));
                }
                other => {
                    return Err(self.violation(format!("unknown authentication request {other}")))
                }
            }
        }
    }

    /// AuthenticationOk: accepted only when the exchange proved what it had to (SCRAM's
    /// final message, `require_auth`, `channel_binding`).
    fn auth_ok(&mut self, config: &ConnConfig, x: &AuthExchange) -> Result<(), Error> {
        if x.scram.is_some() && !x.scram_verified {
            return Err(self.violation(
                "AuthenticationOk before SCRAM's final message: the server never \
                 proved it knows the password (a machine in the middle may be \
                 skipping authentication); refusing the connection",
            ));
        }
        let used = x.method.unwrap_or(AuthMethod::None);
        self.check_required(config, used)?;
        if config.channel_binding == ChannelBinding::Require && !x.channel_bound {
            return Err(self.auth_error(format!(
                "channel_binding=require, but the server let the client in {} \
                 without channel binding",
                match used {
                    AuthMethod::None => "without authentication".to_string(),
                    m => format!("with {}", m.name()),
                }
            )));
        }
        Ok(())
    }

    /// A request for a method (`code` 3, 5 or 10) once one has begun. One method per
    /// connection, as the server's pg_hba.conf line gives it: a request for another (or the
    /// same again) — e.g. a cleartext password or MD5 hash asked for in the middle of SCRAM,
    /// which a machine in the middle would do to get something it can use — is a protocol
    /// violation, answered with nothing.
    fn method_switch(&mut self, code: i32, x: &AuthExchange) -> Error {
        let asked = match code {
            3 => "a cleartext password",
            5 => "an MD5 password",
            _ => "SASL",
        };
        let begun = x.method.map(AuthMethod::name).unwrap_or_default();
        self.violation(format!(
            "the server asks for {asked} after {begun} authentication began: a \
             server may not switch authentication methods (a machine in the \
             middle may be trying to obtain the password); refusing the \
             connection"
        ))
    }

    /// AuthenticationCleartextPassword.
    async fn answer_password(
        &mut self,
        config: &ConnConfig,
        x: &mut AuthExchange,
    ) -> Result<(), Error> {
        x.method = Some(AuthMethod::Password);
        self.check_required(config, AuthMethod::Password)?;
        self.check_no_channel_binding_required(config, "a cleartext password")?;
        let allowed = config
            .require_auth
            .as_ref()
            .is_some_and(|r| r.names(AuthMethod::Password));
        if !self.conn.is_tls() && !self.conn.is_unix() && !allowed {
            return Err(self.auth_error(
                "the server asks for the password in clear text over an \
                 unencrypted connection; not sending it (use TLS, e.g. \
                 sslmode=require, or accept this with require_auth=password)",
            ));
        }
        let password = self.password(config)?;
        frontend::password_message(password.as_bytes(), &mut self.conn.wbuf)
            .map_err(|e| self.auth_error(format!("password message: {e}")))?;
        self.conn.flush().await?;
        self.authentication = "password";
        Ok(())
    }

    /// AuthenticationMD5Password.
    async fn answer_md5(
        &mut self,
        config: &ConnConfig,
        x: &mut AuthExchange,
        r: &mut Reader<'_>,
    ) -> Result<(), Error> {
        x.method = Some(AuthMethod::Md5);
        self.check_required(config, AuthMethod::Md5)?;
        self.check_no_channel_binding_required(config, "MD5 authentication")?;
        let salt: [u8; 4] = r
            .take(4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| self.violation("MD5 request without salt"))?;
        let password = self.password(config)?;
        let hash = md5_hash(config.user.as_bytes(), password.as_bytes(), salt);
        frontend::password_message(hash.as_bytes(), &mut self.conn.wbuf)
            .map_err(|e| self.auth_error(format!("password message: {e}")))?;
        self.conn.flush().await?;
        self.authentication = "md5";
        Ok(())
    }

    /// AuthenticationSASL: choose the mechanism and send SCRAM's first message.
    async fn start_sasl(
        &mut self,
        config: &ConnConfig,
        x: &mut AuthExchange,
        r: &mut Reader<'_>,
    ) -> Result<(), Error> {
        x.method = Some(AuthMethod::ScramSha256);
        self.check_required(config, AuthMethod::ScramSha256)?;
        let mut mechanisms = Vec::new();
        while let Some(m) = r.cstr().filter(|m| !m.is_empty()) {
            mechanisms.push(m);
        }
        let (mechanism, binding) = self.choose_sasl(config, &mechanisms)?;
        x.channel_bound = mechanism == sasl::SCRAM_SHA_256_PLUS;
        tracing::debug!(server = %self.conn.target, mechanism, "SASL authentication");
        let password = self.password(config)?;
        let state = sasl::ScramSha256::new(password.as_bytes(), binding);
        frontend::sasl_initial_response(mechanism, state.message(), &mut self.conn.wbuf)
            .map_err(|e| self.auth_error(format!("SASL message: {e}")))?;
        x.scram = Some(state);
        self.conn.flush().await?;
        self.authentication = mechanism;
        Ok(())
    }

    /// AuthenticationSASLContinue: SCRAM's second message.
    async fn continue_sasl(&mut self, x: &mut AuthExchange, r: &Reader<'_>) -> Result<(), Error> {
        let state = match x.scram.as_mut() {
            Some(s) if !x.scram_verified => s,
            _ => return Err(self.violation("SASL continue outside a SCRAM exchange")),
        };
        state
            .update(r.remaining())
            .map_err(|e| self.auth_error(format!("SCRAM exchange: {e}")))?;
        frontend::sasl_response(state.message(), &mut self.conn.wbuf)
            .map_err(|e| self.auth_error(format!("SASL message: {e}")))?;
        self.conn.flush().await?;
        Ok(())
    }

    /// AuthenticationSASLFinal: the server's signature, checked.
    fn finish_sasl(&mut self, x: &mut AuthExchange, r: &Reader<'_>) -> Result<(), Error> {
        let state = match x.scram.as_mut() {
            Some(s) if !x.scram_verified => s,
            _ => return Err(self.violation("SASL final outside a SCRAM exchange")),
        };
        state
            .finish(r.remaining())
            .map_err(|e| self.auth_error(format!("server's SCRAM signature rejected: {e}")))?;
        x.scram_verified = true;
        Ok(())
    }

    /// The SASL mechanism and channel binding to use, per `channel_binding`.
    fn choose_sasl(
        &self,
        config: &ConnConfig,
        mechanisms: &[String],
    ) -> Result<(&'static str, sasl::ChannelBinding), Error> {
        let offers = |name: &str| mechanisms.iter().any(|m| m == name);
        let cert_hash = self
            .conn
            .peer_certificate()
            .and_then(tls::server_end_point_hash);
        let choice = match (config.channel_binding, cert_hash) {
            (ChannelBinding::Require, None) => {
                return Err(self.auth_error(if self.conn.is_tls() {
                    "channel_binding=require, but the server certificate's signature \
                     algorithm allows no tls-server-end-point binding"
                } else {
                    "channel_binding=require, but the connection is not TLS"
                }))
            }
            (ChannelBinding::Require, Some(_)) if !offers(sasl::SCRAM_SHA_256_PLUS) => {
                return Err(self.auth_error(format!(
                    "channel_binding=require, but the server offers only {mechanisms:?}"
                )))
            }
            (ChannelBinding::Disable, _) => {
                (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported())
            }
            (_, Some(hash)) if offers(sasl::SCRAM_SHA_256_PLUS) => (
                sasl::SCRAM_SHA_256_PLUS,
                sasl::ChannelBinding::tls_server_end_point(hash),
            ),
            // We could bind, the server did not offer it: say so ("y"), which lets the
            // server detect a downgrade.
            (_, Some(_)) => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unrequested()),
            (_, None) => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
        };
        if choice.0 == sasl::SCRAM_SHA_256 && !offers(sasl::SCRAM_SHA_256) {
            return Err(self.auth_error(format!(
                "server offers SASL mechanisms {mechanisms:?}, none supported"
            )));
        }
        Ok(choice)
    }

    /// `require_auth` must allow `method` before the client answers the server.
    fn check_required(&self, config: &ConnConfig, method: AuthMethod) -> Result<(), Error> {
        match &config.require_auth {
            Some(r) if !r.allows(method) => Err(self.auth_error(match method {
                AuthMethod::None => format!(
                    "require_auth={r}, but the server let the client in without \
                     authentication"
                ),
                m => format!(
                    "require_auth={r}, but the server asks for {} authentication",
                    m.name()
                ),
            })),
            _ => Ok(()),
        }
    }

    fn check_no_channel_binding_required(
        &self,
        config: &ConnConfig,
        what: &str,
    ) -> Result<(), Error> {
        if config.channel_binding == ChannelBinding::Require {
            return Err(self.auth_error(format!(
                "channel_binding=require, but the server asks for {what}"
            )));
        }
        Ok(())
    }

    fn password(&self, config: &ConnConfig) -> Result<String, Error> {
        config
            .resolve_password(|name| std::env::var(name).ok())
            .ok_or_else(|| {
                self.auth_error(
                    "the server asks for a password and none was given (password=, \
                     PGPASSWORD or the password file)",
                )
            })
    }

    fn auth_error(&self, message: impl Into<String>) -> Error {
        Error::Auth {
            user: self.user.clone(),
            target: self.conn.target.clone(),
            message: message.into(),
        }
    }

    /// A protocol violation: the connection cannot be used any more.
    pub(crate) fn violation(&mut self, message: impl Into<String>) -> Error {
        let err = self.conn.protocol_error(message);
        self.state = State::Broken(err.to_string());
        err
    }

    pub(crate) fn server_error(&self, body: &[u8]) -> Error {
        match ServerMessage::parse(body) {
            Ok(m) => Error::Server(Box::new(m)),
            Err(why) => self
                .conn
                .protocol_error(format!("malformed ErrorResponse: {why}")),
        }
    }

    /// The next message that is not a notice, parameter status or notification; those are
    /// handled here whenever they arrive.
    pub(crate) async fn next_message(&mut self) -> Result<Message, Error> {
        loop {
            let msg = match self.conn.read_message().await {
                Ok(m) => m,
                Err(e) => {
                    self.state = State::Broken(e.to_string());
                    return Err(e);
                }
            };
            match msg.tag {
                b'N' => match ServerMessage::parse(&msg.body) {
                    Ok(notice) => {
                        tracing::warn!(
                            target: "pitr_protocol::server",
                            server = %self.conn.target,
                            severity = %notice.severity,
                            "{notice}"
                        );
                        self.keep_notice(notice);
                    }
                    Err(why) => tracing::warn!(
                        server = %self.conn.target,
                        "malformed NoticeResponse ignored: {why}"
                    ),
                },
                b'S' => {
                    let mut r = Reader::new(&msg.body);
                    if let (Some(name), Some(value)) = (r.cstr(), r.cstr()) {
                        self.keep_parameter(name, value);
                    }
                }
                b'A' => {} // NotificationResponse: nothing listens on a replication connection
                _ => return Ok(msg),
            }
        }
    }

    /// Keep a notice for `take_notices`, dropping the oldest past [`MAX_NOTICES_KEPT`].
    fn keep_notice(&mut self, notice: ServerMessage) {
        if self.notices.len() == MAX_NOTICES_KEPT {
            self.notices.pop_front();
            if self.notices_dropped == 0 {
                tracing::warn!(
                    server = %self.conn.target,
                    "the server sent more than {MAX_NOTICES_KEPT} notices; keeping only the \
                     last {MAX_NOTICES_KEPT} for the report (all are logged)"
                );
            }
            self.notices_dropped += 1;
        }
        self.notices.push_back(notice);
    }

    /// Keep a ParameterStatus: a known name is updated, a new one kept only while there are
    /// fewer than [`MAX_PARAMETERS`]; names and values are cut like notice fields.
    fn keep_parameter(&mut self, mut name: String, mut value: String) {
        let limit = crate::error::MAX_SERVER_FIELD;
        for text in [&mut name, &mut value] {
            if text.len() > limit {
                let mut cut = limit;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
        }
        if self.parameters.len() >= MAX_PARAMETERS && !self.parameters.contains_key(&name) {
            tracing::debug!(
                server = %self.conn.target,
                "parameter status {name:?} ignored: already {MAX_PARAMETERS} parameters"
            );
            return;
        }
        self.parameters.insert(name, value);
    }

    pub(crate) fn check_idle(&self) -> Result<(), Error> {
        match &self.state {
            State::Idle => Ok(()),
            State::Busy(what) => Err(Error::Unusable {
                target: self.conn.target.clone(),
                reason: format!("a {what} stream on it was abandoned before its end"),
            }),
            State::Broken(why) => Err(Error::Unusable {
                target: self.conn.target.clone(),
                reason: why.clone(),
            }),
        }
    }

    /// Send `sql` with the simple-query protocol.
    pub(crate) async fn send_query(&mut self, sql: &str) -> Result<(), Error> {
        self.check_idle()?;
        frontend::query(sql, &mut self.conn.wbuf)
            .map_err(|e| Error::Config(format!("query {sql:?}: {e}")))?;
        let result = self.conn.flush().await;
        if let Err(e) = &result {
            self.state = State::Broken(e.to_string());
        }
        result
    }

    /// After an ErrorResponse: read up to ReadyForQuery so the connection is idle again, and
    /// return the server's error. If the server closed the connection (FATAL), the error is
    /// still the server's.
    pub(crate) async fn finish_with_error(&mut self, error: Error) -> Error {
        loop {
            match self.next_message().await {
                Ok(msg) if msg.tag == b'Z' => {
                    self.state = State::Idle;
                    return error;
                }
                Ok(_) => {}
                Err(_) => return error,
            }
        }
    }

    pub(crate) async fn query_raw(&mut self, sql: &str) -> Result<Vec<RawResultSet>, Error> {
        self.send_query(sql).await?;
        let mut sets: Vec<RawResultSet> = Vec::new();
        loop {
            let msg = self.next_message().await?;
            match msg.tag {
                b'T' => sets.push(RawResultSet {
                    columns: self.parse_row_description(&msg.body)?,
                    rows: Vec::new(),
                }),
                b'D' => {
                    let row = self.parse_data_row(&msg.body)?;
                    match sets.last_mut() {
                        Some(set) => set.rows.push(row),
                        None => return Err(self.violation("DataRow without RowDescription")),
                    }
                }
                b'C' | b'I' => {}
                b'Z' => return Ok(sets),
                b'E' => {
                    let err = self.server_error(&msg.body);
                    return Err(self.finish_with_error(err).await);
                }
                b'G' | b'H' | b'W' => {
                    return Err(self.violation(format!(
                        "{sql:?} started a COPY, which simple_query cannot take part in"
                    )))
                }
                tag => {
                    return Err(self.violation(format!(
                        "unexpected message {:?} in reply to {sql:?}",
                        char::from(tag)
                    )))
                }
            }
        }
    }

    pub(crate) fn parse_row_description(&mut self, body: &[u8]) -> Result<Vec<String>, Error> {
        let mut r = Reader::new(body);
        let parsed = (|| {
            let n = r.i16()?;
            let mut cols = Vec::with_capacity(usize::try_from(n).ok()?);
            for _ in 0..n {
                cols.push(r.cstr()?);
                r.take(18)?; // table oid, column, type oid, type size, type modifier, format
            }
            Some(cols)
        })();
        parsed.ok_or_else(|| self.violation("malformed RowDescription"))
    }

    pub(crate) fn parse_data_row(&mut self, body: &Bytes) -> Result<Vec<Option<Bytes>>, Error> {
        let parsed = (|| {
            let mut r = Reader::new(body);
            let n = r.i16()?;
            let mut offset = 2;
            let mut row = Vec::with_capacity(usize::try_from(n).ok()?);
            for _ in 0..n {
                let len = r.i32()?;
                offset += 4;
                if len < 0 {
                    row.push(None);
                } else {
                    let len = usize::try_from(len).ok()?;
                    r.take(len)?;
                    row.push(Some(body.slice(offset..offset + len)));
                    offset += len;
                }
            }
            Some(row)
        })();
        parsed.ok_or_else(|| self.violation("malformed DataRow"))
    }

    /// Run `sql` (one or more commands) and return the result sets of those that have one.
    /// Commands that start a COPY are not allowed here: use the dedicated methods.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<ResultSet>, Error> {
        let sets = self.query_raw(sql).await?;
        Ok(sets
            .into_iter()
            .map(|set| ResultSet {
                columns: set.columns,
                rows: set
                    .rows
                    .into_iter()
                    .map(|row| {
                        row.into_iter()
                            .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                            .collect()
                    })
                    .collect(),
            })
            .collect())
    }

    /// The single result set of `sql`, with at least one row of at least `cols` columns.
    async fn query_one_row(&mut self, sql: &str, cols: usize) -> Result<RawResultSet, Error> {
        let mut sets = self.query_raw(sql).await?;
        match sets.pop() {
            Some(set) if sets.is_empty() && set.rows.first().is_some_and(|r| r.len() >= cols) => {
                Ok(set)
            }
            _ => Err(self.violation(format!("{sql:?} did not return one row of {cols} columns"))),
        }
    }

    /// IDENTIFY_SYSTEM.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, Error> {
        let set = self.query_one_row("IDENTIFY_SYSTEM", 4).await?;
        let system_identifier = set.text(0).and_then(|s| s.parse().ok());
        let timeline = set.text(1).and_then(|s| s.parse().ok());
        let xlogpos = set.text(2).and_then(|s| s.parse().ok());
        match (system_identifier, timeline, xlogpos) {
            (Some(system_identifier), Some(tli), Some(xlogpos)) => Ok(SystemInfo {
                system_identifier,
                timeline: TimelineId(tli),
                xlogpos,
                dbname: set.text(3).map(str::to_string),
            }),
            _ => Err(self.violation(format!(
                "IDENTIFY_SYSTEM returned unparsable values {:?}",
                set.rows.first()
            ))),
        }
    }

    /// `SHOW name` (replication connections accept SHOW for any setting).
    pub async fn show(&mut self, name: &str) -> Result<String, Error> {
        let sql = format!("SHOW {}", quote_ident(name));
        let set = self.query_one_row(&sql, 1).await?;
        match set.text(0) {
            Some(v) => Ok(v.to_string()),
            None => Err(self.violation(format!("{sql} returned NULL"))),
        }
    }

    /// The cluster's WAL segment size in bytes (SHOW wal_segment_size).
    pub async fn wal_segment_size(&mut self) -> Result<u32, Error> {
        let shown = self.show("wal_segment_size").await?;
        parse_size(&shown)
            .filter(|s| s.is_power_of_two())
            .ok_or_else(|| self.violation(format!("wal_segment_size {shown:?} is not a size")))
    }

    /// `CREATE_REPLICATION_SLOT "name" TEMPORARY PHYSICAL RESERVE_WAL`; returns the position
    /// from which the slot keeps WAL. The slot disappears when this connection closes.
    pub async fn create_temporary_physical_slot(&mut self, name: &str) -> Result<Lsn, Error> {
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} TEMPORARY PHYSICAL RESERVE_WAL",
            quote_ident(name)
        );
        let set = self.query_one_row(&sql, 2).await?;
        let consistent_point = match set.text(1) {
            Some(text) => text
                .parse()
                .map_err(|_| self.violation(format!("{sql}: bad consistent_point {text:?}")))?,
            None => Lsn(0),
        };
        if consistent_point != Lsn(0) || self.server_version_num().unwrap_or(0) < 150000 {
            return Ok(consistent_point);
        }
        // Physical slots report 0/0 as their consistent point; READ_REPLICATION_SLOT (15+)
        // tells what RESERVE_WAL reserved.
        let sql = format!("READ_REPLICATION_SLOT {}", quote_ident(name));
        let set = self.query_one_row(&sql, 2).await?;
        match set.text(1) {
            Some(text) => text
                .parse()
                .map_err(|_| self.violation(format!("{sql}: bad restart_lsn {text:?}"))),
            None => Err(self.violation(format!("{sql}: the slot reserved no WAL"))),
        }
    }

    /// TIMELINE_HISTORY: the history file of timeline `tli` as (file name, content).
    pub async fn timeline_history(&mut self, tli: TimelineId) -> Result<(String, Bytes), Error> {
        let sql = format!("TIMELINE_HISTORY {}", tli.0);
        let set = self.query_one_row(&sql, 2).await?;
        let row = &set.rows[0];
        match (set.text(0), &row[1]) {
            (Some(name), Some(content)) => Ok((name.to_string(), content.clone())),
            _ => Err(self.violation(format!("{sql} returned NULL"))),
        }
    }

    /// A server setting reported at startup or since (`server_version`, `integer_datetimes`,
    /// …).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// `server_version` as a number: "15.18 (Debian …)" → 150018, "16.4" → 160004.
    pub fn server_version_num(&self) -> Option<u32> {
        parse_server_version(self.parameter("server_version")?)
    }

    /// Notices (warnings) the server sent since the last call. Each was also logged with
    /// `tracing::warn!` when it arrived. At most the last [`MAX_NOTICES_KEPT`], each field cut
    /// to [`crate::error::MAX_SERVER_FIELD`] bytes; when older ones were dropped, a first
    /// entry (severity `WARNING`, no code) says how many.
    pub fn take_notices(&mut self) -> Vec<ServerMessage> {
        let mut out = Vec::with_capacity(self.notices.len() + 1);
        let dropped = std::mem::take(&mut self.notices_dropped);
        if dropped > 0 {
            out.push(ServerMessage {
                severity: "WARNING".into(),
                code: String::new(),
                message: format!(
                    "{dropped} earlier notices from {} not kept (only the last \
                     {MAX_NOTICES_KEPT} are; all were logged)",
                    self.conn.target
                ),
                detail: None,
                hint: None,
            });
        }
        out.extend(std::mem::take(&mut self.notices));
        out
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.conn.is_tls()
    }

    /// How the server authenticated us: "trust" (no request), "password", "md5",
    /// "SCRAM-SHA-256" or "SCRAM-SHA-256-PLUS" (with TLS channel binding).
    pub fn authentication(&self) -> &'static str {
        self.authentication
    }

    /// The server process ID (from BackendKeyData).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// "socket /tmp/.s.PGSQL.5432" or "host:port".
    pub fn target(&self) -> &str {
        &self.conn.target
    }

    /// Say goodbye (Terminate) and close the connection.
    pub async fn close(mut self) -> Result<(), Error> {
        frontend::terminate(&mut self.conn.wbuf);
        self.conn.flush().await
    }
}

/// Open the socket and negotiate TLS as `sslmode` asks.
async fn open_stream(config: &ConnConfig, target: &str) -> Result<Stream, Error> {
    let connect_error = |source| Error::Connect {
        target: target.to_string(),
        source,
    };
    if let Some(path) = config.socket_path() {
        // As libpq: TLS settings do not apply to Unix sockets.
        let s = UnixStream::connect(&path).await.map_err(connect_error)?;
        return Ok(Stream::Unix(s));
    }
    let mut tcp = connect_tcp(&config.host, config.port)
        .await
        .map_err(connect_error)?;
    if config.sslmode == SslMode::Disable {
        return Ok(Stream::Tcp(tcp));
    }
    let tls_error = |message: String| Error::Tls {
        target: target.to_string(),
        message,
    };
    let io_error = |source| Error::Io {
        target: target.to_string(),
        source,
    };
    // Build the configuration first: a missing root certificate should not cost a round trip.
    let tls_config =
        tls::client_config(config.sslmode, config.sslrootcert.as_deref()).map_err(tls_error)?;
    let name = tls::server_name(&config.host).map_err(tls_error)?;
    let mut request = bytes::BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await.map_err(io_error)?;
    // Exactly one byte, unbuffered: anything after it belongs to the TLS handshake.
    let answer = tcp.read_u8().await.map_err(io_error)?;
    match answer {
        b'S' => {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config));
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| tls_error(format!("handshake: {e}")))?;
            Ok(Stream::Tls(Box::new(tls)))
        }
        b'N' if config.sslmode.requires_tls() => Err(tls_error(format!(
            "server does not support TLS, but sslmode={} requires it",
            config.sslmode
        ))),
        b'N' => Ok(Stream::Tcp(tcp)),
        other => Err(Error::Protocol {
            target: target.to_string(),
            message: format!("unexpected answer {other:#04x} to SSLRequest"),
        }),
    }
}

async fn connect_tcp(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("host name {host:?} has no addresses"),
        )
    }))
}

/// Where an authentication exchange is.
#[derive(Default)]
struct AuthExchange {
    /// The method the server asked for first; no other may follow it.
    method: Option<AuthMethod>,
    /// The SCRAM exchange, once started.
    scram: Option<sasl::ScramSha256>,
    /// SCRAM's final message arrived and the server's signature checked out.
    scram_verified: bool,
    /// SCRAM-SHA-256-PLUS was chosen.
    channel_bound: bool,
}

/// Double-quote an identifier for a replication command.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// "15.18 (Debian 15.18-1.pgdg120+1)" → 150018, "16.4" → 160004, "17beta1" → 170000,
/// "9.6.24" → 90624.
pub(crate) fn parse_server_version(s: &str) -> Option<u32> {
    let numeric: String = s
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = numeric.split('.').filter(|p| !p.is_empty());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    if major >= 10 {
        Some(major * 10000 + minor)
    } else {
        let patch: u32 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        Some(major * 10000 + minor * 100 + patch)
    }
}

/// A size as SHOW prints it: "16MB", "1GB", "8192" (bytes), "64kB".
fn parse_size(s: &str) -> Option<u32> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..digits].parse().ok()?;
    let unit = match s[digits..].trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return None,
    };
    u32::try_from(n.checked_mul(unit)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions() {
        assert_eq!(
            parse_server_version("15.18 (Debian 15.18-1.pgdg120+1)"),
            Some(150018)
        );
        assert_eq!(parse_server_version("16.4"), Some(160004));
        assert_eq!(parse_server_version("17beta1"), Some(170000));
        assert_eq!(parse_server_version("18rc1 (x)"), Some(180000));
        assert_eq!(parse_server_version("9.6.24"), Some(90624));
        assert_eq!(parse_server_version("x"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("64kB"), Some(64 << 10));
        assert_eq!(parse_size("8192"), Some(8192));
        assert_eq!(parse_size("4TB"), None);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("pitr_1"), "\"pitr_1\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}

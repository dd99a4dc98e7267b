//! Connection settings the way libpq takes them: a `key=value` string or a `postgres://` URL,
//! laid over the PG* environment variables, with passwords from `~/.pgpass` as a last resort.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Error;

/// `sslmode`, as in libpq. The default is `prefer`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// libpq's `allow` behaves like `prefer` here: try TLS first.
    #[default]
    Prefer,
    /// TLS without checking the certificate.
    Require,
    /// TLS with the certificate chain checked against `sslrootcert`.
    VerifyCa,
    /// `VerifyCa` plus the host name checked against the certificate.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, Error> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(Error::Config(format!(
                    "invalid sslmode {s:?}: expected disable, allow, prefer, require, verify-ca \
                     or verify-full"
                )))
            }
        })
    }

    /// TLS is mandatory (the connection fails rather than fall back to plain text).
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// `channel_binding`, as in libpq: whether SCRAM binds the authentication to the TLS channel
/// (SCRAM-SHA-256-PLUS with `tls-server-end-point`), which defeats a machine in the middle
/// that terminates TLS itself. The default is `prefer`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChannelBinding {
    /// Never bind, even when the server offers it.
    Disable,
    /// Bind when the connection is TLS and the server offers SCRAM-SHA-256-PLUS.
    #[default]
    Prefer,
    /// Refuse to authenticate any other way: no TLS, no SCRAM, no SCRAM-SHA-256-PLUS, or a
    /// server that lets the client in without it, all fail the connection.
    Require,
}

impl ChannelBinding {
    fn parse(s: &str) -> Result<ChannelBinding, Error> {
        Ok(match s {
            "disable" => ChannelBinding::Disable,
            "prefer" => ChannelBinding::Prefer,
            "require" => ChannelBinding::Require,
            _ => {
                return Err(Error::Config(format!(
                    "invalid channel_binding {s:?}: expected disable, prefer or require"
                )))
            }
        })
    }
}

impl fmt::Display for ChannelBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelBinding::Disable => "disable",
            ChannelBinding::Prefer => "prefer",
            ChannelBinding::Require => "require",
        })
    }
}

/// An authentication method as `require_auth` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// AuthenticationCleartextPassword.
    Password,
    Md5,
    /// GSSAPI and SSPI: named for libpq compatibility; pitr supports neither.
    Gss,
    Sspi,
    /// SCRAM-SHA-256, with or without channel binding.
    ScramSha256,
    /// The server asks for nothing (trust, peer, …).
    None,
}

impl AuthMethod {
    fn parse(s: &str) -> Option<AuthMethod> {
        Some(match s {
            "password" => AuthMethod::Password,
            "md5" => AuthMethod::Md5,
            "gss" => AuthMethod::Gss,
            "sspi" => AuthMethod::Sspi,
            "scram-sha-256" => AuthMethod::ScramSha256,
            "none" => AuthMethod::None,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::Password => "password",
            AuthMethod::Md5 => "md5",
            AuthMethod::Gss => "gss",
            AuthMethod::Sspi => "sspi",
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::None => "none",
        }
    }
}

/// `require_auth`, as in libpq (PostgreSQL 16): the methods the server may use, or with `!`
/// the methods it may not. A server asking for anything else fails the connection before
/// the client answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequireAuth {
    methods: Vec<AuthMethod>,
    negated: bool,
}

impl RequireAuth {
    fn parse(s: &str) -> Result<RequireAuth, Error> {
        let bad = |why: String| Error::Config(format!("invalid require_auth {s:?}: {why}"));
        let mut methods = Vec::new();
        let mut negated = None;
        for item in s.split(',') {
            let (neg, name) = match item.strip_prefix('!') {
                Some(name) => (true, name),
                None => (false, item),
            };
            if *negated.get_or_insert(neg) != neg {
                return Err(bad("negative and positive methods cannot be mixed".into()));
            }
            let method = AuthMethod::parse(name).ok_or_else(|| {
                bad(format!(
                    "unknown method {name:?} (expected password, md5, gss, sspi,                      scram-sha-256 or none)"
                ))
            })?;
            if methods.contains(&method) {
                return Err(bad(format!("{name:?} is listed more than once")));
            }
            methods.push(method);
        }
        Ok(RequireAuth {
            methods,
            negated: negated.unwrap_or(false),
        })
    }

    /// Whether the server may authenticate the client with `method`.
    pub fn allows(&self, method: AuthMethod) -> bool {
        self.methods.contains(&method) != self.negated
    }

    /// `method` is named without `!`: the user asked for exactly it.
    pub fn names(&self, method: AuthMethod) -> bool {
        !self.negated && self.methods.contains(&method)
    }
}

impl fmt::Display for RequireAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.methods.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let neg = if self.negated { "!" } else { "" };
            write!(f, "{sep}{neg}{}", m.name())?;
        }
        Ok(())
    }
}

/// Where and how to connect. Build it with [`ConnConfig::parse`]; the fields are public so a
/// caller can adjust them afterwards.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnConfig {
    /// Host name or IP address, or a Unix-socket directory when it starts with `/`.
    pub host: String,
    pub port: u16,
    pub user: String,
    /// From the string, or PGPASSWORD. When `None`, the password file is read if the server
    /// asks for a password.
    pub password: Option<String>,
    /// `passfile=` or PGPASSFILE; `~/.pgpass` when `None`.
    pub passfile: Option<PathBuf>,
    /// Accepted for compatibility (`dbname=`, PGDATABASE) but not sent on physical
    /// replication connections, which are not bound to a database.
    pub dbname: Option<String>,
    pub sslmode: SslMode,
    /// CA certificates for `verify-ca`/`verify-full`; `~/.postgresql/root.crt` when `None`.
    pub sslrootcert: Option<PathBuf>,
    pub application_name: Option<String>,
    /// Command-line options for the server process (`options=`, PGOPTIONS).
    pub options: Option<String>,
    pub connect_timeout: Option<Duration>,
    /// `channel_binding=` or PGCHANNELBINDING.
    pub channel_binding: ChannelBinding,
    /// `require_auth=` or PGREQUIREAUTH; `None` lets the server choose any supported method.
    pub require_auth: Option<RequireAuth>,
    /// Open a `replication=database` connection bound to `dbname` (default: the user's
    /// name) instead of a physical one: it also runs SQL (`pitr check` calls
    /// `pg_switch_wal()`). pg_hba.conf and the password file match it by that database, not
    /// by `replication`. Never set by parsing; a caller sets it.
    pub replication_database: bool,
}

impl fmt::Debug for ConnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("passfile", &self.passfile)
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("application_name", &self.application_name)
            .field("options", &self.options)
            .field("connect_timeout", &self.connect_timeout)
            .field("channel_binding", &self.channel_binding)
            .field("require_auth", &self.require_auth)
            .field("replication_database", &self.replication_database)
            .finish()
    }
}

/// Socket directories libpq builds in (upstream and Debian); the first that exists is the
/// default host, and a socket in one of them matches `localhost` in the password file.
const DEFAULT_SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];

impl ConnConfig {
    /// Parse `s` (empty, `key=value …`, or a `postgres://`/`postgresql://` URL) over the
    /// process environment.
    pub fn parse(s: &str) -> Result<ConnConfig, Error> {
        Self::parse_with_env(s, |name| std::env::var(name).ok())
    }

    /// Like [`ConnConfig::parse`] with the environment supplied by `env` (for tests).
    pub fn parse_with_env(
        s: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ConnConfig, Error> {
        let pairs = if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            parse_url(s)?
        } else {
            parse_key_values(s)?
        };
        let mut settings = Settings::default();
        // Environment first, so explicit settings overwrite it.
        for (var, key) in [
            ("PGHOST", "host"),
            ("PGPORT", "port"),
            ("PGUSER", "user"),
            ("PGPASSWORD", "password"),
            ("PGPASSFILE", "passfile"),
            ("PGDATABASE", "dbname"),
            ("PGSSLMODE", "sslmode"),
            ("PGSSLROOTCERT", "sslrootcert"),
            ("PGAPPNAME", "application_name"),
            ("PGOPTIONS", "options"),
            ("PGCONNECT_TIMEOUT", "connect_timeout"),
            ("PGCHANNELBINDING", "channel_binding"),
            ("PGREQUIREAUTH", "require_auth"),
        ] {
            if let Some(value) = env(var).filter(|v| !v.is_empty()) {
                settings.set(key, value)?;
            }
        }
        for (key, value) in pairs {
            settings.set(&key, value)?;
        }
        settings.finish(&env)
    }

    /// The database the startup packet names: `replication` for a physical connection (as
    /// pg_hba.conf and the password file see it), else `dbname` or the user's name.
    pub(crate) fn startup_database(&self) -> &str {
        if self.replication_database {
            self.dbname.as_deref().unwrap_or(&self.user)
        } else {
            "replication"
        }
    }

    /// The Unix socket path when `host` is a directory.
    pub fn socket_path(&self) -> Option<PathBuf> {
        self.host
            .starts_with('/')
            .then(|| Path::new(&self.host).join(format!(".s.PGSQL.{}", self.port)))
    }

    /// What error messages call this server: the socket path or `host:port`.
    pub fn target(&self) -> String {
        match self.socket_path() {
            Some(path) => format!("socket {}", path.display()),
            None if self.host.contains(':') => format!("[{}]:{}", self.host, self.port),
            None => format!("{}:{}", self.host, self.port),
        }
    }

    /// The password to answer a password request with: the configured one, else the first
    /// matching line of the password file (whose database field must match `replication`).
    pub(crate) fn resolve_password(&self, env: impl Fn(&str) -> Option<String>) -> Option<String> {
        if let Some(p) = &self.password {
            return Some(p.clone());
        }
        let path = match &self.passfile {
            Some(p) => p.clone(),
            None => home_dir(&env)?.join(".pgpass"),
        };
        let meta = std::fs::metadata(&path).ok()?;
        if !meta.is_file() {
            return None;
        }
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    file = %path.display(),
                    "password file has group or world access; permissions should be u=rw \
                     (0600) or less: ignoring it"
                );
                return None;
            }
        }
        let contents = match std::fs::read_to_string(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "read password file");
                return None;
            }
        };
        let host_alias = if self.host.starts_with('/')
            && DEFAULT_SOCKET_DIRS.contains(&self.host.trim_end_matches('/'))
        {
            Some("localhost")
        } else {
            None
        };
        pgpass_lookup(
            &contents,
            &self.host,
            host_alias,
            self.port,
            self.startup_database(),
            &self.user,
        )
    }
}

#[derive(Default)]
struct Settings {
    host: Option<String>,
    port: Option<String>,
    user: Option<String>,
    password: Option<String>,
    passfile: Option<String>,
    dbname: Option<String>,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    application_name: Option<String>,
    fallback_application_name: Option<String>,
    options: Option<String>,
    connect_timeout: Option<String>,
    channel_binding: Option<String>,
    require_auth: Option<String>,
}

impl Settings {
    fn set(&mut self, key: &str, value: String) -> Result<(), Error> {
        let slot = match key {
            "host" => &mut self.host,
            "port" => &mut self.port,
            "user" => &mut self.user,
            "password" => &mut self.password,
            "passfile" => &mut self.passfile,
            "dbname" => &mut self.dbname,
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "application_name" => &mut self.application_name,
            "fallback_application_name" => &mut self.fallback_application_name,
            "options" => &mut self.options,
            "connect_timeout" => &mut self.connect_timeout,
            "channel_binding" => &mut self.channel_binding,
            "require_auth" => &mut self.require_auth,
            // This client always opens physical replication connections.
            "replication" | "client_encoding" => return Ok(()),
            // URL spelling of sslmode=require, as libpq accepts it.
            "ssl" if value == "true" => {
                self.sslmode = Some("require".into());
                return Ok(());
            }
            _ => {
                return Err(Error::Config(format!(
                    "unsupported connection option {key:?}"
                )))
            }
        };
        *slot = Some(value);
        Ok(())
    }

    fn finish(self, env: &impl Fn(&str) -> Option<String>) -> Result<ConnConfig, Error> {
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
        let host = match nonempty(self.host) {
            Some(h) if h.contains(',') => {
                return Err(Error::Config(format!(
                    "host {h:?}: multiple hosts are not supported"
                )))
            }
            Some(h) => h,
            None => DEFAULT_SOCKET_DIRS
                .iter()
                .find(|d| Path::new(d).is_dir())
                .unwrap_or(&DEFAULT_SOCKET_DIRS[1])
                .to_string(),
        };
        let port = match nonempty(self.port) {
            None => 5432,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| Error::Config(format!("invalid port {p:?}")))?,
        };
        let user = match nonempty(self.user) {
            Some(u) => u,
            None => os_user(env).ok_or_else(|| {
                Error::Config("no user given and the current OS user is unknown".into())
            })?,
        };
        let sslmode = match nonempty(self.sslmode) {
            Some(m) => SslMode::parse(&m)?,
            None => SslMode::default(),
        };
        let connect_timeout = match nonempty(self.connect_timeout) {
            None => None,
            Some(t) => {
                let secs: i64 = t
                    .trim()
                    .parse()
                    .map_err(|_| Error::Config(format!("invalid connect_timeout {t:?}")))?;
                // libpq: zero or negative means wait forever; 1 is raised to 2.
                (secs > 0).then(|| Duration::from_secs(secs.max(2) as u64))
            }
        };
        let channel_binding = match nonempty(self.channel_binding) {
            Some(c) => ChannelBinding::parse(&c)?,
            None => ChannelBinding::default(),
        };
        let require_auth = nonempty(self.require_auth)
            .map(|r| RequireAuth::parse(&r))
            .transpose()?;
        if channel_binding == ChannelBinding::Require {
            // As libpq: settings that can never succeed are refused before connecting.
            if sslmode == SslMode::Disable {
                return Err(Error::Config(
                    "channel_binding=require needs TLS, which sslmode=disable turns off".into(),
                ));
            }
            if let Some(r) = require_auth
                .as_ref()
                .filter(|r| !r.allows(AuthMethod::ScramSha256))
            {
                return Err(Error::Config(format!(
                    "channel_binding=require needs scram-sha-256, which require_auth={r} \
                     does not allow"
                )));
            }
        }
        Ok(ConnConfig {
            host,
            port,
            user,
            password: self.password,
            passfile: nonempty(self.passfile).map(PathBuf::from),
            dbname: nonempty(self.dbname),
            sslmode,
            sslrootcert: nonempty(self.sslrootcert).map(PathBuf::from),
            application_name: nonempty(self.application_name)
                .or(nonempty(self.fallback_application_name)),
            options: nonempty(self.options),
            connect_timeout,
            channel_binding,
            require_auth,
            replication_database: false,
        })
    }
}

/// libpq's `key = value` syntax: values may be single-quoted; a backslash escapes the next
/// character inside or outside quotes.
fn parse_key_values(s: &str) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(Error::Config(format!(
                "missing \"=\" after {key:?} in connection string"
            )));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => {
                        return Err(Error::Config(format!(
                            "unterminated quoted string for {key:?} in connection string"
                        )))
                    }
                    Some('\\') => {
                        if let Some(c) = chars.next() {
                            value.push(c);
                        }
                    }
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

/// `postgres[ql]://[user[:password]@][host][:port][/dbname][?key=value&…]`, percent-decoded.
fn parse_url(s: &str) -> Result<Vec<(String, String)>, Error> {
    let bad = |why: &str| Error::Config(format!("invalid connection URL: {why}"));
    let rest = s
        .strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
        .ok_or_else(|| bad("expected postgres:// or postgresql://"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let mut out = Vec::new();
    let hostport = match authority.rfind('@') {
        Some(i) => {
            let userinfo = &authority[..i];
            match userinfo.split_once(':') {
                Some((user, password)) => {
                    out.push(("user".into(), percent_decode(user, "user name")?));
                    out.push(("password".into(), percent_decode(password, "password")?));
                }
                None => out.push(("user".into(), percent_decode(userinfo, "user name")?)),
            }
            &authority[i + 1..]
        }
        None => authority,
    };
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (h, after) = bracketed
            .split_once(']')
            .ok_or_else(|| bad("unterminated [ in host"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad("unexpected text after ]"))?,
            ),
        };
        (h, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if !host.is_empty() {
        out.push(("host".into(), percent_decode(host, "host")?));
    }
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        out.push(("port".into(), percent_decode(p, "port")?));
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        out.push(("dbname".into(), percent_decode(db, "database name")?));
    }
    for param in query.into_iter().flat_map(|q| q.split('&')) {
        if param.is_empty() {
            continue;
        }
        let (k, v) = param
            .split_once('=')
            .ok_or_else(|| bad("a query parameter has no \"=\""))?;
        let key = percent_decode(k, "query parameter name")?;
        let value = percent_decode(v, &format!("value of {key:?}"))?;
        out.push((key, value));
    }
    Ok(out)
}

/// Errors name `what` was being decoded, never its text: it may be the password.
fn percent_decode(s: &str, what: &str) -> Result<String, Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    Error::Config(format!(
                        "invalid connection URL: bad percent-encoding in the {what}"
                    ))
                })?;
            if hex == 0 {
                return Err(Error::Config(format!(
                    "invalid connection URL: forbidden %00 in the {what}"
                )));
            }
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| Error::Config(format!("invalid connection URL: the {what} is not UTF-8")))
}

/// The first password-file line matching the connection. Fields are
/// `host:port:database:user:password`; `*` alone matches anything; `\` escapes `:` and `\`.
/// `host_alias` is a second host name that also matches (`localhost` for the default socket).
pub(crate) fn pgpass_lookup(
    contents: &str,
    host: &str,
    host_alias: Option<&str>,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    let port = port.to_string();
    for line in contents.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = split_pgpass_line(line);
        if fields.len() < 5 {
            continue;
        }
        let matches = |field: &str, value: &str| field == "*" || field == value;
        let host_ok = matches(&fields[0], host) || host_alias.is_some_and(|a| fields[0] == a);
        if host_ok
            && matches(&fields[1], &port)
            && matches(&fields[2], dbname)
            && matches(&fields[3], user)
        {
            return Some(fields[4..].join(":"));
        }
    }
    None
}

/// Split on unescaped `:`, removing the escapes. A `*` field is kept as `*` only when it was
/// not escaped (`\*` is a literal star), which the caller sees as the string `*` either way;
/// libpq makes the same simplification.
fn split_pgpass_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("never empty").push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("never empty").push(c),
        }
    }
    fields
}

fn home_dir(env: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(home) = env("HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(home));
    }
    passwd_entry().map(|(_, home)| home)
}

/// The current OS user, as libpq defaults `user`: the password database, then `$USER`.
fn os_user(env: &impl Fn(&str) -> Option<String>) -> Option<String> {
    passwd_entry()
        .map(|(name, _)| name)
        .or_else(|| env("USER").filter(|u| !u.is_empty()))
}

/// (name, home directory) of the effective user from the password database.
fn passwd_entry() -> Option<(String, PathBuf)> {
    use std::ffi::CStr;
    use std::os::unix::ffi::OsStrExt;
    let mut pwd: libc::passwd = unsafe {
        // SAFETY: passwd is plain old data; getpwuid_r fills it in.
        std::mem::zeroed()
    };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the duration of the call and buf's length is passed.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so pw_name and pw_dir point into buf as C strings.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) }
        .to_string_lossy()
        .into_owned();
    let home = if pwd.pw_dir.is_null() {
        PathBuf::new()
    } else {
        // SAFETY: as above.
        PathBuf::from(std::ffi::OsStr::from_bytes(
            unsafe { CStr::from_ptr(pwd.pw_dir) }.to_bytes(),
        ))
    };
    Some((name, home))
}

/// Default CA file for `verify-ca`/`verify-full`, as libpq: `~/.postgresql/root.crt`.
pub(crate) fn default_root_cert() -> Option<PathBuf> {
    home_dir(&|name: &str| std::env::var(name).ok()).map(|h| h.join(".postgresql/root.crt"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn key_values_with_quotes_and_escapes() {
        let c = ConnConfig::parse_with_env(
            r"host=/tmp port = 5433 user=x password='it''s' dbname='my db' application_name=a\ b",
            no_env,
        );
        // '' is not an escape in libpq's conninfo syntax: the quoted value ends at the first '.
        assert!(c.is_err(), "{c:?}");

        let c = ConnConfig::parse_with_env(
            r"host=/tmp port = 5433 user=x password='it\'s \\ ok' dbname='my db' application_name=a\ b sslmode=require",
            no_env,
        )
        .unwrap();
        assert_eq!(c.host, "/tmp");
        assert_eq!(c.port, 5433);
        assert_eq!(c.user, "x");
        assert_eq!(c.password.as_deref(), Some(r"it's \ ok"));
        assert_eq!(c.dbname.as_deref(), Some("my db"));
        assert_eq!(c.application_name.as_deref(), Some("a b"));
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(
            c.socket_path().unwrap(),
            PathBuf::from("/tmp/.s.PGSQL.5433")
        );
        assert_eq!(c.target(), "socket /tmp/.s.PGSQL.5433");
        assert!(
            !format!("{c:?}").contains("ok"),
            "password leaks into Debug"
        );
    }

    /// A physical connection names `replication` (pg_hba.conf, the password file); a
    /// replication=database one its database, by default the user's name.
    #[test]
    fn startup_database() {
        let mut c = ConnConfig::parse_with_env("host=/tmp user=u", no_env).unwrap();
        assert!(!c.replication_database);
        assert_eq!(c.startup_database(), "replication");
        c.replication_database = true;
        assert_eq!(c.startup_database(), "u");
        c.dbname = Some("app".into());
        assert_eq!(c.startup_database(), "app");
    }

    #[test]
    fn key_value_errors() {
        for bad in [
            "host",
            "host=x port",
            "password='unterminated",
            "bogus=1",
            "port=0",
            "port=99999",
            "sslmode=maybe",
            "host=a,b",
        ] {
            assert!(
                ConnConfig::parse_with_env(bad, no_env).is_err(),
                "{bad:?} parsed"
            );
        }
        assert_eq!(
            ConnConfig::parse_with_env("bogus=1", no_env)
                .unwrap_err()
                .to_string(),
            "invalid connection settings: unsupported connection option \"bogus\""
        );
    }

    #[test]
    fn url_with_percent_decoding() {
        let c = ConnConfig::parse_with_env(
            "postgres://us%40er:p%3Ass@db.example.com:6543/my%20db?sslmode=verify-full&application_name=pitr%20backup",
            no_env,
        )
        .unwrap();
        assert_eq!(c.user, "us@er");
        assert_eq!(c.password.as_deref(), Some("p:ss"));
        assert_eq!(c.host, "db.example.com");
        assert_eq!(c.port, 6543);
        assert_eq!(c.dbname.as_deref(), Some("my db"));
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.application_name.as_deref(), Some("pitr backup"));
        assert_eq!(c.target(), "db.example.com:6543");

        let c = ConnConfig::parse_with_env("postgresql://%2Ftmp%2Fpg:5499", no_env).unwrap();
        assert_eq!(c.host, "/tmp/pg");
        assert_eq!(c.port, 5499);
        let c = ConnConfig::parse_with_env("postgresql://u@[::1]:7/?ssl=true", no_env).unwrap();
        assert_eq!(c.host, "::1");
        assert_eq!(c.port, 7);
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.target(), "[::1]:7");
        let c = ConnConfig::parse_with_env("postgresql://?host=/run/x&user=y", no_env).unwrap();
        assert_eq!((c.host.as_str(), c.user.as_str()), ("/run/x", "y"));
        assert!(ConnConfig::parse_with_env("postgres://h/%zz", no_env).is_err());
    }

    /// A malformed connection string fails without echoing the password it holds.
    #[test]
    fn errors_never_show_the_password() {
        for bad in [
            "postgres://u:secret@host:notaport/db",
            "postgres://u:se%zzcret@host/db",
            "postgres://u:secret%00@host/db",
            "postgres://u:secret%ff@host/db",
            "postgres://u:secret@[::1/db",
            "postgres://u@host/db?password=secret&x",
            "postgres://u@host/db?password=secret%zz",
            "postgres://u:secret@host,other/db",
            "host=h password=secret port=notaport",
            "host=h password=secret sslmode=maybe",
            "host=h password=secret bogus",
            "host=h password='secret",
        ] {
            let err = ConnConfig::parse_with_env(bad, no_env)
                .unwrap_err()
                .to_string();
            assert!(!err.contains("secret"), "{bad:?} gave {err:?}");
        }
    }

    #[test]
    fn channel_binding_and_require_auth() {
        let c = ConnConfig::parse_with_env("host=h", no_env).unwrap();
        assert_eq!(c.channel_binding, ChannelBinding::Prefer);
        assert_eq!(c.require_auth, None);
        let c = ConnConfig::parse_with_env(
            "host=h channel_binding=require require_auth=scram-sha-256,md5",
            no_env,
        )
        .unwrap();
        assert_eq!(c.channel_binding, ChannelBinding::Require);
        let r = c.require_auth.unwrap();
        assert!(r.allows(AuthMethod::ScramSha256) && r.allows(AuthMethod::Md5));
        assert!(!r.allows(AuthMethod::Password) && !r.allows(AuthMethod::None));
        assert!(r.names(AuthMethod::Md5));
        assert_eq!(r.to_string(), "scram-sha-256,md5");
        let r = ConnConfig::parse_with_env("require_auth=!password,!none", no_env)
            .unwrap()
            .require_auth
            .unwrap();
        assert!(r.allows(AuthMethod::Md5) && !r.allows(AuthMethod::Password));
        assert!(!r.allows(AuthMethod::None) && !r.names(AuthMethod::Md5));
        let env = |n: &str| (n == "PGCHANNELBINDING").then(|| "disable".to_string());
        let c = ConnConfig::parse_with_env("host=h", env).unwrap();
        assert_eq!(c.channel_binding, ChannelBinding::Disable);
        for bad in [
            "channel_binding=maybe",
            "require_auth=password,!md5",
            "require_auth=kerberos",
            "require_auth=md5,md5",
            "require_auth=md5,",
            "channel_binding=require sslmode=disable",
            "channel_binding=require require_auth=md5",
            "channel_binding=require require_auth=!scram-sha-256",
        ] {
            assert!(
                ConnConfig::parse_with_env(bad, no_env).is_err(),
                "{bad:?} parsed"
            );
        }
    }

    #[test]
    fn explicit_settings_beat_the_environment() {
        let env = |name: &str| {
            Some(
                match name {
                    "PGHOST" => "envhost",
                    "PGPORT" => "1111",
                    "PGUSER" => "envuser",
                    "PGPASSWORD" => "envpw",
                    "PGSSLMODE" => "disable",
                    "PGAPPNAME" => "envapp",
                    "PGDATABASE" => "envdb",
                    "PGPASSFILE" => "/nowhere/pgpass",
                    _ => return None,
                }
                .to_string(),
            )
        };
        let c = ConnConfig::parse_with_env("", env).unwrap();
        assert_eq!(c.host, "envhost");
        assert_eq!(c.port, 1111);
        assert_eq!(c.user, "envuser");
        assert_eq!(c.password.as_deref(), Some("envpw"));
        assert_eq!(c.sslmode, SslMode::Disable);
        assert_eq!(c.application_name.as_deref(), Some("envapp"));
        assert_eq!(c.dbname.as_deref(), Some("envdb"));
        assert_eq!(c.passfile, Some(PathBuf::from("/nowhere/pgpass")));
        let c = ConnConfig::parse_with_env("host=h port=2 user=u sslmode=require", env).unwrap();
        assert_eq!((c.host.as_str(), c.port, c.user.as_str()), ("h", 2, "u"));
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.password.as_deref(), Some("envpw"));
        let c = ConnConfig::parse_with_env("postgres://urluser@urlhost", env).unwrap();
        assert_eq!((c.host.as_str(), c.user.as_str()), ("urlhost", "urluser"));
    }

    #[test]
    fn defaults() {
        let c =
            ConnConfig::parse_with_env("", |n| (n == "USER").then(|| "fallback".into())).unwrap();
        assert_eq!(c.port, 5432);
        assert!(c.host.starts_with('/'));
        assert_eq!(c.sslmode, SslMode::Prefer);
        assert!(!c.user.is_empty());
        assert_eq!(c.password, None);
    }

    #[test]
    fn pgpass_matching() {
        let file = "\
# comment
otherhost:5432:*:u:wrong
db.example.com:5432:postgres:u:not-replication
db.example.com:*:replication:u:first
*:*:*:u:second
/tmp:5433:*:*:sock\\:pw\\\\x
localhost:5434:*:*:local
h\\:6:1:*:*:escaped-host
";
        let lookup =
            |host, alias, port, user| pgpass_lookup(file, host, alias, port, "replication", user);
        assert_eq!(
            lookup("db.example.com", None, 5432, "u").as_deref(),
            Some("first")
        );
        assert_eq!(lookup("elsewhere", None, 1, "u").as_deref(), Some("second"));
        assert_eq!(
            lookup("/tmp", None, 5433, "v").as_deref(),
            Some(r"sock:pw\x")
        );
        assert_eq!(
            lookup("/var/run/postgresql", Some("localhost"), 5434, "v").as_deref(),
            Some("local")
        );
        assert_eq!(lookup("h:6", None, 1, "v").as_deref(), Some("escaped-host"));
        assert_eq!(lookup("db.example.com", None, 5432, "v"), None);
    }

    #[test]
    fn password_file_is_read_when_no_password_is_given() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "*:*:replication:u:from-file\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let conn = format!("host=h user=u passfile={}", path.display());
        let c = ConnConfig::parse_with_env(&conn, no_env).unwrap();
        assert_eq!(c.resolve_password(no_env).as_deref(), Some("from-file"));
        let c = ConnConfig::parse_with_env(&format!("{conn} password=given"), no_env).unwrap();
        assert_eq!(c.resolve_password(no_env).as_deref(), Some("given"));
        // Group-readable files are ignored, as libpq does.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let c = ConnConfig::parse_with_env(&conn, no_env).unwrap();
        assert_eq!(c.resolve_password(no_env), None);
    }
}

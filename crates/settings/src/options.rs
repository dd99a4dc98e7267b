//! Every setting, defined once. A setting the configuration file can give is a field of one
//! options struct per command group: the struct derives `clap::Args` (its flags, flattened
//! into the command's arguments in `cli.rs`) and `serde::Deserialize` (its `[table]` in
//! `pitr.toml`), and [`settings!`] gives it the list of its keys and [`Layer::or`], the merge.
//! `config::resolve` applies the precedence once: a flag (or the variable clap reads for it)
//! beats pitr's own variables, which beat the file. Adding a setting is one field here, its
//! line in `contrib/pitr.toml` and its line in the docs (a test checks the template).
//!
//! Settings the file alone gives (`passphrase_credential`, `[backup] password_file`) are
//! fields with `#[arg(skip)]`. The `[s3]`, `[gcs]`, `[azure]` tables have no flags: the store
//! defines them, with their mapping to object_store's keys (`pitr_store::remote`). The file's
//! key table is read off the structs' own serde field lists ([`fields`]).

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Args;
use pitr_core::config::Checkpoint;
use pitr_store::remote::{Azure, Gcs, S3};
use serde::Deserialize;

/// Log lines on stderr (`--log-format`, `log_format = "text" | "json"`).
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// What merging and relative paths mean for a field's type.
pub trait Layer {
    /// `self`, or where it gives nothing, `lower`.
    fn or(self, lower: Self) -> Self;
    /// A relative path given in the file is relative to the file's directory, `dir`.
    fn rebase(&mut self, _dir: &Path) {}
}

impl<T: Rebase> Layer for Option<T> {
    fn or(self, lower: Self) -> Self {
        self.or(lower)
    }
    fn rebase(&mut self, dir: &Path) {
        if let Some(v) = self {
            v.rebase(dir);
        }
    }
}

impl<T> Layer for Vec<T> {
    fn or(self, lower: Self) -> Self {
        if self.is_empty() {
            lower
        } else {
            self
        }
    }
}

/// A value that may be a path (only a path is changed by rebasing).
pub trait Rebase {
    fn rebase(&mut self, _dir: &Path) {}
}

impl Rebase for PathBuf {
    fn rebase(&mut self, dir: &Path) {
        if self.is_relative() {
            *self = dir.join(&*self);
        }
    }
}

macro_rules! not_paths {
    ($($t:ty),*) => { $(impl Rebase for $t {})* };
}
not_paths!(String, bool, i32, u32, usize, Checkpoint, LogFormat);

/// An options struct: the fields as written, plus `or` (field by field, `self` beats `lower`)
/// and `rebase` (relative paths from the file).
macro_rules! settings {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        #[derive(Deserialize, Default, Debug, Clone, PartialEq)]
        $(#[$meta])*
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $name {
            /// `self`, with what it leaves open taken from `lower`.
            pub fn or(self, lower: Self) -> Self {
                Self { $( $field: Layer::or(self.$field, lower.$field), )* }
            }

            /// Relative paths made relative to `dir` (the configuration file's directory).
            pub fn rebase(&mut self, dir: &Path) {
                $( Layer::rebase(&mut self.$field, dir); )*
            }
        }
    };
}

settings! {
    /// The top level: settings of every command.
    #[derive(Args)]
    pub struct GlobalOptions {
        /// Repository URL: /abs/path, file:///abs/path, s3://bucket/prefix, gs://…, az://…
        #[arg(long, env = "PITR_REPO", global = true)]
        pub repo: Option<String>,
        /// Chunks in flight at once (`PITR_JOBS`; no flag).
        #[arg(skip)]
        pub jobs: Option<usize>,
        /// Log line format on stderr [default: text]
        #[arg(long, value_enum, global = true)]
        pub log_format: Option<LogFormat>,
        /// File holding the passphrase (or key file) of an encrypted repository. Also:
        /// PITR_PASSPHRASE, passphrase_file in the config file, the systemd credential
        /// pitr-passphrase. Never on the command line itself.
        #[arg(long, env = "PITR_PASSPHRASE_FILE", global = true, value_name = "FILE")]
        pub passphrase_file: Option<PathBuf>,
        /// The same from a systemd credential (file only; default: `pitr-passphrase`, when
        /// present).
        #[arg(skip)]
        pub passphrase_credential: Option<String>,
    }
}

settings! {
    /// `[init]`: the settings `pitr init` gives a new repository.
    #[derive(Args)]
    #[serde(deny_unknown_fields)]
    pub struct InitOptions {
        /// Bytes per chunk (a multiple of 8 KiB; suffixes K, M accepted) [default: 1M]
        #[arg(long, value_parser = parse_size)]
        #[serde(default, deserialize_with = "size")]
        pub chunk_size: Option<u32>,
        /// Bytes per chunk for archived WAL files [default: 4M]
        #[arg(long, value_parser = parse_size)]
        #[serde(default, deserialize_with = "size")]
        pub wal_chunk_size: Option<u32>,
        /// zstd compression level for new chunks [default: 1]
        #[arg(long, allow_negative_numbers = true)]
        pub compression_level: Option<i32>,
    }
}

settings! {
    /// `[archive_wal]`.
    #[derive(Args)]
    #[serde(deny_unknown_fields)]
    pub struct ArchiveWalOptions {
        /// Also push up to N upcoming segments that are ready (pg_wal/archive_status/*.ready)
        /// in parallel, so that the next calls find them already stored [default: 8]
        #[arg(long)]
        pub lookahead: Option<usize>,
    }
}

settings! {
    /// `[restore_wal]`.
    #[derive(Args)]
    #[serde(deny_unknown_fields)]
    pub struct RestoreWalOptions {
        /// When PostgreSQL asks for a segment, fetch up to N following segments in the
        /// background into pg_wal/pitr-spool, so that the next calls find them ready (0
        /// disables) [default: 8]
        #[arg(long)]
        pub prefetch: Option<usize>,
    }
}

settings! {
    /// `[backup]`: how `pitr backup` (and `pitr check`) reach the server.
    #[derive(Args)]
    #[serde(deny_unknown_fields)]
    pub struct BackupOptions {
        /// Connection: libpq key=value string or postgres:// URL (PGHOST, PGPORT, PGUSER,
        /// PGPASSWORD, PGPASSFILE, PGSSLMODE, PGCHANNELBINDING, PGREQUIREAUTH apply too).
        /// Besides host, port, user, password, passfile, sslmode and sslrootcert it takes
        /// channel_binding=disable|prefer|require and require_auth=LIST (password, md5,
        /// scram-sha-256, none; `!` negates), as libpq; a cleartext password goes only over
        /// TLS or a Unix socket unless require_auth=password
        #[arg(long, short = 'd')]
        pub dbname: Option<String>,
        /// The connection's password in a file (file only; `PGPASSWORD` beats it).
        #[arg(skip)]
        pub password_file: Option<PathBuf>,
        /// The same from a systemd credential (file only).
        #[arg(skip)]
        pub password_credential: Option<String>,
        /// Checkpoint at the start: fast (immediately) or spread (paced by the server)
        /// [default: spread]
        #[arg(long, value_enum)]
        pub checkpoint: Option<Checkpoint>,
        /// Server-side rate limit in kB/s (32..1048576, PostgreSQL's range)
        #[arg(long, value_parser = clap::value_parser!(u32).range(32..=1048576))]
        pub max_rate: Option<u32>,
    }
}

settings! {
    /// `[expire]`: retention.
    #[derive(Args)]
    #[serde(deny_unknown_fields)]
    pub struct ExpireOptions {
        /// Keep the newest N backups
        #[arg(long, value_name = "N")]
        pub retain_full: Option<usize>,
        /// Keep every backup and all WAL needed to restore to any moment of the last D days
        #[arg(long, value_name = "D")]
        pub retain_days: Option<u32>,
        /// Also keep WAL archived in the last D days that no kept backup needs
        #[arg(long, value_name = "D")]
        pub retain_wal_days: Option<u32>,
    }
}

settings! {
    /// `[verify]`: what `pitr verify --restore-test` runs on the scratch instance.
    #[derive(Args)]
    #[serde(deny_unknown_fields)]
    pub struct VerifyOptions {
        /// Where to restore (absent or empty; emptied afterwards). Default: a new temp
        /// directory
        #[arg(long, value_name = "DIR", requires = "restore_test")]
        pub scratch: Option<PathBuf>,
        /// SQL each to run with psql on the scratch instance (repeatable). Default: SELECT
        /// count(*) FROM pg_class, and pg_amcheck --all when pg_amcheck and amcheck are
        /// installed
        #[arg(long, value_name = "SQL", requires = "restore_test")]
        #[serde(default, deserialize_with = "one_or_many")]
        pub check_sql: Vec<String>,
    }
}

/// The configuration file's struct, its tables (one per options struct) listed once.
macro_rules! config_file {
    ($( $section:ident : $ty:ty ),* $(,)?) => {
        /// The configuration file as written: the top level's settings and one table per
        /// group. Tables other commands own are typed too, so that a typo in them is caught
        /// whichever command runs. (The top level is read by a second pass over the text, not
        /// `#[serde(flatten)]`, so that its type errors keep their line.)
        #[derive(Deserialize, Default, Debug, Clone, PartialEq)]
        pub struct ConfigFile {
            #[serde(skip)]
            pub global: GlobalOptions,
            $(
                #[serde(default)]
                pub $section: $ty,
            )*
        }

        impl ConfigFile {
            /// Every table and its keys (the top level is `""`), from the structs.
            pub fn tables() -> Vec<(&'static str, Vec<&'static str>)> {
                let sections: &[(&str, &[&str])] = &[$( (stringify!($section), fields::<$ty>()), )*];
                let top = fields::<GlobalOptions>()
                    .iter()
                    .copied()
                    .chain(sections.iter().map(|(s, _)| *s))
                    .collect();
                std::iter::once(("", top))
                    .chain(sections.iter().map(|(s, k)| (*s, k.to_vec())))
                    .collect()
            }

            /// The first secret the file gives inline (its key), if any: such a file must be
            /// private like any secret file.
            pub fn inline_secret(&self) -> Option<&'static str> {
                let dbname = self.backup.dbname.as_deref().unwrap_or("");
                [
                    ("s3.secret_access_key", self.s3.secret_access_key.is_some()),
                    ("s3.session_token", self.s3.session_token.is_some()),
                    ("azure.access_key", self.azure.access_key.is_some()),
                    ("backup.dbname (a password)", has_password(dbname)),
                ]
                .into_iter()
                .find_map(|(key, given)| given.then_some(key))
            }

            /// Relative paths made relative to `dir`, the file's directory.
            pub fn rebase(&mut self, dir: &Path) {
                self.global.rebase(dir);
                $( self.$section.rebase(dir); )*
            }
        }
    };
}

config_file! {
    s3: S3,
    gcs: Gcs,
    azure: Azure,
    init: InitOptions,
    archive_wal: ArchiveWalOptions,
    restore_wal: RestoreWalOptions,
    backup: BackupOptions,
    expire: ExpireOptions,
    verify: VerifyOptions,
}

/// The keys a struct deriving `Deserialize` reads: serde's own list of its fields, asked
/// for by a deserializer that stops there.
pub fn fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{Error, Visitor};
    type Fail = serde::de::value::Error;
    struct Names<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Names<'_> {
        type Error = Fail;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Fail> {
            Err(Fail::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Fail> {
            *self.0 = fields;
            Err(Fail::custom("only the field names were asked for"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(Names(&mut names));
    names
}

/// Whether a connection string carries a password (`password=…`, or a URL's `user:pw@`).
fn has_password(conn: &str) -> bool {
    let url_password = conn.split_once("://").is_some_and(|(_, rest)| {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        authority
            .rsplit_once('@')
            .is_some_and(|(user, _)| user.contains(':'))
    });
    let keyword = conn.match_indices("password").any(|(i, _)| {
        let before = conn[..i].chars().next_back();
        let after = conn[i + "password".len()..].trim_start();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '=')
            && after.starts_with('=')
    });
    url_password || keyword
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// A size as the file writes it: `"1M"`, `"512K"`, or bytes, as a string.
fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| parse_size(&t).map_err(serde::de::Error::custom))
        .transpose()
}

pub fn parse_size(s: &str) -> Result<u32, String> {
    let (num, mult) = match s.trim().to_ascii_uppercase() {
        t if t.ends_with("MIB") || t.ends_with('M') => (
            t.trim_end_matches("MIB").trim_end_matches('M').to_string(),
            1 << 20,
        ),
        t if t.ends_with("KIB") || t.ends_with('K') => (
            t.trim_end_matches("KIB").trim_end_matches('K').to_string(),
            1 << 10,
        ),
        t => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    u32::try_from(n * mult).map_err(|_| format!("{s:?} is too large"))
}

/// The file's text as a configuration: every key known (else an error naming the nearest
/// valid one), then typed.
pub fn parse(text: &str) -> anyhow::Result<ConfigFile> {
    let syntax = |e| without_values(text, e);
    let table: toml::Table = toml::from_str(text).map_err(syntax)?;
    check_keys(&table)?;
    let mut file: ConfigFile = toml::from_str(text).map_err(syntax)?;
    file.global = toml::from_str(text).map_err(syntax)?;
    Ok(file)
}

/// A parse error without the file's text: the file may hold secrets inline
/// (`secret_access_key`, a password in `dbname`), and toml's own message quotes the line and
/// the value. This says where (line, column) and what, with the value the message names left
/// out.
fn without_values(text: &str, e: toml::de::Error) -> anyhow::Error {
    let at = e.span().map_or(String::new(), |span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!(" at line {line}, column {column}")
    });
    anyhow::anyhow!("TOML parse error{at}: {}", elide_value(e.message().trim()))
}

/// serde's messages name the value they refused (`invalid type: string "…", expected
/// usize`, `unknown variant `…``): that value is left out, the rest kept.
fn elide_value(message: &str) -> String {
    for lead in [
        "invalid type: ",
        "invalid value: ",
        "unknown variant ",
        "unknown field ",
    ] {
        let Some(at) = message.find(lead) else {
            continue;
        };
        let rest = &message[at + lead.len()..];
        // `string "…"`, `integer `…``, or the quoted value itself.
        let (kind, quoted) = match rest.find([' ', '"', '`']) {
            Some(i) if rest.as_bytes()[i] == b' ' => (&rest[..i + 1], &rest[i + 1..]),
            _ => ("", rest),
        };
        let close = match quoted.chars().next() {
            Some(q @ ('"' | '`')) => quoted[1..].find(q).map(|i| i + 2),
            _ => None,
        };
        if let Some(end) = close {
            return format!(
                "{}{lead}{kind}(value not shown){}",
                &message[..at],
                &quoted[end..]
            );
        }
    }
    message.to_string()
}

fn check_keys(table: &toml::Table) -> anyhow::Result<()> {
    let tables = ConfigFile::tables();
    let known = |section: &str| {
        tables
            .iter()
            .find(|(s, _)| *s == section)
            .map_or(&[][..], |(_, k)| &k[..])
    };
    for (key, value) in table {
        if !known("").contains(&key.as_str()) {
            bail!("unknown key {key:?}{}", suggestion(&tables, "", key));
        }
        if let (Some(sub), true) = (value.as_table(), tables.iter().any(|(s, _)| s == key)) {
            for k in sub.keys() {
                if !known(key).contains(&k.as_str()) {
                    bail!("unknown key \"{key}.{k}\"{}", suggestion(&tables, key, k));
                }
            }
        }
    }
    Ok(())
}

/// `; did you mean "…"?` for the valid key nearest `key` (in its own table, or the same name
/// in another table), or the list of valid keys.
fn suggestion(tables: &[(&str, Vec<&str>)], section: &str, key: &str) -> String {
    let here = tables
        .iter()
        .find(|(s, _)| *s == section)
        .map_or(&[][..], |(_, k)| &k[..]);
    // The right key in the wrong table: `lookahead = 8` at the top means [archive_wal].
    for (s, keys) in tables {
        if *s != section && keys.contains(&key) {
            let full = if s.is_empty() {
                key.to_string()
            } else {
                format!("{s}.{key}")
            };
            return format!("; did you mean \"{full}\" (key {key} in [{s}])?");
        }
    }
    let best = here
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .min()
        .filter(|(d, k)| *d <= (k.len().max(key.len()) / 3).max(2));
    match best {
        Some((_, k)) if section.is_empty() => format!("; did you mean \"{k}\"?"),
        Some((_, k)) => format!("; did you mean \"{section}.{k}\"?"),
        None => format!("; valid keys here: {}", here.join(", ")),
    }
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// contrib/pitr.toml names every key (commented out as `#key = …`), and each is a field.
    #[test]
    fn the_example_holds_every_key() {
        let text = include_str!("../../../contrib/pitr.toml");
        parse(text).unwrap();
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if !rest.starts_with([' ', '#']) && !rest.is_empty() => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let table: toml::Table = toml::from_str(&uncommented).unwrap();
        let cfg = parse(&uncommented).unwrap();
        assert_ne!(cfg, ConfigFile::default());
        for (section, keys) in ConfigFile::tables() {
            for key in keys {
                let present = if section.is_empty() {
                    table.contains_key(key)
                } else {
                    table[section].as_table().unwrap().contains_key(key)
                };
                assert!(present, "contrib/pitr.toml lacks {section}.{key}");
            }
        }
    }

    /// The keys checked are the ones serde reads: a key the tables list parses, and the
    /// tables' lists come from the same fields.
    #[test]
    fn keys_are_the_fields() {
        let tables = ConfigFile::tables();
        assert!(tables[0].1.contains(&"repo") && tables[0].1.contains(&"verify"));
        assert_eq!(fields::<VerifyOptions>(), ["scratch", "check_sql"]);
        assert!(fields::<S3>().contains(&"sse_bucket_key_enabled"));
        let e = parse("[verify]\ncheck_sql = 1\n").unwrap_err().to_string();
        assert!(!e.contains("unknown key"), "{e}");
    }

    #[test]
    fn unknown_keys_name_the_nearest() {
        let e = parse("repo = \"/r\"\nrepos = 1\n").unwrap_err().to_string();
        assert!(
            e.contains("\"repos\"") && e.contains("did you mean \"repo\""),
            "{e}"
        );
        let e = parse("[s3]\nregoin = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("did you mean \"s3.region\""), "{e}");
        let e = parse("lookahead = 4\n").unwrap_err().to_string();
        assert!(e.contains("archive_wal.lookahead"), "{e}");
        let e = parse("[backup]\nzzzzzzzzzz = 1\n").unwrap_err().to_string();
        assert!(e.contains("valid keys here: dbname"), "{e}");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "ab"), 2);
    }

    /// A flag beats the file field by field; a list given beats the file's list; relative
    /// paths from the file are the file's directory's.
    #[test]
    fn merge_and_rebase() {
        let flags = BackupOptions {
            max_rate: Some(64),
            ..Default::default()
        };
        let mut file = parse(
            "[backup]\nmax_rate = 32\ndbname = \"host=x\"\npassword_file = \"pw\"\n\
             [verify]\ncheck_sql = \"SELECT 1\"\n",
        )
        .unwrap();
        file.rebase(Path::new("/etc/pitr"));
        let merged = flags.or(file.backup.clone());
        assert_eq!(merged.max_rate, Some(64));
        assert_eq!(merged.dbname.as_deref(), Some("host=x"));
        assert_eq!(merged.password_file, Some(PathBuf::from("/etc/pitr/pw")));
        let given = VerifyOptions {
            check_sql: vec!["SELECT 2".into()],
            ..Default::default()
        };
        assert_eq!(given.or(file.verify.clone()).check_sql, ["SELECT 2"]);
        assert_eq!(
            VerifyOptions::default().or(file.verify).check_sql,
            ["SELECT 1"]
        );
    }

    /// A parse error names the line and what is wrong, never the value: the file may hold a
    /// secret inline (issue 17, item 7).
    #[test]
    fn parse_errors_do_not_show_values() {
        for (text, line) in [
            ("[s3]\nsecret_access_key = \"hunter2-secret\n", 2),
            ("[s3]\nregion = \"x\"\nsecret_access_key = 4815162342\n", 3),
            ("[azure]\naccess_key = [\"hunter2-secret\"]\n", 2),
            ("[backup]\ndbname = \"password=hunter2-secret\" x\n", 2),
            ("[backup]\ncheckpoint = \"hunter2-secret\"\n", 2),
            ("jobs = \"hunter2-secret\"\n", 1),
        ] {
            let e = format!("{:#}", parse(text).unwrap_err());
            assert!(
                !e.contains("hunter2") && !e.contains("4815162342"),
                "{text:?}: {e}"
            );
            assert!(e.contains(&format!("line {line}")), "{text:?}: {e}");
        }
        assert_eq!(
            elide_value("invalid type: string \"x y\", expected usize"),
            "invalid type: string (value not shown), expected usize"
        );
        assert_eq!(
            elide_value("unknown variant `fastt`, expected `fast` or `spread`"),
            "unknown variant (value not shown), expected `fast` or `spread`"
        );
    }

    #[test]
    fn passwords_in_connection_strings() {
        for with in [
            "host=x password=secret",
            "host=x password = secret",
            "postgres://u:secret@h/db",
            "postgresql://h/db?password=secret",
        ] {
            assert!(has_password(with), "{with}");
        }
        for without in [
            "host=x user=u",
            "host=x require_auth=password",
            "postgres://u@h/db",
            "host=x passfile=/p",
        ] {
            assert!(!has_password(without), "{without}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("8192"), Ok(8192));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("8192M").is_err());
        let e = parse("[init]\nchunk_size = \"lots\"\n").unwrap_err();
        assert!(e.to_string().contains("\"lots\" is not a size"), "{e}");
    }
}

//! [`TdengineOptions`] and the `taos+ws://` URL form used by `open_timeseries`.

use tp_core::{Error, Result};

/// The setting named in URL errors.
pub(crate) const URL_FIELD: &str = "tdengine url";

/// TDengine's `CACHEMODEL` database option: which last values the server keeps in
/// memory. `last_row` makes the `LAST_ROW` query behind `latest` a cache hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheModel {
    /// No cache.
    None,
    /// Cache the last row of each table (default).
    #[default]
    LastRow,
    /// Cache the last non-NULL value of each column.
    LastValue,
    /// Both caches.
    Both,
}

impl CacheModel {
    /// The SQL spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheModel::None => "none",
            CacheModel::LastRow => "last_row",
            CacheModel::LastValue => "last_value",
            CacheModel::Both => "both",
        }
    }
}

impl std::str::FromStr for CacheModel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "none" => CacheModel::None,
            "last_row" => CacheModel::LastRow,
            "last_value" => CacheModel::LastValue,
            "both" => CacheModel::Both,
            other => {
                return Err(Error::invalid(
                    "cache_model",
                    format!("{other:?} is not one of none, last_row, last_value, both"),
                ));
            }
        })
    }
}

/// Database and schema settings of the TDengine backend. The database is created
/// with them when missing (`CREATE DATABASE IF NOT EXISTS .. PRECISION 'ms' ..`); an
/// existing database keeps its settings. Precision is always milliseconds, the unit
/// of [`tp_core::Timestamp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdengineOptions {
    /// Database name: ASCII letters, digits and `_`, starting with a letter (default
    /// `thingspanel`).
    pub database: String,
    /// Retention in days (`KEEP`, default 3650). TDengine needs it to be at least 3x
    /// the `DURATION` (10 days unless set).
    pub keep_days: u32,
    /// Days of data per data file (`DURATION`); `None` keeps the server default.
    pub duration_days: Option<u32>,
    /// `COMP`: 0 none, 1 one-stage, 2 two-stage compression (default 2).
    pub compression: u8,
    /// `REPLICA`: 1 or 3 (default 1).
    pub replica: u8,
    /// `VGROUPS`; `None` keeps the server default.
    pub vgroups: Option<u32>,
    /// `WAL_LEVEL`: 1 write, 2 write and fsync (default 1).
    pub wal_level: u8,
    /// `CACHEMODEL` (default `last_row`).
    pub cache_model: CacheModel,
    /// Size of the string column (`NCHAR`): longest string or JSON text stored, in
    /// characters (default 4096). Longer values are rejected as invalid. Fixed when
    /// the super tables are created.
    pub max_string_chars: u32,
    /// Size of the key tag (`NCHAR`), in characters (default 256).
    pub max_key_chars: u32,
}

impl Default for TdengineOptions {
    fn default() -> Self {
        Self {
            database: "thingspanel".into(),
            keep_days: 3650,
            duration_days: None,
            compression: 2,
            replica: 1,
            vgroups: None,
            wal_level: 1,
            cache_model: CacheModel::LastRow,
            max_string_chars: 4096,
            max_key_chars: 256,
        }
    }
}

impl TdengineOptions {
    /// Checks every setting; the database name is validated because it is spliced into
    /// SQL as an identifier.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        let db = &self.database;
        let valid_name = db.len() <= 64
            && db.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(Error::invalid(
                "database",
                format!("{db:?}: use 1 to 64 ASCII letters, digits or '_', starting with a letter"),
            ));
        }
        if self.keep_days == 0 {
            return Err(Error::invalid("keep_days", "must be at least 1"));
        }
        if let Some(d) = self.duration_days
            && (d == 0 || u64::from(self.keep_days) < 3 * u64::from(d))
        {
            return Err(Error::invalid(
                "duration_days",
                format!(
                    "must be 1 to keep_days / 3 ({}), got {d}",
                    self.keep_days / 3
                ),
            ));
        }
        if self.compression > 2 {
            return Err(Error::invalid("compression", "must be 0, 1 or 2"));
        }
        if !matches!(self.replica, 1 | 3) {
            return Err(Error::invalid("replica", "must be 1 or 3"));
        }
        if !matches!(self.wal_level, 1 | 2) {
            return Err(Error::invalid("wal_level", "must be 1 or 2"));
        }
        if self.vgroups == Some(0) {
            return Err(Error::invalid("vgroups", "must be at least 1"));
        }
        if !(1..=4096).contains(&self.max_string_chars) {
            return Err(Error::invalid("max_string_chars", "must be 1 to 4096"));
        }
        if !(1..=1024).contains(&self.max_key_chars) {
            return Err(Error::invalid("max_key_chars", "must be 1 to 1024"));
        }
        Ok(())
    }
}

/// Splits a `taos+ws://` / `taos+wss://` URL into the DSN the `taos` crate takes and
/// the options it carries.
///
/// `taos+ws://[user:pass@]host:port[/database][?keep_days=..&duration_days=..&compression=..&replica=..&vgroups=..&wal_level=..&cache_model=..&max_string_chars=..&max_key_chars=..]`
///
/// The path names the database (default `thingspanel`); the listed parameters set
/// [`TdengineOptions`] fields; other parameters (`token`, ...) stay in the DSN. The
/// returned DSN has no database, because the database may not exist yet.
///
/// # Errors
/// [`Error::Invalid`] on `"tdengine url"` or on the option's name.
pub fn parse_url(url: &str) -> Result<(String, TdengineOptions)> {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(Error::invalid(
            URL_FIELD,
            "missing scheme (expected taos+ws://...)",
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "taos+ws" | "taos+wss") {
        return Err(Error::invalid(
            URL_FIELD,
            format!("unsupported scheme {scheme:?} (expected taos+ws or taos+wss)"),
        ));
    }
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, q),
        None => (rest, ""),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], &before_query[i + 1..]),
        None => (before_query, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return Err(Error::invalid(URL_FIELD, "missing host:port"));
    }
    let mut options = TdengineOptions::default();
    let path = path.trim_end_matches('/');
    if !path.is_empty() {
        options.database = path.to_owned();
    }
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let num = |field: &str| -> Result<u32> {
            value
                .parse()
                .map_err(|_| Error::invalid(field, format!("{value:?} is not a whole number")))
        };
        let small = |field: &str| -> Result<u8> {
            value
                .parse()
                .map_err(|_| Error::invalid(field, format!("{value:?} is not a small number")))
        };
        match name {
            "keep_days" => options.keep_days = num(name)?,
            "duration_days" => options.duration_days = Some(num(name)?),
            "compression" => options.compression = small(name)?,
            "replica" => options.replica = small(name)?,
            "vgroups" => options.vgroups = Some(num(name)?),
            "wal_level" => options.wal_level = small(name)?,
            "cache_model" => options.cache_model = value.parse()?,
            "max_string_chars" => options.max_string_chars = num(name)?,
            "max_key_chars" => options.max_key_chars = num(name)?,
            _ => kept.push(pair),
        }
    }
    options.validate()?;
    let mut dsn = format!("{scheme}://{authority}");
    if !kept.is_empty() {
        dsn.push('?');
        dsn.push_str(&kept.join("&"));
    }
    Ok((dsn, options))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        TdengineOptions::default().validate().unwrap();
    }

    #[test]
    fn bad_options_name_the_setting() {
        let field = |o: TdengineOptions| match o.validate() {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let d = TdengineOptions::default;
        for (name, o) in [
            (
                "database",
                TdengineOptions {
                    database: "1db".into(),
                    ..d()
                },
            ),
            (
                "database",
                TdengineOptions {
                    database: "a`b".into(),
                    ..d()
                },
            ),
            (
                "database",
                TdengineOptions {
                    database: String::new(),
                    ..d()
                },
            ),
            (
                "keep_days",
                TdengineOptions {
                    keep_days: 0,
                    ..d()
                },
            ),
            (
                "duration_days",
                TdengineOptions {
                    keep_days: 20,
                    duration_days: Some(10),
                    ..d()
                },
            ),
            (
                "compression",
                TdengineOptions {
                    compression: 3,
                    ..d()
                },
            ),
            ("replica", TdengineOptions { replica: 2, ..d() }),
            (
                "wal_level",
                TdengineOptions {
                    wal_level: 0,
                    ..d()
                },
            ),
            (
                "vgroups",
                TdengineOptions {
                    vgroups: Some(0),
                    ..d()
                },
            ),
            (
                "max_string_chars",
                TdengineOptions {
                    max_string_chars: 0,
                    ..d()
                },
            ),
            (
                "max_key_chars",
                TdengineOptions {
                    max_key_chars: 5000,
                    ..d()
                },
            ),
        ] {
            assert_eq!(field(o), name);
        }
    }

    #[test]
    fn urls_split_into_dsn_and_options() {
        let (dsn, o) = parse_url("taos+ws://root:taosdata@10.0.0.5:6041").unwrap();
        assert_eq!(dsn, "taos+ws://root:taosdata@10.0.0.5:6041");
        assert_eq!(o, TdengineOptions::default());

        let (dsn, o) = parse_url(
            "taos+wss://cloud.example:443/tp_prod?token=abc&keep_days=365&duration_days=10&compression=1&cache_model=both&vgroups=8",
        )
        .unwrap();
        assert_eq!(dsn, "taos+wss://cloud.example:443?token=abc");
        assert_eq!(
            o,
            TdengineOptions {
                database: "tp_prod".into(),
                keep_days: 365,
                duration_days: Some(10),
                compression: 1,
                cache_model: CacheModel::Both,
                vgroups: Some(8),
                ..TdengineOptions::default()
            }
        );
    }

    #[test]
    fn bad_urls_are_invalid() {
        for (url, want) in [
            ("ws://h:6041", URL_FIELD),
            ("taos+ws://", URL_FIELD),
            ("nothing", URL_FIELD),
            ("taos+ws://h:1/bad-name", "database"),
            ("taos+ws://h:1?keep_days=ever", "keep_days"),
            ("taos+ws://h:1?cache_model=all", "cache_model"),
        ] {
            match parse_url(url) {
                Err(Error::Invalid { field, .. }) => assert_eq!(field, want, "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }
}

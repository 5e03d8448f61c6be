//! Parsing of the cache URLs this backend accepts.
//!
//! - `redis://[user:pass@]host[:port][/db][?prefix=tp:&...]` and `rediss://...` (TLS,
//!   needs a TLS feature of the `redis` crate, which this build does not enable).
//! - `redis+unix:///path/to.sock[?...]` and `unix:///path[?...]`.
//! - `redis+cluster://[user:pass@]host1:port,host2:port[?prefix=...]` and
//!   `rediss+cluster://...`: a Redis Cluster reached through its seed nodes.
//!
//! The `prefix` query parameter is ours: it is removed before the URL reaches the
//! `redis` crate and prepended to every key. Other query parameters pass through.

use tp_core::{Error, Result};

/// The setting named in URL errors.
pub(crate) const URL_FIELD: &str = "redis url";

/// Where the cache lives, as parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// One server (or a master behind a proxy): the URL for `redis::Client::open`.
    Single(String),
    /// Seed node URLs for `redis::cluster::ClusterClient`.
    Cluster(Vec<String>),
}

/// A parsed cache URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedUrl {
    /// Connection target with the `prefix` parameter removed.
    pub(crate) target: Target,
    /// Prepended to every key (may be empty).
    pub(crate) prefix: String,
    /// The address(es) without credentials, for errors and `Debug`.
    pub(crate) display: String,
}

/// Parses a cache URL; errors are [`Error::Invalid`] on `"redis url"` and never echo
/// the password.
pub(crate) fn parse(url: &str) -> Result<ParsedUrl> {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(Error::invalid(
            URL_FIELD,
            "missing scheme (expected redis://...)",
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (prefix, kept_query) = split_prefix(query.unwrap_or(""))?;
    let suffix = if kept_query.is_empty() {
        String::new()
    } else {
        format!("?{kept_query}")
    };
    match scheme.as_str() {
        "redis" | "rediss" | "redis+unix" | "unix" => {
            let (authority, _path) = split_path(before_query);
            let host = strip_userinfo(authority);
            if host.is_empty() && !scheme.contains("unix") {
                return Err(Error::invalid(URL_FIELD, "missing host"));
            }
            let display = if scheme.contains("unix") {
                before_query.to_owned()
            } else {
                host.to_owned()
            };
            Ok(ParsedUrl {
                target: Target::Single(format!("{scheme}://{before_query}{suffix}")),
                prefix,
                display,
            })
        }
        "redis+cluster" | "rediss+cluster" => {
            let node_scheme = scheme.trim_end_matches("+cluster");
            let (authority, path) = split_path(before_query);
            if !matches!(path, "" | "/" | "/0") {
                return Err(Error::invalid(
                    URL_FIELD,
                    "a cluster URL cannot select a database",
                ));
            }
            let (userinfo, hosts) = match authority.rsplit_once('@') {
                Some((u, h)) => (format!("{u}@"), h),
                None => (String::new(), authority),
            };
            let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
            if hosts.iter().any(|h| h.is_empty()) {
                return Err(Error::invalid(
                    URL_FIELD,
                    "a cluster URL needs host:port[,host:port...]",
                ));
            }
            Ok(ParsedUrl {
                target: Target::Cluster(
                    hosts
                        .iter()
                        .map(|h| format!("{node_scheme}://{userinfo}{h}{suffix}"))
                        .collect(),
                ),
                prefix,
                display: hosts.join(","),
            })
        }
        other => Err(Error::invalid(
            URL_FIELD,
            format!(
                "unsupported scheme {other:?} (expected redis, rediss, redis+unix, redis+cluster)"
            ),
        )),
    }
}

/// Splits `authority/path` into the authority and the path (with its `/`).
fn split_path(s: &str) -> (&str, &str) {
    match s.find('/') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// The host part of an authority, without `user:pass@`.
fn strip_userinfo(authority: &str) -> &str {
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

/// Removes `prefix=..` from a query string; returns the decoded prefix and the rest.
fn split_prefix(query: &str) -> Result<(String, String)> {
    let mut prefix = String::new();
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("prefix", value)) => prefix = percent_decode(value)?,
            _ => kept.push(pair),
        }
    }
    Ok((prefix, kept.join("&")))
}

/// Decodes `%XX` escapes (and `+` as a space) of a query value.
fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| Error::invalid(URL_FIELD, "bad %-escape in prefix"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| Error::invalid(URL_FIELD, "prefix is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_url_keeps_other_params_and_strips_prefix() {
        let p = parse("redis://:secret@127.0.0.1:6379/2?prefix=tp%3Atest:&protocol=resp3").unwrap();
        assert_eq!(
            p.target,
            Target::Single("redis://:secret@127.0.0.1:6379/2?protocol=resp3".into())
        );
        assert_eq!(p.prefix, "tp:test:");
        assert_eq!(p.display, "127.0.0.1:6379");
        assert!(!p.display.contains("secret"));

        let p = parse("redis://127.0.0.1:6379/?prefix=tp:").unwrap();
        assert_eq!(p.target, Target::Single("redis://127.0.0.1:6379/".into()));
        assert_eq!(p.prefix, "tp:");

        let p = parse("redis://localhost").unwrap();
        assert_eq!(p.target, Target::Single("redis://localhost".into()));
        assert_eq!(p.prefix, "");
    }

    #[test]
    fn cluster_url_expands_to_seed_nodes() {
        let p = parse("redis+cluster://u:pw@h1:7000,h2:7001/?prefix=a:").unwrap();
        assert_eq!(
            p.target,
            Target::Cluster(vec![
                "redis://u:pw@h1:7000".into(),
                "redis://u:pw@h2:7001".into()
            ])
        );
        assert_eq!(p.prefix, "a:");
        assert_eq!(p.display, "h1:7000,h2:7001");

        let p = parse("rediss+cluster://h1:7000?protocol=resp3").unwrap();
        assert_eq!(
            p.target,
            Target::Cluster(vec!["rediss://h1:7000?protocol=resp3".into()])
        );
    }

    #[test]
    fn bad_urls_are_invalid_without_leaking_passwords() {
        for bad in [
            "127.0.0.1:6379",
            "http://h:1",
            "redis://",
            "redis+cluster://h1:1,,h2:2",
            "redis+cluster://h1:1/3",
            "redis://h?prefix=%zz",
        ] {
            match parse(bad) {
                Err(Error::Invalid { field, .. }) => assert_eq!(field, URL_FIELD, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let err = parse("ftp://user:hunter2@h").unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}

//! The TimescaleDB layout of `ts_kv`: SQL generation only, kept apart from the
//! partitioned layout so it can be unit-tested without a TimescaleDB server.
//!
//! `ts` is a `bigint` of milliseconds, so the hypertable uses an integer time
//! dimension; compression and retention policies on integer time need an
//! "integer now" function, which [`setup_sql`] creates as `ts_kv_now_ms()`.

/// How the hypertable is configured when TimescaleDB is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimescaleSettings {
    /// Chunk width in milliseconds.
    pub chunk_ms: i64,
    /// Compress chunks whose data is older than this many milliseconds (`None`: never).
    pub compress_after_ms: Option<i64>,
    /// Drop chunks whose data is older than this many milliseconds (`None`: keep all).
    pub retention_ms: Option<i64>,
}

use super::timeseries::TS_KV_COLUMNS;

/// Whether the server offers the extension (it may still fail to load when it is not
/// in `shared_preload_libraries`; the caller falls back then).
pub(crate) const AVAILABLE_SQL: &str =
    "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')";

/// Installs the extension if needed (into `public`, shared by every schema).
pub(crate) const CREATE_EXTENSION_SQL: &str =
    "CREATE EXTENSION IF NOT EXISTS timescaledb WITH SCHEMA public";

/// The schema the installed extension lives in.
pub(crate) const EXTENSION_SCHEMA_SQL: &str = "SELECT n.nspname FROM pg_extension e \
     JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'timescaledb'";

/// Quotes an identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The statements that create `ts_kv` as a hypertable in the current schema, in
/// order. `ext_schema` is the extension's schema (its functions are called qualified,
/// since the store's `search_path` holds only its own schema).
pub(crate) fn setup_sql(ext_schema: &str, s: &TimescaleSettings) -> Vec<String> {
    let ext = ident(ext_schema);
    let mut sql = vec![
        format!("CREATE TABLE IF NOT EXISTS ts_kv ({TS_KV_COLUMNS})"),
        "CREATE OR REPLACE FUNCTION ts_kv_now_ms() RETURNS bigint LANGUAGE sql STABLE \
         AS $$ SELECT (extract(epoch FROM now()) * 1000)::bigint $$"
            .to_owned(),
        format!(
            "SELECT {ext}.create_hypertable('ts_kv', 'ts', \
             chunk_time_interval => {}::bigint, if_not_exists => TRUE)",
            s.chunk_ms
        ),
        format!(
            "SELECT {ext}.set_integer_now_func('ts_kv', 'ts_kv_now_ms', \
             replace_if_exists => TRUE)"
        ),
    ];
    if let Some(after) = s.compress_after_ms {
        sql.push(
            "ALTER TABLE ts_kv SET (timescaledb.compress, \
             timescaledb.compress_segmentby = 'series', \
             timescaledb.compress_orderby = 'ts DESC')"
                .to_owned(),
        );
        sql.push(format!(
            "SELECT {ext}.add_compression_policy('ts_kv', \
             compress_after => {after}::bigint, if_not_exists => TRUE)"
        ));
    }
    if let Some(keep) = s.retention_ms {
        sql.push(format!(
            "SELECT {ext}.add_retention_policy('ts_kv', \
             drop_after => {keep}::bigint, if_not_exists => TRUE)"
        ));
    }
    sql
}

/// Drops every chunk whose data is entirely older than `$1` (ms); yields the count.
pub(crate) fn drop_chunks_sql(ext_schema: &str) -> String {
    format!(
        "SELECT count(*) FROM {}.drop_chunks('ts_kv', older_than => $1::bigint)",
        ident(ext_schema)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn hypertable_with_compression_and_retention() {
        let sql = setup_sql(
            "public",
            &TimescaleSettings {
                chunk_ms: DAY,
                compress_after_ms: Some(7 * DAY),
                retention_ms: Some(30 * DAY),
            },
        );
        assert_eq!(sql.len(), 7, "{sql:#?}");
        assert!(sql[0].starts_with("CREATE TABLE IF NOT EXISTS ts_kv ("));
        assert!(sql[0].contains("PRIMARY KEY (series, ts)"));
        assert!(sql[1].contains("FUNCTION ts_kv_now_ms() RETURNS bigint"));
        assert_eq!(
            sql[2],
            "SELECT \"public\".create_hypertable('ts_kv', 'ts', \
             chunk_time_interval => 86400000::bigint, if_not_exists => TRUE)"
        );
        assert_eq!(
            sql[3],
            "SELECT \"public\".set_integer_now_func('ts_kv', 'ts_kv_now_ms', \
             replace_if_exists => TRUE)"
        );
        assert!(sql[4].contains("timescaledb.compress_segmentby = 'series'"));
        assert!(sql[4].contains("timescaledb.compress_orderby = 'ts DESC'"));
        assert_eq!(
            sql[5],
            "SELECT \"public\".add_compression_policy('ts_kv', \
             compress_after => 604800000::bigint, if_not_exists => TRUE)"
        );
        assert_eq!(
            sql[6],
            "SELECT \"public\".add_retention_policy('ts_kv', \
             drop_after => 2592000000::bigint, if_not_exists => TRUE)"
        );
    }

    #[test]
    fn policies_are_optional() {
        let sql = setup_sql(
            "ext",
            &TimescaleSettings {
                chunk_ms: 3_600_000,
                compress_after_ms: None,
                retention_ms: None,
            },
        );
        assert_eq!(sql.len(), 4, "{sql:#?}");
        assert!(sql[2].contains("\"ext\".create_hypertable"));
        assert!(sql[2].contains("3600000::bigint"));
        assert!(sql.iter().all(|s| !s.contains("policy")));
    }

    #[test]
    fn drop_chunks_is_qualified_and_bound() {
        assert_eq!(
            drop_chunks_sql("my\"ext"),
            "SELECT count(*) FROM \"my\"\"ext\".drop_chunks('ts_kv', older_than => $1::bigint)"
        );
        assert!(AVAILABLE_SQL.contains("pg_available_extensions"));
        assert!(CREATE_EXTENSION_SQL.contains("timescaledb"));
    }
}

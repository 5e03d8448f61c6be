//! Every SQL statement the TDengine backend sends, built by pure functions.
//!
//! No TDengine server can run in CI, so these functions are what the unit tests pin
//! down exactly. Values reach SQL only as literals built here: strings are quoted with
//! [`string_literal`], numbers are formatted from typed Rust values, and table names
//! come from device UUIDs and key digests only, never from user text.
//!
//! # Schema
//! ```text
//! CREATE DATABASE IF NOT EXISTS `db` PRECISION 'ms' KEEP <days> ...
//! `db`.`ts_kv`   STABLE (ts TIMESTAMP, vtype TINYINT, bool_v BOOL, int_v BIGINT,
//!                        float_v DOUBLE, num_v DOUBLE, str_v NCHAR(n))
//!                TAGS (device_id BINARY(36), k NCHAR(m), tenant_id BINARY(36), profile_id BINARY(36))
//!   child table  t_<device uuid, 32 hex>_<sha256(key), first 32 hex>   (one per device and key)
//! `db`.`events`  STABLE (ts TIMESTAMP, message_id NCHAR(256), method NCHAR(256), params NCHAR(n))
//!                TAGS (device_id BINARY(36), tenant_id BINARY(36), profile_id BINARY(36))
//!   child table  e_<device uuid, 32 hex>                               (one per device)
//! ```
//!
//! A TDengine row is identified by its table and timestamp, and `DELETE` filters only
//! on the timestamp (and tags), so telemetry gets one child table per (device, key):
//! rewriting `(device, key, ts)` overwrites exactly one row (the contract's
//! idempotency), points of different keys at the same millisecond do not collide, and
//! `delete_range` for some keys is a timestamp-range `DELETE` on those keys' tables.
//! Table names carry the full device UUID (ThingsPanel's plugin used its first 8 hex
//! digits, so devices could share a table).
//!
//! `vtype` is [`Value::type_tag`]; exactly one of the typed columns is set. `num_v` is
//! the numeric view (`Value::as_f64`) used by `avg/min/max/sum`; aggregations filter
//! on `vtype <= 2` so strings and JSON never count even if an overwrite left a stale
//! `num_v` behind.

use sha2::{Digest, Sha256};
use tp_core::{Aggregation, DeviceEvent, DeviceId, Error, Order, Result, Timestamp, Value};

use super::TdengineOptions;

/// Name of the telemetry super table.
pub(crate) const TELEMETRY_STABLE: &str = "ts_kv";
/// Name of the events super table.
pub(crate) const EVENTS_STABLE: &str = "events";
/// Characters of `message_id` and `method` of an event.
pub(crate) const EVENT_NAME_CHARS: u32 = 256;
/// Upper bound of one statement's length. TDengine rejects SQL over 1 MiB; half of
/// that leaves room for the WebSocket framing.
pub(crate) const MAX_SQL_BYTES: usize = 512 * 1024;

/// Quotes a string as a TDengine string literal: `'...'` with `\`, `'`, `"` and line
/// breaks escaped. NUL cannot be stored and is rejected.
pub(crate) fn string_literal(s: &str) -> Result<String> {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => {
                return Err(Error::invalid(
                    "value",
                    "TDengine cannot store NUL characters in strings",
                ));
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    Ok(out)
}

/// A finite `f64` as a literal that parses back to the same bits (shortest
/// round-trip form, exponent for very large or small magnitudes).
pub(crate) fn float_literal(f: f64) -> Result<String> {
    if !f.is_finite() {
        return Err(Error::invalid(
            "value",
            format!("TDengine cannot store the non-finite float {f}"),
        ));
    }
    Ok(format!("{f:?}"))
}

/// `` `db`.`name` ``; both parts are validated identifiers or generated names.
fn qualified(db: &str, name: &str) -> String {
    format!("`{db}`.`{name}`")
}

/// The device UUID as a tag literal (hyphenated, like everywhere else in the platform).
fn device_literal(device: DeviceId) -> String {
    format!("'{}'", device.0.hyphenated())
}

/// Child table of one device's key: full device UUID plus 128 bits of the key's SHA-256.
pub(crate) fn telemetry_table(device: DeviceId, key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut name = format!("t_{}_", device.0.simple());
    for b in &digest[..16] {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

/// Child table of one device's events.
pub(crate) fn events_table(device: DeviceId) -> String {
    format!("e_{}", device.0.simple())
}

/// `CREATE DATABASE IF NOT EXISTS` with the options' retention and storage settings.
pub(crate) fn create_database(o: &TdengineOptions) -> String {
    let mut sql = format!(
        "CREATE DATABASE IF NOT EXISTS `{}` PRECISION 'ms' KEEP {} COMP {} CACHEMODEL '{}' WAL_LEVEL {} REPLICA {}",
        o.database,
        o.keep_days,
        o.compression,
        o.cache_model.as_str(),
        o.wal_level,
        o.replica
    );
    if let Some(d) = o.duration_days {
        sql.push_str(&format!(" DURATION {d}"));
    }
    if let Some(v) = o.vgroups {
        sql.push_str(&format!(" VGROUPS {v}"));
    }
    sql
}

/// The telemetry super table.
pub(crate) fn create_telemetry_stable(o: &TdengineOptions) -> String {
    format!(
        "CREATE STABLE IF NOT EXISTS {} (ts TIMESTAMP, vtype TINYINT, bool_v BOOL, int_v BIGINT, \
         float_v DOUBLE, num_v DOUBLE, str_v NCHAR({})) TAGS (device_id BINARY(36), k NCHAR({}), \
         tenant_id BINARY(36), profile_id BINARY(36))",
        qualified(&o.database, TELEMETRY_STABLE),
        o.max_string_chars,
        o.max_key_chars
    )
}

/// The events super table.
pub(crate) fn create_events_stable(o: &TdengineOptions) -> String {
    format!(
        "CREATE STABLE IF NOT EXISTS {} (ts TIMESTAMP, message_id NCHAR({EVENT_NAME_CHARS}), \
         method NCHAR({EVENT_NAME_CHARS}), params NCHAR({})) TAGS (device_id BINARY(36), \
         tenant_id BINARY(36), profile_id BINARY(36))",
        qualified(&o.database, EVENTS_STABLE),
        o.max_string_chars
    )
}

/// Checks a string against an `NCHAR(max)` column.
fn check_chars(field: &str, s: &str, max: u32) -> Result<()> {
    let n = s.chars().count();
    if n > max as usize {
        return Err(Error::invalid(
            field,
            format!("{n} characters exceed the TDengine column size {max}"),
        ));
    }
    Ok(())
}

/// `(ts, vtype, bool_v, int_v, float_v, num_v, str_v)` of one point.
pub(crate) fn value_row(ts: Timestamp, value: &Value, max_string_chars: u32) -> Result<String> {
    let tag = value.type_tag();
    let (b, i, f, s) = match value {
        Value::Bool(b) => (b.to_string(), "NULL".into(), "NULL".into(), "NULL".into()),
        Value::Integer(i) => ("NULL".into(), i.to_string(), "NULL".into(), "NULL".into()),
        Value::Float(f) => (
            "NULL".into(),
            "NULL".into(),
            float_literal(*f)?,
            "NULL".into(),
        ),
        Value::String(s) => {
            check_chars("value", s, max_string_chars)?;
            (
                "NULL".into(),
                "NULL".into(),
                "NULL".into(),
                string_literal(s)?,
            )
        }
        Value::Json(j) => {
            let s = j.to_string();
            check_chars("value", &s, max_string_chars)?;
            (
                "NULL".into(),
                "NULL".into(),
                "NULL".into(),
                string_literal(&s)?,
            )
        }
    };
    let num = match value.as_f64() {
        Some(n) => float_literal(n)?,
        None => "NULL".into(),
    };
    Ok(format!("({ts}, {tag}, {b}, {i}, {f}, {num}, {s})"))
}

/// One table's share of an `INSERT`: its `USING .. TAGS ..` clause and its rows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TableRows {
    /// `` `db`.`child` USING `db`.`stable` (tags) TAGS (values) ``.
    pub(crate) target: String,
    /// `(v, v, ...)` tuples.
    pub(crate) rows: Vec<String>,
}

/// Packs tables' rows into as few `INSERT INTO` statements as fit [`MAX_SQL_BYTES`]
/// (`max_bytes` in tests); a table spanning statements repeats its target clause.
pub(crate) fn pack_inserts(tables: &[TableRows], max_bytes: usize) -> Vec<String> {
    const HEAD: &str = "INSERT INTO";
    let mut statements = Vec::new();
    let mut sql = String::from(HEAD);
    let mut open_target: Option<&str> = None;
    for table in tables {
        for row in &table.rows {
            let needs_target = open_target != Some(table.target.as_str());
            let extra = row.len()
                + 1
                + if needs_target {
                    table.target.len() + 9
                } else {
                    0
                };
            if sql.len() > HEAD.len() && sql.len() + extra > max_bytes {
                statements.push(std::mem::replace(&mut sql, String::from(HEAD)));
                open_target = None;
            }
            if open_target != Some(table.target.as_str()) {
                sql.push(' ');
                sql.push_str(&table.target);
                sql.push_str(" VALUES");
                open_target = Some(&table.target);
            }
            sql.push(' ');
            sql.push_str(row);
        }
    }
    if sql.len() > HEAD.len() {
        statements.push(sql);
    }
    statements
}

/// The `USING` clause of a device key's child table.
pub(crate) fn telemetry_target(db: &str, device: DeviceId, key: &str) -> Result<String> {
    Ok(format!(
        "{} USING {} (device_id, k) TAGS ({}, {})",
        qualified(db, &telemetry_table(device, key)),
        qualified(db, TELEMETRY_STABLE),
        device_literal(device),
        string_literal(key)?
    ))
}

/// The `USING` clause of a device's events child table.
pub(crate) fn events_target(db: &str, device: DeviceId) -> String {
    format!(
        "{} USING {} (device_id) TAGS ({})",
        qualified(db, &events_table(device)),
        qualified(db, EVENTS_STABLE),
        device_literal(device)
    )
}

/// `(ts, message_id, method, params)` of one event.
pub(crate) fn event_row(event: &DeviceEvent, max_string_chars: u32) -> Result<String> {
    check_chars("message_id", &event.message_id, EVENT_NAME_CHARS)?;
    check_chars("method", &event.method, EVENT_NAME_CHARS)?;
    let params = event.params.to_string();
    check_chars("params", &params, max_string_chars)?;
    Ok(format!(
        "({}, {}, {}, {})",
        event.ts,
        string_literal(&event.message_id)?,
        string_literal(&event.method)?,
        string_literal(&params)?
    ))
}

/// ` AND k IN (..)` for a key filter (nothing for `None`).
fn key_filter(keys: Option<&[String]>) -> Result<String> {
    let Some(keys) = keys else {
        return Ok(String::new());
    };
    let list = keys
        .iter()
        .map(|k| string_literal(k))
        .collect::<Result<Vec<_>>>()?;
    Ok(format!(" AND k IN ({})", list.join(", ")))
}

/// Latest row per key of a device: `LAST_ROW` of every column, grouped by the key tag.
/// `keys` must not be empty when given (the caller answers an empty filter itself).
pub(crate) fn latest(db: &str, device: DeviceId, keys: Option<&[String]>) -> Result<String> {
    Ok(format!(
        "SELECT k, LAST_ROW(ts), LAST_ROW(vtype), LAST_ROW(bool_v), LAST_ROW(int_v), \
         LAST_ROW(float_v), LAST_ROW(str_v) FROM {} WHERE device_id = {}{} GROUP BY k",
        qualified(db, TELEMETRY_STABLE),
        device_literal(device),
        key_filter(keys)?
    ))
}

/// The keys a device has child tables for.
pub(crate) fn device_keys(db: &str, device: DeviceId) -> String {
    format!(
        "SELECT DISTINCT k FROM {} WHERE device_id = {}",
        qualified(db, TELEMETRY_STABLE),
        device_literal(device)
    )
}

fn order_sql(order: Order) -> &'static str {
    match order {
        Order::Asc => "ASC",
        Order::Desc => "DESC",
    }
}

fn limit_sql(limit: Option<u64>) -> String {
    limit.map_or_else(String::new, |n| format!(" LIMIT {n}"))
}

/// Raw history of one key in `[start, end)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn history(
    db: &str,
    device: DeviceId,
    key: &str,
    start: Timestamp,
    end: Timestamp,
    order: Order,
    limit: Option<u64>,
) -> String {
    format!(
        "SELECT ts, vtype, bool_v, int_v, float_v, str_v FROM {} WHERE ts >= {start} AND ts < {end} \
         ORDER BY ts {}{}",
        qualified(db, &telemetry_table(device, key)),
        order_sql(order),
        limit_sql(limit)
    )
}

/// The window offset that aligns `INTERVAL(interval)` windows to `start`, so window
/// starts are exactly `start + k*interval`.
pub(crate) fn window_offset(start: Timestamp, interval: i64) -> i64 {
    start.rem_euclid(interval)
}

/// Aggregates of one key over `INTERVAL` windows aligned to `start`. Numeric
/// functions read `num_v` of numeric rows only, so windows without numeric values do
/// not appear; `count` counts every row.
#[allow(clippy::too_many_arguments)]
pub(crate) fn aggregate(
    db: &str,
    device: DeviceId,
    key: &str,
    start: Timestamp,
    end: Timestamp,
    agg: Aggregation,
    interval: i64,
    order: Order,
    limit: Option<u64>,
) -> String {
    let (func, filter) = match agg {
        Aggregation::Avg => ("AVG(num_v)", " AND vtype <= 2"),
        Aggregation::Min => ("MIN(num_v)", " AND vtype <= 2"),
        Aggregation::Max => ("MAX(num_v)", " AND vtype <= 2"),
        Aggregation::Sum => ("SUM(num_v)", " AND vtype <= 2"),
        Aggregation::Count => ("COUNT(*)", ""),
    };
    let offset = window_offset(start, interval);
    let window = if offset == 0 {
        format!("INTERVAL({interval}a)")
    } else {
        format!("INTERVAL({interval}a, {offset}a)")
    };
    format!(
        "SELECT _wstart, {func} FROM {} WHERE ts >= {start} AND ts < {end}{filter} {window} \
         ORDER BY _wstart {}{}",
        qualified(db, &telemetry_table(device, key)),
        order_sql(order),
        limit_sql(limit)
    )
}

/// Rows of one key in `[start, end)` (what a `DELETE` of the range removes).
pub(crate) fn count_range(
    db: &str,
    device: DeviceId,
    key: &str,
    start: Timestamp,
    end: Timestamp,
) -> String {
    format!(
        "SELECT COUNT(*) FROM {} WHERE ts >= {start} AND ts < {end}",
        qualified(db, &telemetry_table(device, key))
    )
}

/// Deletes one key's rows in `[start, end)`.
pub(crate) fn delete_range(
    db: &str,
    device: DeviceId,
    key: &str,
    start: Timestamp,
    end: Timestamp,
) -> String {
    format!(
        "DELETE FROM {} WHERE ts >= {start} AND ts < {end}",
        qualified(db, &telemetry_table(device, key))
    )
}

/// A device's events in `[start, end)`.
pub(crate) fn query_events(
    db: &str,
    device: DeviceId,
    start: Timestamp,
    end: Timestamp,
    limit: u64,
    order: Order,
) -> String {
    format!(
        "SELECT ts, message_id, method, params FROM {} WHERE device_id = {} AND ts >= {start} \
         AND ts < {end} ORDER BY ts {} LIMIT {limit}",
        qualified(db, EVENTS_STABLE),
        device_literal(device),
        order_sql(order)
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn dev() -> DeviceId {
        "0b5e2c1a-9f3d-4e7b-8a6c-1d2e3f405162".parse().unwrap()
    }

    const DEV_HEX: &str = "0b5e2c1a9f3d4e7b8a6c1d2e3f405162";
    const DEV_TAG: &str = "'0b5e2c1a-9f3d-4e7b-8a6c-1d2e3f405162'";

    #[test]
    fn string_literals_escape_quotes_backslashes_and_breaks() {
        assert_eq!(string_literal("plain").unwrap(), "'plain'");
        assert_eq!(string_literal("").unwrap(), "''");
        assert_eq!(
            string_literal(r#"it's a "q" \ done"#).unwrap(),
            r#"'it\'s a \"q\" \\ done'"#
        );
        assert_eq!(string_literal("a\nb\rc\td").unwrap(), r"'a\nb\rc\td'");
        // An injection attempt stays inside the literal.
        assert_eq!(
            string_literal("x'); DROP DATABASE thingspanel; --").unwrap(),
            r"'x\'); DROP DATABASE thingspanel; --'"
        );
        assert_eq!(string_literal("héllo ✓").unwrap(), "'héllo ✓'");
        assert!(matches!(string_literal("a\0b"), Err(Error::Invalid { .. })));
    }

    #[test]
    fn float_literals_round_trip() {
        for f in [
            0.1,
            3.0,
            -1.5e300,
            1e-7,
            f64::MIN_POSITIVE,
            -0.0,
            123456.789,
        ] {
            let lit = float_literal(f).unwrap();
            assert_eq!(lit.parse::<f64>().unwrap().to_bits(), f.to_bits(), "{lit}");
        }
        assert_eq!(float_literal(3.0).unwrap(), "3.0");
        assert_eq!(float_literal(-1.5e300).unwrap(), "-1.5e300");
        assert!(float_literal(f64::NAN).is_err());
        assert!(float_literal(f64::INFINITY).is_err());
    }

    #[test]
    fn table_names_use_the_full_uuid_and_a_key_digest() {
        let t = telemetry_table(dev(), "temperature");
        assert_eq!(t.len(), 2 + 32 + 1 + 32);
        assert!(t.starts_with(&format!("t_{DEV_HEX}_")));
        assert!(t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        // sha256("temperature") begins with these 16 bytes.
        let digest = Sha256::digest(b"temperature");
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(t, format!("t_{DEV_HEX}_{hex}"));
        assert_ne!(t, telemetry_table(dev(), "temperaturE"));
        // Devices sharing the first UUID segment get different tables.
        let sibling: DeviceId = "0b5e2c1a-0000-4000-8000-000000000000".parse().unwrap();
        assert_ne!(
            telemetry_table(sibling, "temperature"),
            telemetry_table(dev(), "temperature")
        );
        // Hostile keys never reach the name.
        let evil = telemetry_table(dev(), "`; DROP TABLE x");
        assert!(evil.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        assert_eq!(events_table(dev()), format!("e_{DEV_HEX}"));
    }

    #[test]
    fn ddl() {
        let o = TdengineOptions::default();
        assert_eq!(
            create_database(&o),
            "CREATE DATABASE IF NOT EXISTS `thingspanel` PRECISION 'ms' KEEP 3650 COMP 2 \
             CACHEMODEL 'last_row' WAL_LEVEL 1 REPLICA 1"
        );
        let o2 = TdengineOptions {
            database: "tp_test".into(),
            keep_days: 30,
            duration_days: Some(5),
            vgroups: Some(4),
            compression: 1,
            replica: 3,
            wal_level: 2,
            cache_model: super::super::CacheModel::Both,
            ..TdengineOptions::default()
        };
        assert_eq!(
            create_database(&o2),
            "CREATE DATABASE IF NOT EXISTS `tp_test` PRECISION 'ms' KEEP 30 COMP 1 \
             CACHEMODEL 'both' WAL_LEVEL 2 REPLICA 3 DURATION 5 VGROUPS 4"
        );
        assert_eq!(
            create_telemetry_stable(&o),
            "CREATE STABLE IF NOT EXISTS `thingspanel`.`ts_kv` (ts TIMESTAMP, vtype TINYINT, \
             bool_v BOOL, int_v BIGINT, float_v DOUBLE, num_v DOUBLE, str_v NCHAR(4096)) \
             TAGS (device_id BINARY(36), k NCHAR(256), tenant_id BINARY(36), profile_id BINARY(36))"
        );
        assert_eq!(
            create_events_stable(&o),
            "CREATE STABLE IF NOT EXISTS `thingspanel`.`events` (ts TIMESTAMP, \
             message_id NCHAR(256), method NCHAR(256), params NCHAR(4096)) \
             TAGS (device_id BINARY(36), tenant_id BINARY(36), profile_id BINARY(36))"
        );
    }

    #[test]
    fn value_rows_set_one_typed_column_and_the_numeric_view() {
        let row = |v: Value| value_row(1_700_000_000_000, &v, 4096).unwrap();
        assert_eq!(
            row(Value::Bool(true)),
            "(1700000000000, 0, true, NULL, NULL, 1.0, NULL)"
        );
        assert_eq!(
            row(Value::Integer(i64::MIN)),
            "(1700000000000, 1, NULL, -9223372036854775808, NULL, -9.223372036854776e18, NULL)"
        );
        assert_eq!(
            row(Value::Float(0.1)),
            "(1700000000000, 2, NULL, NULL, 0.1, 0.1, NULL)"
        );
        assert_eq!(
            row(Value::String("42".into())),
            "(1700000000000, 3, NULL, NULL, NULL, NULL, '42')"
        );
        assert_eq!(
            row(Value::Json(json!({"a": "b'c"}))),
            r#"(1700000000000, 4, NULL, NULL, NULL, NULL, '{\"a\":\"b\'c\"}')"#
        );
        assert!(value_row(0, &Value::String("x".repeat(5)), 4).is_err());
        assert!(value_row(0, &Value::Float(f64::NAN), 4).is_err());
    }

    #[test]
    fn inserts_auto_create_child_tables_and_split_by_size() {
        let target = telemetry_target("db", dev(), "it's").unwrap();
        let table = telemetry_table(dev(), "it's");
        assert_eq!(
            target,
            format!("`db`.`{table}` USING `db`.`ts_kv` (device_id, k) TAGS ({DEV_TAG}, 'it\\'s')")
        );
        let tables = vec![
            TableRows {
                target: "A".into(),
                rows: vec!["(1)".into(), "(2)".into()],
            },
            TableRows {
                target: "B".into(),
                rows: vec!["(3)".into()],
            },
        ];
        assert_eq!(
            pack_inserts(&tables, MAX_SQL_BYTES),
            vec!["INSERT INTO A VALUES (1) (2) B VALUES (3)".to_owned()]
        );
        // A small limit splits between rows and repeats the target clause.
        assert_eq!(
            pack_inserts(&tables, 30),
            vec![
                "INSERT INTO A VALUES (1) (2)".to_owned(),
                "INSERT INTO B VALUES (3)".to_owned()
            ]
        );
        assert_eq!(
            pack_inserts(&tables, 1),
            vec![
                "INSERT INTO A VALUES (1)".to_owned(),
                "INSERT INTO A VALUES (2)".to_owned(),
                "INSERT INTO B VALUES (3)".to_owned()
            ]
        );
        assert!(pack_inserts(&[], MAX_SQL_BYTES).is_empty());
        // Every statement of a big batch stays under the limit.
        let big = vec![TableRows {
            target: "T".into(),
            rows: (0..10_000)
                .map(|i| format!("({i}, 'xxxxxxxxxx')"))
                .collect(),
        }];
        let statements = pack_inserts(&big, 4096);
        assert!(statements.len() > 1);
        assert!(statements.iter().all(|s| s.len() <= 4096));
        let rows: usize = statements.iter().map(|s| s.matches("'x").count()).sum();
        assert_eq!(rows, 10_000);
    }

    #[test]
    fn events() {
        assert_eq!(
            events_target("db", dev()),
            format!("`db`.`e_{DEV_HEX}` USING `db`.`events` (device_id) TAGS ({DEV_TAG})")
        );
        let e = DeviceEvent {
            device_id: dev(),
            ts: 5,
            message_id: "m'1".into(),
            method: "alarm".into(),
            params: json!({"t": "hot"}),
        };
        assert_eq!(
            event_row(&e, 4096).unwrap(),
            r#"(5, 'm\'1', 'alarm', '{\"t\":\"hot\"}')"#
        );
        assert_eq!(
            query_events("db", dev(), 10, 20, 5, Order::Desc),
            format!(
                "SELECT ts, message_id, method, params FROM `db`.`events` WHERE device_id = \
                 {DEV_TAG} AND ts >= 10 AND ts < 20 ORDER BY ts DESC LIMIT 5"
            )
        );
    }

    #[test]
    fn reads() {
        assert_eq!(
            latest("db", dev(), None).unwrap(),
            format!(
                "SELECT k, LAST_ROW(ts), LAST_ROW(vtype), LAST_ROW(bool_v), LAST_ROW(int_v), \
                 LAST_ROW(float_v), LAST_ROW(str_v) FROM `db`.`ts_kv` WHERE device_id = \
                 {DEV_TAG} GROUP BY k"
            )
        );
        let keys = vec!["a".to_owned(), "b'".to_owned()];
        assert!(
            latest("db", dev(), Some(&keys))
                .unwrap()
                .ends_with(&format!(
                    "device_id = {DEV_TAG} AND k IN ('a', 'b\\'') GROUP BY k"
                ))
        );
        assert_eq!(
            device_keys("db", dev()),
            format!("SELECT DISTINCT k FROM `db`.`ts_kv` WHERE device_id = {DEV_TAG}")
        );
        let t = telemetry_table(dev(), "x");
        assert_eq!(
            history("db", dev(), "x", 100, 200, Order::Desc, Some(3)),
            format!(
                "SELECT ts, vtype, bool_v, int_v, float_v, str_v FROM `db`.`{t}` \
                 WHERE ts >= 100 AND ts < 200 ORDER BY ts DESC LIMIT 3"
            )
        );
        assert_eq!(
            history("db", dev(), "x", 100, 200, Order::Asc, None),
            format!(
                "SELECT ts, vtype, bool_v, int_v, float_v, str_v FROM `db`.`{t}` \
                 WHERE ts >= 100 AND ts < 200 ORDER BY ts ASC"
            )
        );
    }

    #[test]
    fn aggregation_windows_align_to_the_query_start() {
        let t = telemetry_table(dev(), "x");
        let s = 1_700_000_000_037;
        assert_eq!(window_offset(s, 100), 37);
        assert_eq!(window_offset(-30, 100), 70);
        assert_eq!(window_offset(1000, 100), 0);
        assert_eq!(
            aggregate(
                "db",
                dev(),
                "x",
                s,
                s + 400,
                Aggregation::Avg,
                100,
                Order::Asc,
                None
            ),
            format!(
                "SELECT _wstart, AVG(num_v) FROM `db`.`{t}` WHERE ts >= {s} AND ts < {} \
                 AND vtype <= 2 INTERVAL(100a, 37a) ORDER BY _wstart ASC",
                s + 400
            )
        );
        assert_eq!(
            aggregate(
                "db",
                dev(),
                "x",
                0,
                1000,
                Aggregation::Count,
                500,
                Order::Desc,
                Some(2)
            ),
            format!(
                "SELECT _wstart, COUNT(*) FROM `db`.`{t}` WHERE ts >= 0 AND ts < 1000 \
                 INTERVAL(500a) ORDER BY _wstart DESC LIMIT 2"
            )
        );
        for (agg, f) in [
            (Aggregation::Min, "MIN(num_v)"),
            (Aggregation::Max, "MAX(num_v)"),
            (Aggregation::Sum, "SUM(num_v)"),
        ] {
            assert!(
                aggregate("db", dev(), "x", 0, 1, agg, 1, Order::Asc, None)
                    .starts_with(&format!("SELECT _wstart, {f} FROM"))
            );
        }
    }

    #[test]
    fn deletes_count_then_delete_per_key_table() {
        let t = telemetry_table(dev(), "x");
        assert_eq!(
            count_range("db", dev(), "x", 1, 2),
            format!("SELECT COUNT(*) FROM `db`.`{t}` WHERE ts >= 1 AND ts < 2")
        );
        assert_eq!(
            delete_range("db", dev(), "x", 1, 2),
            format!("DELETE FROM `db`.`{t}` WHERE ts >= 1 AND ts < 2")
        );
    }
}

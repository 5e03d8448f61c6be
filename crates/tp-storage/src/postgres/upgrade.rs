//! Converts history stored in the `(device_id, key, ts)` layout of earlier releases to
//! the series-keyed layout (`ts_series` + `ts_kv (series, ts)`, migration
//! `1003_ts_series`). Runs on connect, in the transaction that holds the schema's DDL
//! lock, so concurrent nodes wait for one conversion and then see its result.

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Executor};
use tp_core::Result;

use super::error::db;
use super::timescale::{self, TimescaleSettings};
use super::timeseries::{
    PARTITIONS_SQL, PgTsOptions, TsLayout, create_partition_sql, create_partitioned_sql,
    partition_index,
};

/// Whether the schema's `ts_kv` still has the earlier layout.
const OLD_LAYOUT_SQL: &str = "SELECT EXISTS (SELECT 1 FROM pg_attribute \
     WHERE attrelid = to_regclass('ts_kv') AND attname = 'device_id' AND NOT attisdropped)";

/// Converts `ts_kv` when it has the earlier layout (and logs how many rows moved).
///
/// The old table is renamed away (with its partitions), every `(device_id, key)` it
/// holds becomes a `ts_series` row, the new table is created in the same layout
/// (partitions of the same ranges; a hypertable with the same chunk width), the rows
/// are copied in `(series, ts)` order and the old table is dropped. All of it is one
/// transaction: a failure leaves the schema as it was.
pub(super) async fn to_series_key(
    conn: &mut PgConnection,
    layout: TsLayout,
    ext_schema: Option<&str>,
    options: &PgTsOptions,
) -> Result<()> {
    let old: bool = sqlx::query_scalar(OLD_LAYOUT_SQL)
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?;
    if !old {
        return Ok(());
    }
    let estimate: f32 = sqlx::query_scalar(
        "SELECT coalesce(sum(c.reltuples) FILTER (WHERE c.reltuples > 0), 0)::real \
         FROM pg_class c WHERE c.oid = 'ts_kv'::regclass OR c.oid IN \
         (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'ts_kv'::regclass)",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db)?;
    tracing::info!(
        rows_estimate = estimate,
        "converting history to the series-keyed layout; other nodes on this schema wait"
    );
    let mut ddl: Vec<String> = vec![
        "ALTER TABLE ts_kv RENAME TO ts_kv_v1".into(),
        "ALTER INDEX IF EXISTS ts_kv_pkey RENAME TO ts_kv_v1_pkey".into(),
    ];
    let mut partitions = Vec::new();
    if let TsLayout::Partitioned { .. } = layout {
        let names: Vec<String> = sqlx::query_scalar(PARTITIONS_SQL)
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
        for name in names {
            // Partitions the store did not create keep their names; they go with
            // the old table.
            let Some(k) = partition_index(&name) else {
                continue;
            };
            let suffix = &name["ts_kv_".len()..];
            // The new partition of the same range takes the old names.
            ddl.push(format!("ALTER TABLE {name} RENAME TO ts_kv_v1_{suffix}"));
            ddl.push(format!(
                "ALTER INDEX IF EXISTS {name}_pkey RENAME TO ts_kv_v1_{suffix}_pkey"
            ));
            partitions.push(k);
        }
    }
    ddl.push(
        "INSERT INTO ts_series (device_id, key) SELECT DISTINCT device_id, key FROM ts_kv_v1 \
         ORDER BY device_id, key ON CONFLICT (device_id, key) DO NOTHING"
            .into(),
    );
    match layout {
        TsLayout::Partitioned { partition_ms } => {
            ddl.push(create_partitioned_sql());
            partitions.sort_unstable();
            ddl.extend(
                partitions
                    .iter()
                    .map(|k| create_partition_sql(*k, partition_ms)),
            );
        }
        TsLayout::Timescale { chunk_ms } => {
            let settings = TimescaleSettings {
                chunk_ms,
                compress_after_ms: options.compress_after_ms,
                retention_ms: options.retention_ms,
            };
            ddl.extend(timescale::setup_sql(
                ext_schema.unwrap_or("public"),
                &settings,
            ));
        }
    }
    for sql in ddl {
        conn.execute(AssertSqlSafe(sql)).await.map_err(db)?;
    }
    let moved = sqlx::query(
        "INSERT INTO ts_kv (series, ts, vtype, v_int, v_real, v_text) \
         SELECT s.id, o.ts, o.vtype, o.v_int, o.v_real, o.v_text FROM ts_kv_v1 AS o \
         JOIN ts_series AS s ON s.device_id = o.device_id AND s.key = o.key \
         ORDER BY s.id, o.ts",
    )
    .execute(&mut *conn)
    .await
    .map_err(db)?
    .rows_affected();
    // A hypertable takes its chunks and policies with it.
    sqlx::query("DROP TABLE ts_kv_v1")
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    tracing::info!(rows = moved, "history converted to the series-keyed layout");
    Ok(())
}

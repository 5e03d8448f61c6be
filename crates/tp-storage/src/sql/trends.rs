//! [`TrendStore`] of the SQL store: the home page's aggregates as indexed
//! `GROUP BY` queries (indexes `device_status_history_by_tenant`,
//! `alarms_by_tenant`, `alarms_cleared_by_tenant`).

use async_trait::async_trait;
use tp_core::trends::{AlarmBucket, TrendStore};
use tp_core::{Result, TenantId, Timestamp};

use super::{Dialect, SqlRow, SqlStore, Stmt};

#[async_trait]
impl<D: Dialect> TrendStore for SqlStore<D> {
    async fn online_now(&self, tenant: TenantId) -> Result<u64> {
        self.count(
            Stmt::new("SELECT COUNT(*) AS n FROM devices WHERE tenant_id = $1 AND online = $2")
                .bind(tenant)
                .bind(true),
        )
        .await
    }

    async fn online_changes(
        &self,
        tenant: TenantId,
        since: Timestamp,
        bucket_ms: i64,
    ) -> Result<Vec<(i64, i64)>> {
        // Integer division on both databases (bigint / bigint, INTEGER / INTEGER).
        let stmt = Stmt::new(
            "SELECT (at - $2) / $3 AS bucket, \
             SUM(CASE WHEN online = $4 THEN 1 ELSE -1 END) AS delta \
             FROM device_status_history WHERE tenant_id = $1 AND at >= $2 \
             GROUP BY (at - $2) / $3 ORDER BY bucket",
        )
        .bind(tenant)
        .bind(since)
        .bind(bucket_ms.max(1))
        .bind(true);
        self.all(stmt, |r| Ok((r.int("bucket")?, r.int("delta")?)))
            .await
    }

    async fn alarm_buckets(
        &self,
        tenant: TenantId,
        since: Timestamp,
        bucket_ms: i64,
    ) -> Result<Vec<AlarmBucket>> {
        let bucket_ms = bucket_ms.max(1);
        let raised = self
            .alarms_by_bucket(
                "SELECT (created_at - $2) / $3 AS bucket, COUNT(*) AS n FROM alarms \
                 WHERE tenant_id = $1 AND created_at >= $2 \
                 GROUP BY (created_at - $2) / $3",
                tenant,
                since,
                bucket_ms,
            )
            .await?;
        let cleared = self
            .alarms_by_bucket(
                "SELECT (cleared_at - $2) / $3 AS bucket, COUNT(*) AS n FROM alarms \
                 WHERE tenant_id = $1 AND cleared_at >= $2 \
                 GROUP BY (cleared_at - $2) / $3",
                tenant,
                since,
                bucket_ms,
            )
            .await?;
        let mut out: std::collections::BTreeMap<i64, AlarmBucket> = Default::default();
        for (bucket, n) in raised {
            out.entry(bucket)
                .or_insert(AlarmBucket {
                    bucket,
                    ..Default::default()
                })
                .raised = n.unsigned_abs();
        }
        for (bucket, n) in cleared {
            out.entry(bucket)
                .or_insert(AlarmBucket {
                    bucket,
                    ..Default::default()
                })
                .cleared = n.unsigned_abs();
        }
        Ok(out.into_values().collect())
    }
}

impl<D: Dialect> SqlStore<D> {
    /// `(bucket, count)` rows of an alarm query binding tenant, since and bucket length
    /// (`$1`..`$3`): the raised and the cleared counts per bucket.
    async fn alarms_by_bucket(
        &self,
        sql: &'static str,
        tenant: TenantId,
        since: Timestamp,
        bucket_ms: i64,
    ) -> Result<Vec<(i64, i64)>> {
        self.all(
            Stmt::new(sql).bind(tenant).bind(since).bind(bucket_ms),
            |r| Ok((r.int("bucket")?, r.int("n")?)),
        )
        .await
    }
}

//! [`RuleStore`] for [`PostgresMetadataStore`]: the same schema and pool as the
//! metadata store (tables of migration `0004_rules`).
//!
//! Every tenant-scoped statement filters by `tenant_id` in SQL. The one-open-alarm rule
//! is a partial unique index (`alarms_one_open`), so it holds across nodes; rule state
//! refers to its rule with a cascading foreign key. Trigger groups, actions, channel
//! settings, alarm details and engine state are jsonb in tp-core's serde shapes, bound
//! as text (`$n::jsonb`) and read back as text (`col::text`).

use async_trait::async_trait;
use sqlx::Row;
use sqlx::error::ErrorKind;
use sqlx::postgres::PgRow;
use tp_core::rules::*;
use tp_core::{DeviceId, Error, Page, Paged, Result, TenantId, UserId};

use uuid::Uuid;

use super::PostgresMetadataStore;
use super::error::{self, PgError, conflict, db};
use super::meta::{RowResult, decode_all, decode_opt, paging};
use crate::rules_common::{
    alarm_counts, event_kind_str, notification_status_str, parse_event_kind,
    parse_notification_status, status_filter,
};

/// Parses a JSON text column into a serde type.
fn json_typed<T: serde::de::DeserializeOwned>(row: &PgRow, col: &'static str) -> RowResult<T> {
    let s: String = row.try_get(col)?;
    serde_json::from_str(&s).map_err(|e| PgError::decode(col, e))
}

/// JSON text of a serde value (the model types always serialize).
fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::invalid("json", e.to_string()))
}

fn u32_col(row: &PgRow, col: &'static str) -> RowResult<u32> {
    let v: i64 = row.try_get(col)?;
    u32::try_from(v).map_err(|e| PgError::decode(col, e))
}

fn rule_from_row(row: &PgRow) -> RowResult<Rule> {
    Ok(Rule {
        id: RuleId(row.try_get("id")?),
        tenant_id: TenantId(row.try_get("tenant_id")?),
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        enabled: row.try_get("enabled")?,
        trigger_groups: json_typed(row, "trigger_groups")?,
        actions: json_typed(row, "actions")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn scene_from_row(row: &PgRow) -> RowResult<Scene> {
    Ok(Scene {
        id: SceneId(row.try_get("id")?),
        tenant_id: TenantId(row.try_get("tenant_id")?),
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        actions: json_typed(row, "actions")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn alarm_from_row(row: &PgRow) -> RowResult<Alarm> {
    let severity: String = row.try_get("severity")?;
    let status: String = row.try_get("status")?;
    Ok(Alarm {
        id: AlarmId(row.try_get("id")?),
        tenant_id: TenantId(row.try_get("tenant_id")?),
        rule_id: row.try_get::<Option<Uuid>, _>("rule_id")?.map(RuleId),
        device_id: row.try_get::<Option<Uuid>, _>("device_id")?.map(DeviceId),
        severity: AlarmSeverity::parse(&severity).map_err(|e| PgError::decode("severity", e))?,
        status: AlarmStatus::parse(&status).map_err(|e| PgError::decode("status", e))?,
        title: row.try_get("title")?,
        description: row.try_get("description")?,
        occurrences: u32_col(row, "occurrences")?,
        details: json_typed(row, "details")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        acknowledged_at: row.try_get("acknowledged_at")?,
        acknowledged_by: row
            .try_get::<Option<Uuid>, _>("acknowledged_by")?
            .map(UserId),
        cleared_at: row.try_get("cleared_at")?,
    })
}

fn event_from_row(row: &PgRow) -> RowResult<AlarmEvent> {
    let kind: String = row.try_get("kind")?;
    Ok(AlarmEvent {
        alarm_id: AlarmId(row.try_get("alarm_id")?),
        tenant_id: TenantId(row.try_get("tenant_id")?),
        ts: row.try_get("ts")?,
        kind: parse_event_kind(&kind).map_err(|e| PgError::decode("kind", e))?,
        user_id: row.try_get::<Option<Uuid>, _>("user_id")?.map(UserId),
        text: row.try_get("text")?,
    })
}

fn channel_from_row(row: &PgRow) -> RowResult<NotificationChannel> {
    Ok(NotificationChannel {
        id: ChannelId(row.try_get("id")?),
        tenant_id: TenantId(row.try_get("tenant_id")?),
        name: row.try_get("name")?,
        enabled: row.try_get("enabled")?,
        kind: json_typed(row, "kind")?,
        created_at: row.try_get("created_at")?,
    })
}

fn notification_from_row(row: &PgRow) -> RowResult<NotificationRecord> {
    let status: String = row.try_get("status")?;
    Ok(NotificationRecord {
        id: NotificationId(row.try_get("id")?),
        tenant_id: TenantId(row.try_get("tenant_id")?),
        channel_id: ChannelId(row.try_get("channel_id")?),
        alarm_id: row.try_get::<Option<Uuid>, _>("alarm_id")?.map(AlarmId),
        rule_id: row.try_get::<Option<Uuid>, _>("rule_id")?.map(RuleId),
        subject: row.try_get("subject")?,
        body: row.try_get("body")?,
        status: parse_notification_status(&status).map_err(|e| PgError::decode("status", e))?,
        attempts: u32_col(row, "attempts")?,
        detail: row.try_get("detail")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn state_from_row(row: &PgRow) -> RowResult<RuleState> {
    Ok(RuleState {
        rule_id: RuleId(row.try_get("rule_id")?),
        scope: row.try_get("scope")?,
        state: json_typed(row, "state")?,
        updated_at: row.try_get("updated_at")?,
    })
}

macro_rules! rule_cols {
    () => {
        "id, tenant_id, name, description, enabled, trigger_groups, actions, created_at, \
         updated_at"
    };
}

macro_rules! rule_select {
    () => {
        "id, tenant_id, name, description, enabled, trigger_groups::text AS trigger_groups, \
         actions::text AS actions, created_at, updated_at"
    };
}

macro_rules! scene_cols {
    () => {
        "id, tenant_id, name, description, actions, created_at, updated_at"
    };
}

macro_rules! scene_select {
    () => {
        "id, tenant_id, name, description, actions::text AS actions, created_at, updated_at"
    };
}

macro_rules! alarm_cols {
    () => {
        "id, tenant_id, rule_id, device_id, severity, status, title, description, occurrences, \
         details, created_at, updated_at, acknowledged_at, acknowledged_by, cleared_at"
    };
}

macro_rules! alarm_select {
    () => {
        "id, tenant_id, rule_id, device_id, severity, status, title, description, occurrences, \
         details::text AS details, created_at, updated_at, acknowledged_at, acknowledged_by, \
         cleared_at"
    };
}

macro_rules! channel_cols {
    () => {
        "id, tenant_id, name, enabled, kind, created_at"
    };
}

macro_rules! channel_select {
    () => {
        "id, tenant_id, name, enabled, kind::text AS kind, created_at"
    };
}

macro_rules! notification_cols {
    () => {
        "id, tenant_id, channel_id, alarm_id, rule_id, subject, body, status, attempts, detail, \
         created_at, updated_at"
    };
}

/// The conflicting value of a unique violation on a table with `(tenant_id, name)`:
/// the name when the message names the `name` column, else the id.
fn name_or_id<'a>(
    table: &'static str,
    name: &'a str,
    id: String,
) -> impl FnOnce(&str) -> String + 'a {
    move |msg| {
        // Constraints are named `<table>_tenant_name_key` and `<table>_pkey`.
        if msg == format!("{table}_tenant_name_key") {
            name.to_owned()
        } else {
            id
        }
    }
}

fn not_found_if_none(rows: u64, entity: &'static str, id: impl ToString) -> Result<()> {
    if rows == 0 {
        Err(Error::not_found(entity, id))
    } else {
        Ok(())
    }
}

#[async_trait]
impl RuleStore for PostgresMetadataStore {
    fn backend(&self) -> &'static str {
        error::BACKEND
    }

    async fn create_rule(&self, rule: &Rule) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO rules (",
            rule_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9)"
        ))
        .bind(rule.id.0)
        .bind(rule.tenant_id.0)
        .bind(&rule.name)
        .bind(&rule.description)
        .bind(rule.enabled)
        .bind(to_json(&rule.trigger_groups)?)
        .bind(to_json(&rule.actions)?)
        .bind(rule.created_at)
        .bind(rule.updated_at)
        .execute(self.pool())
        .await
        .map_err(|e| {
            conflict(
                e,
                "rule",
                name_or_id("rules", &rule.name, rule.id.to_string()),
            )
        })?;
        Ok(())
    }

    async fn get_rule(&self, tenant: TenantId, id: RuleId) -> Result<Option<Rule>> {
        self.get_scoped(
            concat!(
                "SELECT ",
                rule_select!(),
                " FROM rules WHERE id = $1 AND tenant_id = $2"
            ),
            id.0,
            tenant,
            rule_from_row,
        )
        .await
    }

    async fn list_rules(&self, tenant: TenantId, page: Page) -> Result<Paged<Rule>> {
        self.page_scoped(
            concat!(
                "SELECT ",
                rule_select!(),
                " FROM rules WHERE tenant_id = $1 ORDER BY name, id LIMIT $2 OFFSET $3"
            ),
            "SELECT COUNT(*) FROM rules WHERE tenant_id = $1",
            tenant,
            page,
            rule_from_row,
        )
        .await
    }

    async fn list_enabled_rules(&self) -> Result<Vec<Rule>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            rule_select!(),
            " FROM rules WHERE enabled ORDER BY tenant_id, name, id"
        ))
        .fetch_all(self.pool())
        .await
        .map_err(db)?;
        decode_all(&rows, rule_from_row)
    }

    async fn update_rule(&self, rule: &Rule) -> Result<()> {
        let done = sqlx::query(
            "UPDATE rules SET name = $1, description = $2, enabled = $3, trigger_groups = $4::jsonb, \
             actions = $5::jsonb, updated_at = $6 WHERE id = $7 AND tenant_id = $8",
        )
        .bind(&rule.name)
        .bind(&rule.description)
        .bind(rule.enabled)
        .bind(to_json(&rule.trigger_groups)?)
        .bind(to_json(&rule.actions)?)
        .bind(rule.updated_at)
        .bind(rule.id.0)
        .bind(rule.tenant_id.0)
        .execute(self.pool())
        .await
        .map_err(|e| {
            conflict(
                e,
                "rule",
                name_or_id("rules", &rule.name, rule.id.to_string()),
            )
        })?;
        not_found_if_none(done.rows_affected(), "rule", rule.id)
    }

    async fn delete_rule(&self, tenant: TenantId, id: RuleId) -> Result<()> {
        // rule_states rows go by ON DELETE CASCADE.
        let done = sqlx::query("DELETE FROM rules WHERE id = $1 AND tenant_id = $2")
            .bind(id.0)
            .bind(tenant.0)
            .execute(self.pool())
            .await
            .map_err(db)?;
        not_found_if_none(done.rows_affected(), "rule", id)
    }

    async fn create_scene(&self, scene: &Scene) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO scenes (",
            scene_cols!(),
            ") VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)"
        ))
        .bind(scene.id.0)
        .bind(scene.tenant_id.0)
        .bind(&scene.name)
        .bind(&scene.description)
        .bind(to_json(&scene.actions)?)
        .bind(scene.created_at)
        .bind(scene.updated_at)
        .execute(self.pool())
        .await
        .map_err(|e| {
            conflict(
                e,
                "scene",
                name_or_id("scenes", &scene.name, scene.id.to_string()),
            )
        })?;
        Ok(())
    }

    async fn get_scene(&self, tenant: TenantId, id: SceneId) -> Result<Option<Scene>> {
        self.get_scoped(
            concat!(
                "SELECT ",
                scene_select!(),
                " FROM scenes WHERE id = $1 AND tenant_id = $2"
            ),
            id.0,
            tenant,
            scene_from_row,
        )
        .await
    }

    async fn list_scenes(&self, tenant: TenantId, page: Page) -> Result<Paged<Scene>> {
        self.page_scoped(
            concat!(
                "SELECT ",
                scene_select!(),
                " FROM scenes WHERE tenant_id = $1 ORDER BY name, id LIMIT $2 OFFSET $3"
            ),
            "SELECT COUNT(*) FROM scenes WHERE tenant_id = $1",
            tenant,
            page,
            scene_from_row,
        )
        .await
    }

    async fn update_scene(&self, scene: &Scene) -> Result<()> {
        let done = sqlx::query(
            "UPDATE scenes SET name = $1, description = $2, actions = $3::jsonb, updated_at = $4 \
             WHERE id = $5 AND tenant_id = $6",
        )
        .bind(&scene.name)
        .bind(&scene.description)
        .bind(to_json(&scene.actions)?)
        .bind(scene.updated_at)
        .bind(scene.id.0)
        .bind(scene.tenant_id.0)
        .execute(self.pool())
        .await
        .map_err(|e| {
            conflict(
                e,
                "scene",
                name_or_id("scenes", &scene.name, scene.id.to_string()),
            )
        })?;
        not_found_if_none(done.rows_affected(), "scene", scene.id)
    }

    async fn delete_scene(&self, tenant: TenantId, id: SceneId) -> Result<()> {
        let done = sqlx::query("DELETE FROM scenes WHERE id = $1 AND tenant_id = $2")
            .bind(id.0)
            .bind(tenant.0)
            .execute(self.pool())
            .await
            .map_err(db)?;
        not_found_if_none(done.rows_affected(), "scene", id)
    }

    async fn create_alarm(&self, alarm: &Alarm) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO alarms (",
            alarm_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12, $13, $14, $15)"
        ))
        .bind(alarm.id.0)
        .bind(alarm.tenant_id.0)
        .bind(alarm.rule_id.map(|v| v.0))
        .bind(alarm.device_id.map(|v| v.0))
        .bind(alarm.severity.as_str())
        .bind(alarm.status.as_str())
        .bind(&alarm.title)
        .bind(&alarm.description)
        .bind(i64::from(alarm.occurrences))
        .bind(alarm.details.to_string())
        .bind(alarm.created_at)
        .bind(alarm.updated_at)
        .bind(alarm.acknowledged_at)
        .bind(alarm.acknowledged_by.map(|v| v.0))
        .bind(alarm.cleared_at)
        .execute(self.pool())
        .await
        .map_err(|e| conflict(e, "alarm", |_| alarm.id.to_string()))?;
        Ok(())
    }

    async fn update_alarm(&self, alarm: &Alarm) -> Result<()> {
        let done = sqlx::query(
            "UPDATE alarms SET severity = $1, status = $2, title = $3, description = $4, \
             occurrences = $5, details = $6::jsonb, updated_at = $7, acknowledged_at = $8, \
             acknowledged_by = $9, cleared_at = $10 WHERE id = $11 AND tenant_id = $12",
        )
        .bind(alarm.severity.as_str())
        .bind(alarm.status.as_str())
        .bind(&alarm.title)
        .bind(&alarm.description)
        .bind(i64::from(alarm.occurrences))
        .bind(alarm.details.to_string())
        .bind(alarm.updated_at)
        .bind(alarm.acknowledged_at)
        .bind(alarm.acknowledged_by.map(|v| v.0))
        .bind(alarm.cleared_at)
        .bind(alarm.id.0)
        .bind(alarm.tenant_id.0)
        .execute(self.pool())
        .await
        .map_err(|e| conflict(e, "alarm", |_| alarm.id.to_string()))?;
        not_found_if_none(done.rows_affected(), "alarm", alarm.id)
    }

    async fn get_alarm(&self, tenant: TenantId, id: AlarmId) -> Result<Option<Alarm>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            alarm_select!(),
            " FROM alarms WHERE id = $1 AND tenant_id = $2"
        ))
        .bind(id.0)
        .bind(tenant.0)
        .fetch_optional(self.pool())
        .await
        .map_err(db)?;
        decode_opt(row, alarm_from_row)
    }

    async fn get_open_alarm(
        &self,
        rule: RuleId,
        device: Option<DeviceId>,
    ) -> Result<Option<Alarm>> {
        // A NULL device matches a NULL device, as in the unique index.
        let row = sqlx::query(concat!(
            "SELECT ",
            alarm_select!(),
            " FROM alarms WHERE rule_id = $1 AND device_id IS NOT DISTINCT FROM $2 \
             AND status <> 'cleared'"
        ))
        .bind(rule.0)
        .bind(device.map(|v| v.0))
        .fetch_optional(self.pool())
        .await
        .map_err(db)?;
        decode_opt(row, alarm_from_row)
    }

    async fn list_alarms(&self, tenant: TenantId, filter: &AlarmFilter) -> Result<Paged<Alarm>> {
        const WHERE: &str = " FROM alarms WHERE tenant_id = $1 \
             AND ($2::uuid IS NULL OR device_id = $2) AND ($3::uuid IS NULL OR rule_id = $3) \
             AND ($4::text IS NULL OR severity = $4) \
             AND ($5::text[] IS NULL OR status = ANY($5))";
        let statuses = status_filter(&filter.statuses);
        let (limit, offset) = paging(filter.page);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {}{WHERE} ORDER BY created_at DESC, id DESC LIMIT $6 OFFSET $7",
            alarm_select!()
        )))
        .bind(tenant.0)
        .bind(filter.device_id.map(|v| v.0))
        .bind(filter.rule_id.map(|v| v.0))
        .bind(filter.severity.map(AlarmSeverity::as_str))
        .bind(statuses.clone())
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await
        .map_err(db)?;
        let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*){WHERE}")))
            .bind(tenant.0)
            .bind(filter.device_id.map(|v| v.0))
            .bind(filter.rule_id.map(|v| v.0))
            .bind(filter.severity.map(AlarmSeverity::as_str))
            .bind(statuses)
            .fetch_one(self.pool())
            .await
            .map_err(db)?;
        Ok(Paged {
            items: decode_all(&rows, alarm_from_row)?,
            total: total.unsigned_abs(),
        })
    }

    async fn count_alarms(
        &self,
        tenant: TenantId,
        device: Option<DeviceId>,
    ) -> Result<AlarmCounts> {
        let rows = sqlx::query(
            "SELECT status, severity, COUNT(*) AS n FROM alarms \
             WHERE tenant_id = $1 AND ($2::uuid IS NULL OR device_id = $2) GROUP BY status, severity",
        )
        .bind(tenant.0)
        .bind(device.map(|v| v.0))
        .fetch_all(self.pool())
        .await
        .map_err(db)?;
        let groups = rows
            .iter()
            .map(|r| -> RowResult<(String, String, i64)> {
                Ok((
                    r.try_get("status")?,
                    r.try_get("severity")?,
                    r.try_get("n")?,
                ))
            })
            .collect::<RowResult<Vec<_>>>()?;
        alarm_counts(groups)
    }

    async fn append_alarm_event(&self, event: &AlarmEvent) -> Result<()> {
        // Inserted only when the alarm exists in the event's tenant.
        let done = sqlx::query(
            "INSERT INTO alarm_events (alarm_id, tenant_id, ts, kind, user_id, text) \
             SELECT $1::uuid, $2::uuid, $3::bigint, $4::text, $5::uuid, $6::text \
             WHERE EXISTS (SELECT 1 FROM alarms WHERE id = $1 AND tenant_id = $2)",
        )
        .bind(event.alarm_id.0)
        .bind(event.tenant_id.0)
        .bind(event.ts)
        .bind(event_kind_str(event.kind))
        .bind(event.user_id.map(|v| v.0))
        .bind(&event.text)
        .execute(self.pool())
        .await
        .map_err(db)?;
        not_found_if_none(done.rows_affected(), "alarm", event.alarm_id)
    }

    async fn list_alarm_events(&self, tenant: TenantId, alarm: AlarmId) -> Result<Vec<AlarmEvent>> {
        let rows = sqlx::query(
            "SELECT alarm_id, tenant_id, ts, kind, user_id, text FROM alarm_events \
             WHERE alarm_id = $1 AND tenant_id = $2 ORDER BY ts, seq",
        )
        .bind(alarm.0)
        .bind(tenant.0)
        .fetch_all(self.pool())
        .await
        .map_err(db)?;
        decode_all(&rows, event_from_row)
    }

    async fn create_channel(&self, channel: &NotificationChannel) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO notification_channels (",
            channel_cols!(),
            ") VALUES ($1, $2, $3, $4, $5::jsonb, $6)"
        ))
        .bind(channel.id.0)
        .bind(channel.tenant_id.0)
        .bind(&channel.name)
        .bind(channel.enabled)
        .bind(to_json(&channel.kind)?)
        .bind(channel.created_at)
        .execute(self.pool())
        .await
        .map_err(|e| {
            conflict(
                e,
                "channel",
                name_or_id(
                    "notification_channels",
                    &channel.name,
                    channel.id.to_string(),
                ),
            )
        })?;
        Ok(())
    }

    async fn get_channel(
        &self,
        tenant: TenantId,
        id: ChannelId,
    ) -> Result<Option<NotificationChannel>> {
        self.get_scoped(
            concat!(
                "SELECT ",
                channel_select!(),
                " FROM notification_channels WHERE id = $1 AND tenant_id = $2"
            ),
            id.0,
            tenant,
            channel_from_row,
        )
        .await
    }

    async fn list_channels(
        &self,
        tenant: TenantId,
        page: Page,
    ) -> Result<Paged<NotificationChannel>> {
        self.page_scoped(
            concat!(
                "SELECT ",
                channel_select!(),
                " FROM notification_channels WHERE tenant_id = $1 ORDER BY name, id LIMIT $2 OFFSET $3"
            ),
            "SELECT COUNT(*) FROM notification_channels WHERE tenant_id = $1",
            tenant,
            page,
            channel_from_row,
        )
        .await
    }

    async fn update_channel(&self, channel: &NotificationChannel) -> Result<()> {
        let done = sqlx::query(
            "UPDATE notification_channels SET name = $1, enabled = $2, kind = $3::jsonb \
             WHERE id = $4 AND tenant_id = $5",
        )
        .bind(&channel.name)
        .bind(channel.enabled)
        .bind(to_json(&channel.kind)?)
        .bind(channel.id.0)
        .bind(channel.tenant_id.0)
        .execute(self.pool())
        .await
        .map_err(|e| {
            conflict(
                e,
                "channel",
                name_or_id(
                    "notification_channels",
                    &channel.name,
                    channel.id.to_string(),
                ),
            )
        })?;
        not_found_if_none(done.rows_affected(), "channel", channel.id)
    }

    async fn delete_channel(&self, tenant: TenantId, id: ChannelId) -> Result<()> {
        let done =
            sqlx::query("DELETE FROM notification_channels WHERE id = $1 AND tenant_id = $2")
                .bind(id.0)
                .bind(tenant.0)
                .execute(self.pool())
                .await
                .map_err(db)?;
        not_found_if_none(done.rows_affected(), "channel", id)
    }

    async fn create_notification(&self, record: &NotificationRecord) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO notifications (",
            notification_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(record.id.0)
        .bind(record.tenant_id.0)
        .bind(record.channel_id.0)
        .bind(record.alarm_id.map(|v| v.0))
        .bind(record.rule_id.map(|v| v.0))
        .bind(&record.subject)
        .bind(&record.body)
        .bind(notification_status_str(record.status))
        .bind(i64::from(record.attempts))
        .bind(&record.detail)
        .bind(record.created_at)
        .bind(record.updated_at)
        .execute(self.pool())
        .await
        .map_err(|e| conflict(e, "notification", |_| record.id.to_string()))?;
        Ok(())
    }

    async fn update_notification(&self, record: &NotificationRecord) -> Result<()> {
        let done = sqlx::query(
            "UPDATE notifications SET status = $1, attempts = $2, detail = $3, updated_at = $4 \
             WHERE id = $5 AND tenant_id = $6",
        )
        .bind(notification_status_str(record.status))
        .bind(i64::from(record.attempts))
        .bind(&record.detail)
        .bind(record.updated_at)
        .bind(record.id.0)
        .bind(record.tenant_id.0)
        .execute(self.pool())
        .await
        .map_err(db)?;
        not_found_if_none(done.rows_affected(), "notification", record.id)
    }

    async fn list_notifications(
        &self,
        tenant: TenantId,
        page: Page,
    ) -> Result<Paged<NotificationRecord>> {
        let (limit, offset) = paging(page);
        let rows = sqlx::query(concat!(
            "SELECT ",
            notification_cols!(),
            " FROM notifications WHERE tenant_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
        ))
        .bind(tenant.0)
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await
        .map_err(db)?;
        let total: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM notifications WHERE tenant_id = $1")
                .bind(tenant.0)
                .fetch_one(self.pool())
                .await
                .map_err(db)?;
        Ok(Paged {
            items: decode_all(&rows, notification_from_row)?,
            total: total.unsigned_abs(),
        })
    }

    async fn put_rule_state(&self, state: &RuleState) -> Result<()> {
        sqlx::query(
            "INSERT INTO rule_states (rule_id, scope, state, updated_at) VALUES ($1, $2, $3::jsonb, $4) \
             ON CONFLICT (rule_id, scope) DO UPDATE \
             SET state = excluded.state, updated_at = excluded.updated_at",
        )
        .bind(state.rule_id.0)
        .bind(&state.scope)
        .bind(state.state.to_string())
        .bind(state.updated_at)
        .execute(self.pool())
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.kind() == ErrorKind::ForeignKeyViolation => {
                Error::not_found("rule", state.rule_id)
            }
            _ => db(e),
        })?;
        Ok(())
    }

    async fn delete_rule_state(&self, rule: RuleId, scope: &str) -> Result<()> {
        sqlx::query("DELETE FROM rule_states WHERE rule_id = $1 AND scope = $2")
            .bind(rule.0)
            .bind(scope)
            .execute(self.pool())
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn list_rule_states(&self, rule: RuleId) -> Result<Vec<RuleState>> {
        let rows = sqlx::query(
            "SELECT rule_id, scope, state::text AS state, updated_at FROM rule_states \
             WHERE rule_id = $1 ORDER BY scope",
        )
        .bind(rule.0)
        .fetch_all(self.pool())
        .await
        .map_err(db)?;
        decode_all(&rows, state_from_row)
    }
}

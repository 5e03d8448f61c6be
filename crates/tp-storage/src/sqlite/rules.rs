//! [`RuleStore`] for [`SqliteMetadataStore`]: the same database and pools as the
//! metadata store (tables of migration `0004_rules`).
//!
//! Every tenant-scoped statement filters by `tenant_id` in SQL. The one-open-alarm rule
//! is a partial unique index (`alarms_one_open`), so it holds for every writer of the
//! file; rule state refers to its rule with a cascading foreign key. Trigger groups,
//! actions and channel settings are stored as JSON text in tp-core's serde shapes.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::error::ErrorKind;
use sqlx::sqlite::SqliteRow;
use tp_core::rules::*;
use tp_core::{DeviceId, Error, Page, Paged, Result, TenantId, UserId};

use super::SqliteMetadataStore;
use super::error::{self, SqliteError, conflict, db};
use super::meta::{decode_all, decode_opt, opt_uuid_col, paging, uuid_col};
use crate::rules_common::{
    alarm_counts, event_kind_str, notification_status_str, parse_event_kind,
    parse_notification_status, status_filter,
};

type RowResult<T> = std::result::Result<T, SqliteError>;

/// Parses a JSON text column into a serde type.
fn json_typed<T: serde::de::DeserializeOwned>(row: &SqliteRow, col: &'static str) -> RowResult<T> {
    let s: String = row.try_get(col)?;
    serde_json::from_str(&s).map_err(|e| SqliteError::decode(col, e))
}

/// JSON text of a serde value (the model types always serialize).
fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::invalid("json", e.to_string()))
}

fn u32_col(row: &SqliteRow, col: &'static str) -> RowResult<u32> {
    let v: i64 = row.try_get(col)?;
    u32::try_from(v).map_err(|e| SqliteError::decode(col, e))
}

fn rule_from_row(row: &SqliteRow) -> RowResult<Rule> {
    Ok(Rule {
        id: RuleId(uuid_col(row, "id")?),
        tenant_id: TenantId(uuid_col(row, "tenant_id")?),
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        enabled: row.try_get("enabled")?,
        trigger_groups: json_typed(row, "trigger_groups")?,
        actions: json_typed(row, "actions")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn scene_from_row(row: &SqliteRow) -> RowResult<Scene> {
    Ok(Scene {
        id: SceneId(uuid_col(row, "id")?),
        tenant_id: TenantId(uuid_col(row, "tenant_id")?),
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        actions: json_typed(row, "actions")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn alarm_from_row(row: &SqliteRow) -> RowResult<Alarm> {
    let severity: String = row.try_get("severity")?;
    let status: String = row.try_get("status")?;
    Ok(Alarm {
        id: AlarmId(uuid_col(row, "id")?),
        tenant_id: TenantId(uuid_col(row, "tenant_id")?),
        rule_id: opt_uuid_col(row, "rule_id")?.map(RuleId),
        device_id: opt_uuid_col(row, "device_id")?.map(DeviceId),
        severity: AlarmSeverity::parse(&severity)
            .map_err(|e| SqliteError::decode("severity", e))?,
        status: AlarmStatus::parse(&status).map_err(|e| SqliteError::decode("status", e))?,
        title: row.try_get("title")?,
        description: row.try_get("description")?,
        occurrences: u32_col(row, "occurrences")?,
        details: json_typed(row, "details")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        acknowledged_at: row.try_get("acknowledged_at")?,
        acknowledged_by: opt_uuid_col(row, "acknowledged_by")?.map(UserId),
        cleared_at: row.try_get("cleared_at")?,
    })
}

fn event_from_row(row: &SqliteRow) -> RowResult<AlarmEvent> {
    let kind: String = row.try_get("kind")?;
    Ok(AlarmEvent {
        alarm_id: AlarmId(uuid_col(row, "alarm_id")?),
        tenant_id: TenantId(uuid_col(row, "tenant_id")?),
        ts: row.try_get("ts")?,
        kind: parse_event_kind(&kind).map_err(|e| SqliteError::decode("kind", e))?,
        user_id: opt_uuid_col(row, "user_id")?.map(UserId),
        text: row.try_get("text")?,
    })
}

fn channel_from_row(row: &SqliteRow) -> RowResult<NotificationChannel> {
    Ok(NotificationChannel {
        id: ChannelId(uuid_col(row, "id")?),
        tenant_id: TenantId(uuid_col(row, "tenant_id")?),
        name: row.try_get("name")?,
        enabled: row.try_get("enabled")?,
        kind: json_typed(row, "kind")?,
        created_at: row.try_get("created_at")?,
    })
}

fn notification_from_row(row: &SqliteRow) -> RowResult<NotificationRecord> {
    let status: String = row.try_get("status")?;
    Ok(NotificationRecord {
        id: NotificationId(uuid_col(row, "id")?),
        tenant_id: TenantId(uuid_col(row, "tenant_id")?),
        channel_id: ChannelId(uuid_col(row, "channel_id")?),
        alarm_id: opt_uuid_col(row, "alarm_id")?.map(AlarmId),
        rule_id: opt_uuid_col(row, "rule_id")?.map(RuleId),
        subject: row.try_get("subject")?,
        body: row.try_get("body")?,
        status: parse_notification_status(&status).map_err(|e| SqliteError::decode("status", e))?,
        attempts: u32_col(row, "attempts")?,
        detail: row.try_get("detail")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn state_from_row(row: &SqliteRow) -> RowResult<RuleState> {
    Ok(RuleState {
        rule_id: RuleId(uuid_col(row, "rule_id")?),
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

macro_rules! scene_cols {
    () => {
        "id, tenant_id, name, description, actions, created_at, updated_at"
    };
}

macro_rules! alarm_cols {
    () => {
        "id, tenant_id, rule_id, device_id, severity, status, title, description, occurrences, \
         details, created_at, updated_at, acknowledged_at, acknowledged_by, cleared_at"
    };
}

macro_rules! channel_cols {
    () => {
        "id, tenant_id, name, enabled, kind, created_at"
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
        if msg.contains(&format!("{table}.name")) {
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

fn opt_str<T: ToString>(v: Option<T>) -> Option<String> {
    v.map(|v| v.to_string())
}

#[async_trait]
impl RuleStore for SqliteMetadataStore {
    fn backend(&self) -> &'static str {
        error::BACKEND
    }

    async fn create_rule(&self, rule: &Rule) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO rules (",
            rule_cols!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(rule.id.to_string())
        .bind(rule.tenant_id.to_string())
        .bind(&rule.name)
        .bind(&rule.description)
        .bind(rule.enabled)
        .bind(to_json(&rule.trigger_groups)?)
        .bind(to_json(&rule.actions)?)
        .bind(rule.created_at)
        .bind(rule.updated_at)
        .execute(&self.pools.writer)
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
                rule_cols!(),
                " FROM rules WHERE id = ? AND tenant_id = ?"
            ),
            id.to_string(),
            tenant,
            rule_from_row,
        )
        .await
    }

    async fn list_rules(&self, tenant: TenantId, page: Page) -> Result<Paged<Rule>> {
        self.page_scoped(
            concat!(
                "SELECT ",
                rule_cols!(),
                " FROM rules WHERE tenant_id = ? ORDER BY name, id LIMIT ? OFFSET ?"
            ),
            "SELECT COUNT(*) FROM rules WHERE tenant_id = ?",
            tenant,
            page,
            rule_from_row,
        )
        .await
    }

    async fn list_enabled_rules(&self) -> Result<Vec<Rule>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            rule_cols!(),
            " FROM rules WHERE enabled <> 0 ORDER BY tenant_id, name, id"
        ))
        .fetch_all(&self.pools.reader)
        .await
        .map_err(db)?;
        decode_all(&rows, rule_from_row)
    }

    async fn update_rule(&self, rule: &Rule) -> Result<()> {
        let done = sqlx::query(
            "UPDATE rules SET name = ?, description = ?, enabled = ?, trigger_groups = ?, \
             actions = ?, updated_at = ? WHERE id = ? AND tenant_id = ?",
        )
        .bind(&rule.name)
        .bind(&rule.description)
        .bind(rule.enabled)
        .bind(to_json(&rule.trigger_groups)?)
        .bind(to_json(&rule.actions)?)
        .bind(rule.updated_at)
        .bind(rule.id.to_string())
        .bind(rule.tenant_id.to_string())
        .execute(&self.pools.writer)
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
        let done = sqlx::query("DELETE FROM rules WHERE id = ? AND tenant_id = ?")
            .bind(id.to_string())
            .bind(tenant.to_string())
            .execute(&self.pools.writer)
            .await
            .map_err(db)?;
        not_found_if_none(done.rows_affected(), "rule", id)
    }

    async fn create_scene(&self, scene: &Scene) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO scenes (",
            scene_cols!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(scene.id.to_string())
        .bind(scene.tenant_id.to_string())
        .bind(&scene.name)
        .bind(&scene.description)
        .bind(to_json(&scene.actions)?)
        .bind(scene.created_at)
        .bind(scene.updated_at)
        .execute(&self.pools.writer)
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
                scene_cols!(),
                " FROM scenes WHERE id = ? AND tenant_id = ?"
            ),
            id.to_string(),
            tenant,
            scene_from_row,
        )
        .await
    }

    async fn list_scenes(&self, tenant: TenantId, page: Page) -> Result<Paged<Scene>> {
        self.page_scoped(
            concat!(
                "SELECT ",
                scene_cols!(),
                " FROM scenes WHERE tenant_id = ? ORDER BY name, id LIMIT ? OFFSET ?"
            ),
            "SELECT COUNT(*) FROM scenes WHERE tenant_id = ?",
            tenant,
            page,
            scene_from_row,
        )
        .await
    }

    async fn update_scene(&self, scene: &Scene) -> Result<()> {
        let done = sqlx::query(
            "UPDATE scenes SET name = ?, description = ?, actions = ?, updated_at = ? \
             WHERE id = ? AND tenant_id = ?",
        )
        .bind(&scene.name)
        .bind(&scene.description)
        .bind(to_json(&scene.actions)?)
        .bind(scene.updated_at)
        .bind(scene.id.to_string())
        .bind(scene.tenant_id.to_string())
        .execute(&self.pools.writer)
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
        let done = sqlx::query("DELETE FROM scenes WHERE id = ? AND tenant_id = ?")
            .bind(id.to_string())
            .bind(tenant.to_string())
            .execute(&self.pools.writer)
            .await
            .map_err(db)?;
        not_found_if_none(done.rows_affected(), "scene", id)
    }

    async fn create_alarm(&self, alarm: &Alarm) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO alarms (",
            alarm_cols!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(alarm.id.to_string())
        .bind(alarm.tenant_id.to_string())
        .bind(opt_str(alarm.rule_id))
        .bind(opt_str(alarm.device_id))
        .bind(alarm.severity.as_str())
        .bind(alarm.status.as_str())
        .bind(&alarm.title)
        .bind(&alarm.description)
        .bind(i64::from(alarm.occurrences))
        .bind(alarm.details.to_string())
        .bind(alarm.created_at)
        .bind(alarm.updated_at)
        .bind(alarm.acknowledged_at)
        .bind(opt_str(alarm.acknowledged_by))
        .bind(alarm.cleared_at)
        .execute(&self.pools.writer)
        .await
        .map_err(|e| conflict(e, "alarm", |_| alarm.id.to_string()))?;
        Ok(())
    }

    async fn update_alarm(&self, alarm: &Alarm) -> Result<()> {
        let done = sqlx::query(
            "UPDATE alarms SET severity = ?, status = ?, title = ?, description = ?, \
             occurrences = ?, details = ?, updated_at = ?, acknowledged_at = ?, \
             acknowledged_by = ?, cleared_at = ? WHERE id = ? AND tenant_id = ?",
        )
        .bind(alarm.severity.as_str())
        .bind(alarm.status.as_str())
        .bind(&alarm.title)
        .bind(&alarm.description)
        .bind(i64::from(alarm.occurrences))
        .bind(alarm.details.to_string())
        .bind(alarm.updated_at)
        .bind(alarm.acknowledged_at)
        .bind(opt_str(alarm.acknowledged_by))
        .bind(alarm.cleared_at)
        .bind(alarm.id.to_string())
        .bind(alarm.tenant_id.to_string())
        .execute(&self.pools.writer)
        .await
        .map_err(|e| conflict(e, "alarm", |_| alarm.id.to_string()))?;
        not_found_if_none(done.rows_affected(), "alarm", alarm.id)
    }

    async fn get_alarm(&self, tenant: TenantId, id: AlarmId) -> Result<Option<Alarm>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            alarm_cols!(),
            " FROM alarms WHERE id = ? AND tenant_id = ?"
        ))
        .bind(id.to_string())
        .bind(tenant.to_string())
        .fetch_optional(&self.pools.reader)
        .await
        .map_err(db)?;
        decode_opt(row, alarm_from_row)
    }

    async fn get_open_alarm(
        &self,
        rule: RuleId,
        device: Option<DeviceId>,
    ) -> Result<Option<Alarm>> {
        // Same key expression as the unique index: a NULL device matches a NULL device.
        let row = sqlx::query(concat!(
            "SELECT ",
            alarm_cols!(),
            " FROM alarms WHERE rule_id = ? AND coalesce(device_id, '') = coalesce(?, '') \
             AND status <> 'cleared' AND rule_id IS NOT NULL"
        ))
        .bind(rule.to_string())
        .bind(opt_str(device))
        .fetch_optional(&self.pools.reader)
        .await
        .map_err(db)?;
        decode_opt(row, alarm_from_row)
    }

    async fn list_alarms(&self, tenant: TenantId, filter: &AlarmFilter) -> Result<Paged<Alarm>> {
        const WHERE: &str = " FROM alarms WHERE tenant_id = ?1 \
             AND (?2 IS NULL OR device_id = ?2) AND (?3 IS NULL OR rule_id = ?3) \
             AND (?4 IS NULL OR severity = ?4) \
             AND (?5 IS NULL OR status IN (SELECT value FROM json_each(?5)))";
        let statuses =
            status_filter(&filter.statuses).map(|s| serde_json::Value::from(s).to_string());
        let (limit, offset) = paging(filter.page);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {}{WHERE} ORDER BY created_at DESC, id DESC LIMIT ?6 OFFSET ?7",
            alarm_cols!()
        )))
        .bind(tenant.to_string())
        .bind(opt_str(filter.device_id))
        .bind(opt_str(filter.rule_id))
        .bind(filter.severity.map(AlarmSeverity::as_str))
        .bind(statuses.clone())
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pools.reader)
        .await
        .map_err(db)?;
        let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*){WHERE}")))
            .bind(tenant.to_string())
            .bind(opt_str(filter.device_id))
            .bind(opt_str(filter.rule_id))
            .bind(filter.severity.map(AlarmSeverity::as_str))
            .bind(statuses)
            .fetch_one(&self.pools.reader)
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
             WHERE tenant_id = ?1 AND (?2 IS NULL OR device_id = ?2) GROUP BY status, severity",
        )
        .bind(tenant.to_string())
        .bind(opt_str(device))
        .fetch_all(&self.pools.reader)
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
             SELECT ?1, ?2, ?3, ?4, ?5, ?6 \
             WHERE EXISTS (SELECT 1 FROM alarms WHERE id = ?1 AND tenant_id = ?2)",
        )
        .bind(event.alarm_id.to_string())
        .bind(event.tenant_id.to_string())
        .bind(event.ts)
        .bind(event_kind_str(event.kind))
        .bind(opt_str(event.user_id))
        .bind(&event.text)
        .execute(&self.pools.writer)
        .await
        .map_err(db)?;
        not_found_if_none(done.rows_affected(), "alarm", event.alarm_id)
    }

    async fn list_alarm_events(&self, tenant: TenantId, alarm: AlarmId) -> Result<Vec<AlarmEvent>> {
        let rows = sqlx::query(
            "SELECT alarm_id, tenant_id, ts, kind, user_id, text FROM alarm_events \
             WHERE alarm_id = ? AND tenant_id = ? ORDER BY ts, seq",
        )
        .bind(alarm.to_string())
        .bind(tenant.to_string())
        .fetch_all(&self.pools.reader)
        .await
        .map_err(db)?;
        decode_all(&rows, event_from_row)
    }

    async fn create_channel(&self, channel: &NotificationChannel) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO notification_channels (",
            channel_cols!(),
            ") VALUES (?, ?, ?, ?, ?, ?)"
        ))
        .bind(channel.id.to_string())
        .bind(channel.tenant_id.to_string())
        .bind(&channel.name)
        .bind(channel.enabled)
        .bind(to_json(&channel.kind)?)
        .bind(channel.created_at)
        .execute(&self.pools.writer)
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
                channel_cols!(),
                " FROM notification_channels WHERE id = ? AND tenant_id = ?"
            ),
            id.to_string(),
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
                channel_cols!(),
                " FROM notification_channels WHERE tenant_id = ? ORDER BY name, id LIMIT ? OFFSET ?"
            ),
            "SELECT COUNT(*) FROM notification_channels WHERE tenant_id = ?",
            tenant,
            page,
            channel_from_row,
        )
        .await
    }

    async fn update_channel(&self, channel: &NotificationChannel) -> Result<()> {
        let done = sqlx::query(
            "UPDATE notification_channels SET name = ?, enabled = ?, kind = ? \
             WHERE id = ? AND tenant_id = ?",
        )
        .bind(&channel.name)
        .bind(channel.enabled)
        .bind(to_json(&channel.kind)?)
        .bind(channel.id.to_string())
        .bind(channel.tenant_id.to_string())
        .execute(&self.pools.writer)
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
        let done = sqlx::query("DELETE FROM notification_channels WHERE id = ? AND tenant_id = ?")
            .bind(id.to_string())
            .bind(tenant.to_string())
            .execute(&self.pools.writer)
            .await
            .map_err(db)?;
        not_found_if_none(done.rows_affected(), "channel", id)
    }

    async fn create_notification(&self, record: &NotificationRecord) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO notifications (",
            notification_cols!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(record.id.to_string())
        .bind(record.tenant_id.to_string())
        .bind(record.channel_id.to_string())
        .bind(opt_str(record.alarm_id))
        .bind(opt_str(record.rule_id))
        .bind(&record.subject)
        .bind(&record.body)
        .bind(notification_status_str(record.status))
        .bind(i64::from(record.attempts))
        .bind(&record.detail)
        .bind(record.created_at)
        .bind(record.updated_at)
        .execute(&self.pools.writer)
        .await
        .map_err(|e| conflict(e, "notification", |_| record.id.to_string()))?;
        Ok(())
    }

    async fn update_notification(&self, record: &NotificationRecord) -> Result<()> {
        let done = sqlx::query(
            "UPDATE notifications SET status = ?, attempts = ?, detail = ?, updated_at = ? \
             WHERE id = ? AND tenant_id = ?",
        )
        .bind(notification_status_str(record.status))
        .bind(i64::from(record.attempts))
        .bind(&record.detail)
        .bind(record.updated_at)
        .bind(record.id.to_string())
        .bind(record.tenant_id.to_string())
        .execute(&self.pools.writer)
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
            " FROM notifications WHERE tenant_id = ? \
             ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
        ))
        .bind(tenant.to_string())
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pools.reader)
        .await
        .map_err(db)?;
        let total: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM notifications WHERE tenant_id = ?")
                .bind(tenant.to_string())
                .fetch_one(&self.pools.reader)
                .await
                .map_err(db)?;
        Ok(Paged {
            items: decode_all(&rows, notification_from_row)?,
            total: total.unsigned_abs(),
        })
    }

    async fn put_rule_state(&self, state: &RuleState) -> Result<()> {
        sqlx::query(
            "INSERT INTO rule_states (rule_id, scope, state, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (rule_id, scope) DO UPDATE \
             SET state = excluded.state, updated_at = excluded.updated_at",
        )
        .bind(state.rule_id.to_string())
        .bind(&state.scope)
        .bind(state.state.to_string())
        .bind(state.updated_at)
        .execute(&self.pools.writer)
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
        sqlx::query("DELETE FROM rule_states WHERE rule_id = ? AND scope = ?")
            .bind(rule.to_string())
            .bind(scope)
            .execute(&self.pools.writer)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn list_rule_states(&self, rule: RuleId) -> Result<Vec<RuleState>> {
        let rows = sqlx::query(
            "SELECT rule_id, scope, state, updated_at FROM rule_states \
             WHERE rule_id = ? ORDER BY scope",
        )
        .bind(rule.to_string())
        .fetch_all(&self.pools.reader)
        .await
        .map_err(db)?;
        decode_all(&rows, state_from_row)
    }
}

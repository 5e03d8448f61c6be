//! [`RuleStore`] of the SQL store: rules, scenes, alarms, notification channels and
//! records, rule state (tables of migration `0004_rules`).
//!
//! Every tenant-scoped statement filters by `tenant_id` in SQL. The one-open-alarm rule
//! is a partial unique index (`alarms_one_open`), so it holds for every writer and
//! every node; rule state refers to its rule with a cascading foreign key. Trigger
//! groups, actions, channel settings, alarm details and engine state are JSON columns
//! in tp-core's serde shapes.

use async_trait::async_trait;
use tp_core::rules::*;
use tp_core::{DeviceId, Error, Page, Paged, Result, TenantId, UserId};

use super::{
    Arg, Dialect, SqlRow, SqlStore, Stmt, UniqueViolation, found, is_foreign_key_violation, paging,
};
use crate::rules_common::{
    alarm_counts, event_kind_str, notification_status_str, parse_event_kind,
    parse_notification_status, status_filter,
};

fn rule_from_row(row: &impl SqlRow) -> Result<Rule> {
    Ok(Rule {
        id: RuleId(row.uuid("id")?),
        tenant_id: TenantId(row.uuid("tenant_id")?),
        name: row.text("name")?,
        description: row.opt_text("description")?,
        enabled: row.bool("enabled")?,
        trigger_groups: row.json("trigger_groups")?,
        actions: row.json("actions")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}

fn scene_from_row(row: &impl SqlRow) -> Result<Scene> {
    Ok(Scene {
        id: SceneId(row.uuid("id")?),
        tenant_id: TenantId(row.uuid("tenant_id")?),
        name: row.text("name")?,
        description: row.opt_text("description")?,
        actions: row.json("actions")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}

fn alarm_from_row(row: &impl SqlRow) -> Result<Alarm> {
    Ok(Alarm {
        id: AlarmId(row.uuid("id")?),
        tenant_id: TenantId(row.uuid("tenant_id")?),
        rule_id: row.opt_uuid("rule_id")?.map(RuleId),
        device_id: row.opt_uuid("device_id")?.map(DeviceId),
        severity: row.parsed("severity", AlarmSeverity::parse)?,
        status: row.parsed("status", AlarmStatus::parse)?,
        title: row.text("title")?,
        description: row.opt_text("description")?,
        occurrences: row.u32("occurrences")?,
        details: row.json("details")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
        acknowledged_at: row.opt_int("acknowledged_at")?,
        acknowledged_by: row.opt_uuid("acknowledged_by")?.map(UserId),
        cleared_at: row.opt_int("cleared_at")?,
    })
}

fn event_from_row(row: &impl SqlRow) -> Result<AlarmEvent> {
    Ok(AlarmEvent {
        alarm_id: AlarmId(row.uuid("alarm_id")?),
        tenant_id: TenantId(row.uuid("tenant_id")?),
        ts: row.int("ts")?,
        kind: row.parsed("kind", parse_event_kind)?,
        user_id: row.opt_uuid("user_id")?.map(UserId),
        text: row.opt_text("text")?,
    })
}

fn channel_from_row(row: &impl SqlRow) -> Result<NotificationChannel> {
    Ok(NotificationChannel {
        id: ChannelId(row.uuid("id")?),
        tenant_id: TenantId(row.uuid("tenant_id")?),
        name: row.text("name")?,
        enabled: row.bool("enabled")?,
        kind: row.json("kind")?,
        created_at: row.int("created_at")?,
    })
}

fn notification_from_row(row: &impl SqlRow) -> Result<NotificationRecord> {
    Ok(NotificationRecord {
        id: NotificationId(row.uuid("id")?),
        tenant_id: TenantId(row.uuid("tenant_id")?),
        channel_id: ChannelId(row.uuid("channel_id")?),
        alarm_id: row.opt_uuid("alarm_id")?.map(AlarmId),
        rule_id: row.opt_uuid("rule_id")?.map(RuleId),
        subject: row.text("subject")?,
        body: row.text("body")?,
        status: row.parsed("status", parse_notification_status)?,
        attempts: row.u32("attempts")?,
        detail: row.opt_text("detail")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}

fn state_from_row(row: &impl SqlRow) -> Result<RuleState> {
    Ok(RuleState {
        rule_id: RuleId(row.uuid("rule_id")?),
        scope: row.text("scope")?,
        state: row.json("state")?,
        updated_at: row.int("updated_at")?,
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
/// the name when the violated key has the `name` column, else the id.
fn name_or_id<'a>(
    table: &'static str,
    name: &'a str,
    id: impl ToString + 'a,
) -> impl FnOnce(&UniqueViolation) -> String + 'a {
    move |v| {
        if v.names(table, "name") {
            name.to_owned()
        } else {
            id.to_string()
        }
    }
}

/// Alarm filter statuses as three parameters (every status there is): `$n` is NULL
/// for "any", otherwise the list padded with its first entry.
fn status_args(statuses: &[AlarmStatus]) -> [Option<String>; 3] {
    let mut out: [Option<String>; 3] = Default::default();
    if let Some(list) = status_filter(statuses) {
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = Some(list.get(i).unwrap_or(&list[0]).clone());
        }
    }
    out
}

/// Statement of `list_alarms` after `SELECT <cols>` or `SELECT COUNT(*) AS n`.
const ALARM_FILTER: &str = " FROM alarms WHERE tenant_id = $1 \
     AND ($2 IS NULL OR device_id = $2) AND ($3 IS NULL OR rule_id = $3) \
     AND ($4 IS NULL OR severity = $4) AND ($5 IS NULL OR status IN ($5, $6, $7))";

fn alarm_filter(stmt: Stmt, tenant: TenantId, filter: &AlarmFilter) -> Stmt {
    let [a, b, c] = status_args(&filter.statuses);
    stmt.bind(tenant)
        .bind(filter.device_id)
        .bind(filter.rule_id)
        .bind(filter.severity.map(AlarmSeverity::as_str))
        .bind(a)
        .bind(b)
        .bind(c)
}

#[async_trait]
impl<D: Dialect> RuleStore for SqlStore<D> {
    fn backend(&self) -> &'static str {
        D::backend()
    }

    async fn create_rule(&self, rule: &Rule) -> Result<()> {
        let stmt = Stmt::new(concat!(
            "INSERT INTO rules (",
            rule_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(rule.id)
        .bind(rule.tenant_id)
        .bind(&rule.name)
        .bind(&rule.description)
        .bind(rule.enabled)
        .bind_json(&rule.trigger_groups)?
        .bind_json(&rule.actions)?
        .bind(rule.created_at)
        .bind(rule.updated_at);
        self.exec_unique(stmt, "rule", name_or_id("rules", &rule.name, rule.id))
            .await?;
        Ok(())
    }

    async fn get_rule(&self, tenant: TenantId, id: RuleId) -> Result<Option<Rule>> {
        const SQL: &str = concat!(
            "SELECT ",
            rule_cols!(),
            " FROM rules WHERE id = $1 AND tenant_id = $2"
        );
        self.get_scoped(SQL, id, tenant, rule_from_row).await
    }

    async fn list_rules(&self, tenant: TenantId, page: Page) -> Result<Paged<Rule>> {
        const SQL: &str = concat!(
            "SELECT ",
            rule_cols!(),
            " FROM rules WHERE tenant_id = $1 ORDER BY name, id LIMIT $2 OFFSET $3"
        );
        const COUNT: &str = "SELECT COUNT(*) AS n FROM rules WHERE tenant_id = $1";
        self.page_scoped(SQL, COUNT, tenant, page, rule_from_row)
            .await
    }

    async fn list_enabled_rules(&self) -> Result<Vec<Rule>> {
        const SQL: &str = concat!(
            "SELECT ",
            rule_cols!(),
            " FROM rules WHERE enabled ORDER BY tenant_id, name, id"
        );
        self.all(Stmt::new(SQL), rule_from_row).await
    }

    async fn update_rule(&self, rule: &Rule) -> Result<()> {
        let stmt = Stmt::new(
            "UPDATE rules SET name = $1, description = $2, enabled = $3, trigger_groups = $4, \
             actions = $5, updated_at = $6 WHERE id = $7 AND tenant_id = $8",
        )
        .bind(&rule.name)
        .bind(&rule.description)
        .bind(rule.enabled)
        .bind_json(&rule.trigger_groups)?
        .bind_json(&rule.actions)?
        .bind(rule.updated_at)
        .bind(rule.id)
        .bind(rule.tenant_id);
        let n = self
            .exec_unique(stmt, "rule", name_or_id("rules", &rule.name, rule.id))
            .await?;
        found(n, "rule", rule.id)
    }

    async fn delete_rule(&self, tenant: TenantId, id: RuleId) -> Result<()> {
        // rule_states rows go by ON DELETE CASCADE.
        let stmt = Stmt::new("DELETE FROM rules WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant);
        found(self.exec(stmt).await?, "rule", id)
    }

    async fn create_scene(&self, scene: &Scene) -> Result<()> {
        let stmt = Stmt::new(concat!(
            "INSERT INTO scenes (",
            scene_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(scene.id)
        .bind(scene.tenant_id)
        .bind(&scene.name)
        .bind(&scene.description)
        .bind_json(&scene.actions)?
        .bind(scene.created_at)
        .bind(scene.updated_at);
        self.exec_unique(stmt, "scene", name_or_id("scenes", &scene.name, scene.id))
            .await?;
        Ok(())
    }

    async fn get_scene(&self, tenant: TenantId, id: SceneId) -> Result<Option<Scene>> {
        const SQL: &str = concat!(
            "SELECT ",
            scene_cols!(),
            " FROM scenes WHERE id = $1 AND tenant_id = $2"
        );
        self.get_scoped(SQL, id, tenant, scene_from_row).await
    }

    async fn list_scenes(&self, tenant: TenantId, page: Page) -> Result<Paged<Scene>> {
        const SQL: &str = concat!(
            "SELECT ",
            scene_cols!(),
            " FROM scenes WHERE tenant_id = $1 ORDER BY name, id LIMIT $2 OFFSET $3"
        );
        const COUNT: &str = "SELECT COUNT(*) AS n FROM scenes WHERE tenant_id = $1";
        self.page_scoped(SQL, COUNT, tenant, page, scene_from_row)
            .await
    }

    async fn update_scene(&self, scene: &Scene) -> Result<()> {
        let stmt = Stmt::new(
            "UPDATE scenes SET name = $1, description = $2, actions = $3, updated_at = $4 \
             WHERE id = $5 AND tenant_id = $6",
        )
        .bind(&scene.name)
        .bind(&scene.description)
        .bind_json(&scene.actions)?
        .bind(scene.updated_at)
        .bind(scene.id)
        .bind(scene.tenant_id);
        let n = self
            .exec_unique(stmt, "scene", name_or_id("scenes", &scene.name, scene.id))
            .await?;
        found(n, "scene", scene.id)
    }

    async fn delete_scene(&self, tenant: TenantId, id: SceneId) -> Result<()> {
        let stmt = Stmt::new("DELETE FROM scenes WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant);
        found(self.exec(stmt).await?, "scene", id)
    }

    async fn create_alarm(&self, alarm: &Alarm) -> Result<()> {
        let stmt = Stmt::new(concat!(
            "INSERT INTO alarms (",
            alarm_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        ))
        .bind(alarm.id)
        .bind(alarm.tenant_id)
        .bind(alarm.rule_id)
        .bind(alarm.device_id)
        .bind(alarm.severity.as_str())
        .bind(alarm.status.as_str())
        .bind(&alarm.title)
        .bind(&alarm.description)
        .bind(alarm.occurrences)
        .bind(Arg::Json(Some(alarm.details.clone())))
        .bind(alarm.created_at)
        .bind(alarm.updated_at)
        .bind(alarm.acknowledged_at)
        .bind(alarm.acknowledged_by)
        .bind(alarm.cleared_at);
        self.exec_unique(stmt, "alarm", |_| alarm.id.to_string())
            .await?;
        Ok(())
    }

    async fn update_alarm(&self, alarm: &Alarm) -> Result<()> {
        let stmt = Stmt::new(
            "UPDATE alarms SET severity = $1, status = $2, title = $3, description = $4, \
             occurrences = $5, details = $6, updated_at = $7, acknowledged_at = $8, \
             acknowledged_by = $9, cleared_at = $10 WHERE id = $11 AND tenant_id = $12",
        )
        .bind(alarm.severity.as_str())
        .bind(alarm.status.as_str())
        .bind(&alarm.title)
        .bind(&alarm.description)
        .bind(alarm.occurrences)
        .bind(Arg::Json(Some(alarm.details.clone())))
        .bind(alarm.updated_at)
        .bind(alarm.acknowledged_at)
        .bind(alarm.acknowledged_by)
        .bind(alarm.cleared_at)
        .bind(alarm.id)
        .bind(alarm.tenant_id);
        let n = self
            .exec_unique(stmt, "alarm", |_| alarm.id.to_string())
            .await?;
        found(n, "alarm", alarm.id)
    }

    async fn get_alarm(&self, tenant: TenantId, id: AlarmId) -> Result<Option<Alarm>> {
        const SQL: &str = concat!(
            "SELECT ",
            alarm_cols!(),
            " FROM alarms WHERE id = $1 AND tenant_id = $2"
        );
        self.get_scoped(SQL, id, tenant, alarm_from_row).await
    }

    async fn get_open_alarm(
        &self,
        rule: RuleId,
        device: Option<DeviceId>,
    ) -> Result<Option<Alarm>> {
        // A NULL device matches a NULL device, as in the unique index.
        const SQL: &str = concat!(
            "SELECT ",
            alarm_cols!(),
            " FROM alarms WHERE rule_id = $1 AND device_id IS NOT DISTINCT FROM $2 \
             AND status <> 'cleared'"
        );
        self.opt(Stmt::new(SQL).bind(rule).bind(device), alarm_from_row)
            .await
    }

    async fn list_alarms(&self, tenant: TenantId, filter: &AlarmFilter) -> Result<Paged<Alarm>> {
        let (limit, offset) = paging(filter.page);
        let select = Stmt::built(format!(
            "SELECT {}{ALARM_FILTER} ORDER BY created_at DESC, id DESC LIMIT $8 OFFSET $9",
            alarm_cols!()
        ));
        let select = alarm_filter(select, tenant, filter)
            .bind(limit)
            .bind(offset);
        let items = self.all(select, alarm_from_row).await?;
        let count = Stmt::built(format!("SELECT COUNT(*) AS n{ALARM_FILTER}"));
        let total = self.count(alarm_filter(count, tenant, filter)).await?;
        Ok(Paged { items, total })
    }

    async fn count_alarms(
        &self,
        tenant: TenantId,
        device: Option<DeviceId>,
    ) -> Result<AlarmCounts> {
        let stmt = Stmt::new(
            "SELECT status, severity, COUNT(*) AS n FROM alarms \
             WHERE tenant_id = $1 AND ($2 IS NULL OR device_id = $2) GROUP BY status, severity",
        )
        .bind(tenant)
        .bind(device);
        let groups = self
            .all(stmt, |r| {
                Ok((r.text("status")?, r.text("severity")?, r.int("n")?))
            })
            .await?;
        alarm_counts(groups)
    }

    async fn append_alarm_event(&self, event: &AlarmEvent) -> Result<()> {
        // Inserted only when the alarm exists in the event's tenant.
        let stmt = Stmt::new(
            "INSERT INTO alarm_events (alarm_id, tenant_id, ts, kind, user_id, text) \
             SELECT $1, $2, $3, $4, $5, $6 \
             WHERE EXISTS (SELECT 1 FROM alarms WHERE id = $1 AND tenant_id = $2)",
        )
        .bind(event.alarm_id)
        .bind(event.tenant_id)
        .bind(event.ts)
        .bind(event_kind_str(event.kind))
        .bind(event.user_id)
        .bind(&event.text);
        found(self.exec(stmt).await?, "alarm", event.alarm_id)
    }

    async fn list_alarm_events(&self, tenant: TenantId, alarm: AlarmId) -> Result<Vec<AlarmEvent>> {
        let stmt = Stmt::new(
            "SELECT alarm_id, tenant_id, ts, kind, user_id, text FROM alarm_events \
             WHERE alarm_id = $1 AND tenant_id = $2 ORDER BY ts, seq",
        )
        .bind(alarm)
        .bind(tenant);
        self.all(stmt, event_from_row).await
    }

    async fn create_channel(&self, channel: &NotificationChannel) -> Result<()> {
        let stmt = Stmt::new(concat!(
            "INSERT INTO notification_channels (",
            channel_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(channel.id)
        .bind(channel.tenant_id)
        .bind(&channel.name)
        .bind(channel.enabled)
        .bind_json(&channel.kind)?
        .bind(channel.created_at);
        let pick = name_or_id("notification_channels", &channel.name, channel.id);
        self.exec_unique(stmt, "channel", pick).await?;
        Ok(())
    }

    async fn get_channel(
        &self,
        tenant: TenantId,
        id: ChannelId,
    ) -> Result<Option<NotificationChannel>> {
        const SQL: &str = concat!(
            "SELECT ",
            channel_cols!(),
            " FROM notification_channels WHERE id = $1 AND tenant_id = $2"
        );
        self.get_scoped(SQL, id, tenant, channel_from_row).await
    }

    async fn list_channels(
        &self,
        tenant: TenantId,
        page: Page,
    ) -> Result<Paged<NotificationChannel>> {
        const SQL: &str = concat!(
            "SELECT ",
            channel_cols!(),
            " FROM notification_channels WHERE tenant_id = $1 ORDER BY name, id \
             LIMIT $2 OFFSET $3"
        );
        const COUNT: &str = "SELECT COUNT(*) AS n FROM notification_channels WHERE tenant_id = $1";
        self.page_scoped(SQL, COUNT, tenant, page, channel_from_row)
            .await
    }

    async fn update_channel(&self, channel: &NotificationChannel) -> Result<()> {
        let stmt = Stmt::new(
            "UPDATE notification_channels SET name = $1, enabled = $2, kind = $3 \
             WHERE id = $4 AND tenant_id = $5",
        )
        .bind(&channel.name)
        .bind(channel.enabled)
        .bind_json(&channel.kind)?
        .bind(channel.id)
        .bind(channel.tenant_id);
        let pick = name_or_id("notification_channels", &channel.name, channel.id);
        let n = self.exec_unique(stmt, "channel", pick).await?;
        found(n, "channel", channel.id)
    }

    async fn delete_channel(&self, tenant: TenantId, id: ChannelId) -> Result<()> {
        let stmt = Stmt::new("DELETE FROM notification_channels WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant);
        found(self.exec(stmt).await?, "channel", id)
    }

    async fn create_notification(&self, record: &NotificationRecord) -> Result<()> {
        let stmt = Stmt::new(concat!(
            "INSERT INTO notifications (",
            notification_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(record.id)
        .bind(record.tenant_id)
        .bind(record.channel_id)
        .bind(record.alarm_id)
        .bind(record.rule_id)
        .bind(&record.subject)
        .bind(&record.body)
        .bind(notification_status_str(record.status))
        .bind(record.attempts)
        .bind(&record.detail)
        .bind(record.created_at)
        .bind(record.updated_at);
        self.exec_unique(stmt, "notification", |_| record.id.to_string())
            .await?;
        Ok(())
    }

    async fn update_notification(&self, record: &NotificationRecord) -> Result<()> {
        let stmt = Stmt::new(
            "UPDATE notifications SET status = $1, attempts = $2, detail = $3, updated_at = $4 \
             WHERE id = $5 AND tenant_id = $6",
        )
        .bind(notification_status_str(record.status))
        .bind(record.attempts)
        .bind(&record.detail)
        .bind(record.updated_at)
        .bind(record.id)
        .bind(record.tenant_id);
        found(self.exec(stmt).await?, "notification", record.id)
    }

    async fn list_notifications(
        &self,
        tenant: TenantId,
        page: Page,
    ) -> Result<Paged<NotificationRecord>> {
        const SQL: &str = concat!(
            "SELECT ",
            notification_cols!(),
            " FROM notifications WHERE tenant_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
        );
        const COUNT: &str = "SELECT COUNT(*) AS n FROM notifications WHERE tenant_id = $1";
        self.page_scoped(SQL, COUNT, tenant, page, notification_from_row)
            .await
    }

    async fn put_rule_state(&self, state: &RuleState) -> Result<()> {
        let stmt = Stmt::new(
            "INSERT INTO rule_states (rule_id, scope, state, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (rule_id, scope) DO UPDATE \
             SET state = excluded.state, updated_at = excluded.updated_at",
        )
        .bind(state.rule_id)
        .bind(&state.scope)
        .bind(Arg::Json(Some(state.state.clone())))
        .bind(state.updated_at);
        self.exec_raw(stmt).await.map_err(|e| {
            if is_foreign_key_violation(&e) {
                Error::not_found("rule", state.rule_id)
            } else {
                D::error(e)
            }
        })?;
        Ok(())
    }

    async fn delete_rule_state(&self, rule: RuleId, scope: &str) -> Result<()> {
        let stmt = Stmt::new("DELETE FROM rule_states WHERE rule_id = $1 AND scope = $2")
            .bind(rule)
            .bind(scope);
        self.exec(stmt).await?;
        Ok(())
    }

    async fn list_rule_states(&self, rule: RuleId) -> Result<Vec<RuleState>> {
        let stmt = Stmt::new(
            "SELECT rule_id, scope, state, updated_at FROM rule_states \
             WHERE rule_id = $1 ORDER BY scope",
        )
        .bind(rule);
        self.all(stmt, state_from_row).await
    }
}

//! The [`RuleStore`] contract (rules, scenes, alarms, channels, notification history,
//! engine state) and the [`Notifier`] contract (delivery to webhooks and email).

use std::sync::Arc;

use async_trait::async_trait;

use super::model::*;
use crate::Result;
use crate::model::{Page, Paged, TenantId};

/// Persistent automation data of every tenant.
///
/// # Contract
/// - Every tenant-scoped call filters by tenant in the store itself: another tenant's
///   row is `None` / [`crate::Error::NotFound`], never returned or changed.
/// - At most one *open* (active or acknowledged) alarm exists per `(rule_id,
///   device_id)`, enforced by the store (a unique index, so it holds across nodes):
///   [`RuleStore::create_alarm`] of a second one is [`crate::Error::AlreadyExists`].
///   Alarms without a rule are not limited.
/// - Rule, scene and notification channel names are unique per tenant
///   ([`crate::Error::AlreadyExists`]).
/// - Deleting a rule deletes its [`RuleState`] rows; its alarms stay (history).
/// - Lists are newest first unless stated otherwise.
/// - Implementations must pass every case of `tp_core::testing::rules`.
#[async_trait]
pub trait RuleStore: std::fmt::Debug + Send + Sync + 'static {
    /// Stable backend name.
    fn backend(&self) -> &'static str;

    /// Stores a new rule.
    async fn create_rule(&self, rule: &Rule) -> Result<()>;
    /// One rule of a tenant.
    async fn get_rule(&self, tenant: TenantId, id: RuleId) -> Result<Option<Rule>>;
    /// A tenant's rules, by name.
    async fn list_rules(&self, tenant: TenantId, page: Page) -> Result<Paged<Rule>>;
    /// Every enabled rule of every tenant: what the engine loads and caches.
    async fn list_enabled_rules(&self) -> Result<Vec<Rule>>;
    /// Replaces a rule (matched by tenant and id).
    async fn update_rule(&self, rule: &Rule) -> Result<()>;
    /// Deletes a rule and its state.
    async fn delete_rule(&self, tenant: TenantId, id: RuleId) -> Result<()>;

    /// Stores a new scene.
    async fn create_scene(&self, scene: &Scene) -> Result<()>;
    /// One scene of a tenant.
    async fn get_scene(&self, tenant: TenantId, id: SceneId) -> Result<Option<Scene>>;
    /// A tenant's scenes, by name.
    async fn list_scenes(&self, tenant: TenantId, page: Page) -> Result<Paged<Scene>>;
    /// Replaces a scene.
    async fn update_scene(&self, scene: &Scene) -> Result<()>;
    /// Deletes a scene.
    async fn delete_scene(&self, tenant: TenantId, id: SceneId) -> Result<()>;

    /// Stores a new alarm (see the one-open-alarm rule above).
    async fn create_alarm(&self, alarm: &Alarm) -> Result<()>;
    /// Replaces an alarm's mutable fields (status, severity, texts, occurrences,
    /// details, timestamps, acknowledged_by).
    async fn update_alarm(&self, alarm: &Alarm) -> Result<()>;
    /// One alarm of a tenant.
    async fn get_alarm(&self, tenant: TenantId, id: AlarmId) -> Result<Option<Alarm>>;
    /// The open alarm of a rule for a device (or for the rule itself when `device`
    /// is `None`), if any.
    async fn get_open_alarm(
        &self,
        rule: RuleId,
        device: Option<crate::model::DeviceId>,
    ) -> Result<Option<Alarm>>;
    /// A tenant's alarms matching a filter, newest first.
    async fn list_alarms(&self, tenant: TenantId, filter: &AlarmFilter) -> Result<Paged<Alarm>>;
    /// Counts of a tenant's alarms, or of one device's.
    async fn count_alarms(
        &self,
        tenant: TenantId,
        device: Option<crate::model::DeviceId>,
    ) -> Result<AlarmCounts>;
    /// Appends to an alarm's history.
    async fn append_alarm_event(&self, event: &AlarmEvent) -> Result<()>;
    /// An alarm's history, oldest first.
    async fn list_alarm_events(&self, tenant: TenantId, alarm: AlarmId) -> Result<Vec<AlarmEvent>>;

    /// Stores a new notification channel.
    async fn create_channel(&self, channel: &NotificationChannel) -> Result<()>;
    /// One channel of a tenant.
    async fn get_channel(
        &self,
        tenant: TenantId,
        id: ChannelId,
    ) -> Result<Option<NotificationChannel>>;
    /// A tenant's channels, by name.
    async fn list_channels(
        &self,
        tenant: TenantId,
        page: Page,
    ) -> Result<Paged<NotificationChannel>>;
    /// Replaces a channel.
    async fn update_channel(&self, channel: &NotificationChannel) -> Result<()>;
    /// Deletes a channel.
    async fn delete_channel(&self, tenant: TenantId, id: ChannelId) -> Result<()>;

    /// Records a notification (usually `Pending`).
    async fn create_notification(&self, record: &NotificationRecord) -> Result<()>;
    /// Updates a notification's status, attempts, detail and `updated_at`.
    async fn update_notification(&self, record: &NotificationRecord) -> Result<()>;
    /// A tenant's notification history, newest first.
    async fn list_notifications(
        &self,
        tenant: TenantId,
        page: Page,
    ) -> Result<Paged<NotificationRecord>>;

    /// Inserts or replaces the state of `(rule_id, scope)`.
    async fn put_rule_state(&self, state: &RuleState) -> Result<()>;
    /// Removes the state of `(rule, scope)`; absent is not an error.
    async fn delete_rule_state(&self, rule: RuleId, scope: &str) -> Result<()>;
    /// Every stored state of a rule.
    async fn list_rule_states(&self, rule: RuleId) -> Result<Vec<RuleState>>;
}

/// Shared handle to a rule store.
pub type RuleStoreRef = Arc<dyn RuleStore>;

/// A message to deliver through a [`NotificationChannel`].
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// The alarm it is about, if any.
    pub alarm_id: Option<AlarmId>,
    /// The rule that caused it, if any.
    pub rule_id: Option<RuleId>,
    /// Subject / title.
    pub subject: String,
    /// Body text.
    pub body: String,
    /// Structured data sent along (the webhook's JSON `data` field).
    pub data: serde_json::Value,
}

/// Delivers notifications and records each in the notification history.
#[async_trait]
pub trait Notifier: std::fmt::Debug + Send + Sync + 'static {
    /// Records the notification as pending and starts delivering it (retries happen in
    /// the background); returns the record as created.
    async fn notify(
        &self,
        channel: &NotificationChannel,
        message: Notification,
    ) -> Result<NotificationRecord>;
}

/// Shared handle to a notifier.
pub type NotifierRef = Arc<dyn Notifier>;

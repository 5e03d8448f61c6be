//! A node whose rule engine runs on a manual clock, with a second handle on its rule
//! store to define rules and read alarms; waits on the engine.

use std::sync::Arc;

use serde_json::Value;
use tp_core::rules::{
    Action, Alarm, AlarmFilter, Condition, Rule, RuleEngineControl, RuleId, RuleStoreRef,
    TriggerGroup,
};
use tp_core::{DeviceId, TenantId};
use tp_node::platform::PlatformOptions;
use tp_rules::ManualClock;

use super::{Node, Platform, PlatformConfig, TestDevice};

/// 30 s past a whole minute (1_800_000_000_000 is divisible by 60_000): where the
/// rule clocks start.
pub(crate) const START: i64 = 1_800_000_000_000 + 30_000;

/// Starts a signed-in node on `config` whose rule engine's clock stands at `now`
/// until advanced; `dir` goes with the node. Also returns a second handle on the
/// node's rule store and the clock.
pub(crate) async fn start_with_clock(
    config: PlatformConfig,
    now: i64,
    dir: tempfile::TempDir,
) -> (Node, RuleStoreRef, Arc<ManualClock>) {
    let metadata_url = config.metadata_url();
    let clock = ManualClock::new(now);
    let platform = Platform::start_with(
        config,
        PlatformOptions {
            rule_clock: Some(clock.clone()),
        },
    )
    .await
    .unwrap();
    // A second handle on the node's database, to define rules and read alarms.
    let (_, _, rules) = tp_storage::open_rules(&metadata_url).await.unwrap();
    (Node::signed_in(platform, dir).await, rules, clock)
}

/// Stores an enabled rule created at [`START`], one trigger group per entry of
/// `groups`, and tells `node`'s engine.
pub(crate) async fn add_rule(
    node: &Node,
    rules: &RuleStoreRef,
    tenant: TenantId,
    name: &str,
    groups: Vec<Vec<Condition>>,
    actions: Vec<Action>,
) -> RuleId {
    let rule = Rule {
        id: RuleId::new(),
        tenant_id: tenant,
        name: name.to_owned(),
        description: None,
        enabled: true,
        trigger_groups: groups
            .into_iter()
            .map(|conditions| TriggerGroup { conditions })
            .collect(),
        actions,
        created_at: START,
        updated_at: START,
    };
    rules.create_rule(&rule).await.unwrap();
    node.platform.rule_engine().rules_changed(tenant).await;
    rule.id
}

/// The alarms `rule` raised in `tenant`.
pub(crate) async fn alarms(rules: &RuleStoreRef, tenant: TenantId, rule: RuleId) -> Vec<Alarm> {
    rules
        .list_alarms(
            tenant,
            &AlarmFilter {
                rule_id: Some(rule),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .items
}

impl Node {
    /// The device's id and its tenant's.
    pub(crate) async fn tenant_of(&self, d: &TestDevice) -> (DeviceId, TenantId) {
        let id: DeviceId = d.id.parse().unwrap();
        let dev = self
            .platform
            .metadata()
            .get_device_by_id(id)
            .await
            .unwrap()
            .unwrap();
        (id, dev.tenant_id)
    }

    /// The rows of the device's command log.
    pub(crate) async fn commands(&self, d: &TestDevice) -> Vec<Value> {
        self.log(d).await["items"].as_array().unwrap().clone()
    }

    /// Waits until the engine has evaluated `n` inputs in total, then until their
    /// actions are done.
    pub(crate) async fn settle(&self, n: u64) {
        let engine = self.platform.rule_engine();
        tp_core::testing::eventually_ok("the engine evaluates every input", || async {
            let stats = engine.stats();
            if stats.evaluated >= n {
                Ok(())
            } else {
                Err(stats)
            }
        })
        .await;
        engine.flush().await;
    }

    /// Flushes the engine until `done` holds for what `read` returns, and returns
    /// that.
    pub(crate) async fn flushed_until<T, F>(
        &self,
        what: &str,
        read: impl Fn() -> F,
        done: impl Fn(&T) -> bool,
    ) -> T
    where
        T: std::fmt::Debug,
        F: std::future::Future<Output = T>,
    {
        tp_core::testing::eventually_ok(what, || async {
            self.platform.rule_engine().flush().await;
            let v = read().await;
            if done(&v) { Ok(v) } else { Err(v) }
        })
        .await
    }
}

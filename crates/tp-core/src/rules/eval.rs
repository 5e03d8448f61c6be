//! Pure rule evaluation: no I/O and no clock reads (`now` is always a parameter), so
//! the runtime can drive it from the ingest path, from timers and from a manual clock
//! in tests, and a proptest can check it against a reference model.
//!
//! # How it works
//! [`Evaluator::load`] compiles the enabled rules into an index keyed by device id and
//! profile id, so one input only touches the rules that watch its device (with 1,000
//! rules loaded a message from a device watched by three rules costs three rule
//! evaluations, not 1,000).
//!
//! Each rule keeps evaluation state per *scope*: the device whose data is evaluated
//! for rules with profile-wide conditions (every device of the profile is evaluated,
//! and alarmed, on its own), else one scope for the whole rule. Per condition the
//! state holds the last value, whether the comparison holds and since when (for
//! `duration_secs`); per scope whether the rule is firing.
//!
//! # Firing semantics (edge-triggered)
//! - A trigger group made of device-value, status and time-range conditions is a
//!   *level*: the rule is firing while any such group holds. Going from not-firing to
//!   firing is a [`TransitionKind::Fired`] (actions run once), new data that keeps it
//!   firing is [`TransitionKind::Repeated`] (the open alarm counts an occurrence, no
//!   command is sent again), going back is [`TransitionKind::Cleared`] (the open alarm
//!   is cleared).
//! - Groups with an event condition or a schedule are *pulses*: each event or fire
//!   time that satisfies the group is a [`TransitionKind::Pulse`] (actions run each
//!   time); they never clear.
//! - "Held for N seconds" windows complete without new data: [`Evaluator::next_deadline`]
//!   says when the next window or schedule is due and [`Evaluator::tick`] evaluates it.
//!
//! # Values
//! Numbers compare numerically (integer against float too), strings by equality and
//! lexicographic order, booleans by equality; `between` is inclusive; `in` is list
//! membership. A type mismatch is simply false.
//!
//! Time-range conditions are checked when data arrives (or a window completes): a
//! range boundary alone does not clear a firing rule.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::model::{Condition, DataKind, DeviceSource, Operator, Rule, RuleId, RuleState};
use super::schedule::{CompiledSchedule, in_time_range, next_time_range_change};
use super::{RuleInput, RuleInputData};
use crate::model::{DeviceId, ProfileId, Timestamp, Value};

/// Where a rule's evaluation state lives: one device (profile-wide rules, or rules
/// watching one device), or the rule as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// The state of one device.
    Device(DeviceId),
    /// The rule's single state (schedule-only rules, rules over several fixed devices).
    Rule,
}

impl Scope {
    /// The device an alarm or a triggering-device action of this scope refers to.
    pub fn device(self) -> Option<DeviceId> {
        match self {
            Self::Device(d) => Some(d),
            Self::Rule => None,
        }
    }

    /// The [`RuleState::scope`] string: the device id, or `"rule"`.
    pub fn key(self) -> String {
        match self {
            Self::Device(d) => d.to_string(),
            Self::Rule => "rule".to_owned(),
        }
    }

    fn parse(s: &str) -> Option<Self> {
        if s == "rule" {
            return Some(Self::Rule);
        }
        s.parse().ok().map(Self::Device)
    }
}

/// What happened to a rule in one scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionKind {
    /// Went from not-firing to firing: run the actions.
    Fired,
    /// New data while firing: count an alarm occurrence, nothing else.
    Repeated,
    /// Stopped firing: clear the open alarm.
    Cleared,
    /// An event or schedule satisfied a pulse group: run the actions.
    Pulse,
}

/// One output of the evaluator.
#[derive(Debug, Clone)]
pub struct Transition {
    /// The rule (as loaded).
    pub rule: Arc<Rule>,
    /// Its scope.
    pub scope: Scope,
    /// What happened.
    pub kind: TransitionKind,
    /// The trigger group that holds (none for [`TransitionKind::Cleared`]).
    pub group: Option<usize>,
    /// Evaluation time.
    pub ts: Timestamp,
    /// The nominal fire time of a schedule (the multi-node lock key).
    pub fire_ts: Option<Timestamp>,
    /// The latest watched values of the scope, e.g. `{"temp": 35}`.
    pub details: serde_json::Value,
}

/// Right-hand side of a comparison, classified once at load time.
#[derive(Debug, Clone, PartialEq)]
pub enum Rhs {
    /// Integer literal.
    Int(i64),
    /// Float literal.
    Float(f64),
    /// String literal.
    Str(String),
    /// Boolean literal.
    Bool(bool),
    /// Object or array, compared by equality.
    Json(serde_json::Value),
    /// `[lo, hi]` of `between`.
    Range(Box<(Rhs, Rhs)>),
    /// Members of `in`.
    List(Vec<Rhs>),
    /// No value (`null`, or a malformed `between`): never matches a value.
    Null,
}

impl Rhs {
    /// Classifies `value` for `op`: `between` takes `[lo, hi]`, `in` an array (or a
    /// comma-separated string, as ThingsPanel stores it), the rest a scalar.
    pub fn compile(op: Operator, value: &serde_json::Value) -> Self {
        match (op, value) {
            (Operator::Between, serde_json::Value::Array(a)) if a.len() == 2 => {
                Self::Range(Box::new((Self::scalar(&a[0]), Self::scalar(&a[1]))))
            }
            (Operator::Between, _) => Self::Null,
            (Operator::In, serde_json::Value::Array(a)) => {
                Self::List(a.iter().map(Self::scalar).collect())
            }
            (Operator::In, serde_json::Value::String(s)) => Self::List(
                s.split(',')
                    .map(|p| Self::Str(p.trim().to_owned()))
                    .collect(),
            ),
            (Operator::In, other) => Self::List(vec![Self::scalar(other)]),
            (_, v) => Self::scalar(v),
        }
    }

    fn scalar(v: &serde_json::Value) -> Self {
        match v {
            serde_json::Value::Null => Self::Null,
            serde_json::Value::Bool(b) => Self::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Self::Int(i),
                None => n.as_f64().map_or(Self::Null, Self::Float),
            },
            serde_json::Value::String(s) => Self::Str(s.clone()),
            other => Self::Json(other.clone()),
        }
    }
}

/// Equality of a value and a literal; `None` when the types do not compare.
fn value_eq(l: &Value, r: &Rhs) -> Option<bool> {
    Some(match (l, r) {
        (Value::Integer(a), Rhs::Int(b)) => a == b,
        (Value::Integer(_) | Value::Float(_), Rhs::Int(_) | Rhs::Float(_)) => {
            value_ord(l, r)? == Ordering::Equal
        }
        (Value::String(a), Rhs::Str(b)) => a == b,
        (Value::Bool(a), Rhs::Bool(b)) => a == b,
        (Value::Json(a), Rhs::Json(b)) => a == b,
        _ => return None,
    })
}

/// Order of a value against a literal: numbers and strings only.
fn value_ord(l: &Value, r: &Rhs) -> Option<Ordering> {
    match (l, r) {
        (Value::Integer(a), Rhs::Int(b)) => Some(a.cmp(b)),
        (Value::Integer(a), Rhs::Float(b)) => (*a as f64).partial_cmp(b),
        (Value::Float(a), Rhs::Int(b)) => a.partial_cmp(&(*b as f64)),
        (Value::Float(a), Rhs::Float(b)) => a.partial_cmp(b),
        (Value::String(a), Rhs::Str(b)) => Some(a.as_str().cmp(b.as_str())),
        _ => None,
    }
}

/// Whether `lhs op rhs` holds; a type mismatch is `false`.
pub fn compare(op: Operator, lhs: &Value, rhs: &Rhs) -> bool {
    use Ordering::*;
    match op {
        Operator::Eq => value_eq(lhs, rhs) == Some(true),
        Operator::Ne => value_eq(lhs, rhs) == Some(false),
        Operator::Gt => value_ord(lhs, rhs) == Some(Greater),
        Operator::Lt => value_ord(lhs, rhs) == Some(Less),
        Operator::Ge => matches!(value_ord(lhs, rhs), Some(Greater | Equal)),
        Operator::Le => matches!(value_ord(lhs, rhs), Some(Less | Equal)),
        Operator::Between => match rhs {
            Rhs::Range(r) => {
                matches!(value_ord(lhs, &r.0), Some(Greater | Equal))
                    && matches!(value_ord(lhs, &r.1), Some(Less | Equal))
            }
            _ => false,
        },
        Operator::In => match rhs {
            Rhs::List(items) => items.iter().any(|i| value_eq(lhs, i) == Some(true)),
            _ => false,
        },
    }
}

#[derive(Debug)]
struct DataCond {
    source: DeviceSource,
    data: DataKind,
    key: String,
    op: Operator,
    rhs: Rhs,
    duration_ms: i64,
}

#[derive(Debug)]
enum CCond {
    Data(DataCond),
    TimeRange {
        start: u16,
        end: u16,
        weekdays: Vec<u8>,
        offset: i32,
    },
    Schedule,
}

#[derive(Debug)]
struct CGroup {
    conds: Vec<u32>,
    /// Has an event condition or a schedule: fires per occurrence, never clears.
    pulse: bool,
    schedule: Option<CompiledSchedule>,
}

#[derive(Debug)]
struct CRule {
    rule: Arc<Rule>,
    conds: Vec<CCond>,
    groups: Vec<CGroup>,
    /// Has profile-wide conditions: one scope per device.
    per_device: bool,
    default_scope: Scope,
}

/// The scopes a rule-wide event (a completed window, a schedule, a time-range bound)
/// evaluates: every device seen so far for a per-device rule, in a stable order, else
/// the rule's one scope.
fn every_scope(cr: &CRule, st: &RuleRuntime) -> Vec<Scope> {
    if cr.per_device {
        let mut v: Vec<Scope> = st.scopes.keys().copied().collect();
        v.sort_unstable();
        v
    } else {
        vec![cr.default_scope]
    }
}

impl CRule {
    /// The next time one of the daily windows limiting this rule's data conditions
    /// opens or closes (schedule groups check their windows when they fire).
    fn next_window_change(&self, now: Timestamp) -> Option<Timestamp> {
        self.groups
            .iter()
            .filter(|g| {
                g.schedule.is_none()
                    && g.conds
                        .iter()
                        .any(|c| matches!(self.conds[*c as usize], CCond::Data(_)))
            })
            .flat_map(|g| g.conds.iter())
            .filter_map(|c| match &self.conds[*c as usize] {
                CCond::TimeRange {
                    start,
                    end,
                    weekdays,
                    offset,
                } => next_time_range_change(now, *start, *end, weekdays, *offset),
                _ => None,
            })
            .min()
    }

    fn compile(rule: Rule, errors: &mut Vec<(RuleId, String)>) -> Self {
        let mut conds = Vec::new();
        let mut groups = Vec::new();
        let mut devices = Vec::new();
        let mut per_device = false;
        for (gi, group) in rule.trigger_groups.iter().enumerate() {
            let mut g = CGroup {
                conds: Vec::new(),
                pulse: false,
                schedule: None,
            };
            for cond in &group.conditions {
                let c = match cond {
                    Condition::Device {
                        source,
                        data,
                        key,
                        operator,
                        value,
                        duration_secs,
                    } => {
                        match source {
                            DeviceSource::Device(d) => {
                                if !devices.contains(d) {
                                    devices.push(*d);
                                }
                            }
                            DeviceSource::Profile(_) => per_device = true,
                        }
                        if *data == DataKind::Event {
                            g.pulse = true;
                        }
                        let rhs = match data {
                            DataKind::Status => status_rhs(value),
                            DataKind::Event if value.is_null() => Rhs::Null,
                            _ => Rhs::compile(*operator, value),
                        };
                        CCond::Data(DataCond {
                            source: *source,
                            data: *data,
                            key: key.clone(),
                            op: *operator,
                            rhs,
                            duration_ms: i64::from(duration_secs.unwrap_or(0)) * 1000,
                        })
                    }
                    Condition::TimeRange {
                        start_minute,
                        end_minute,
                        weekdays,
                        utc_offset_minutes,
                    } => CCond::TimeRange {
                        start: *start_minute,
                        end: *end_minute,
                        weekdays: weekdays.clone(),
                        offset: *utc_offset_minutes,
                    },
                    Condition::Schedule(s) => {
                        g.pulse = true;
                        match CompiledSchedule::new(s, rule.created_at) {
                            Ok(c) if g.schedule.is_none() => g.schedule = Some(c),
                            Ok(_) => errors.push((
                                rule.id,
                                format!("group {gi}: more than one schedule; the first is used"),
                            )),
                            Err(e) => errors.push((rule.id, format!("group {gi}: {e}"))),
                        }
                        CCond::Schedule
                    }
                };
                g.conds.push(conds.len() as u32);
                conds.push(c);
            }
            groups.push(g);
        }
        let default_scope = match devices.as_slice() {
            [d] => Scope::Device(*d),
            _ => Scope::Rule,
        };
        Self {
            rule: Arc::new(rule),
            conds,
            groups,
            per_device,
            default_scope,
        }
    }

    /// Whether condition `cid` holds in `scope` at `now` (events never hold here:
    /// they only hold while their own input is evaluated).
    fn cond_true(&self, st: &RuleRuntime, scope: Scope, cid: u32, now: Timestamp) -> bool {
        match &self.conds[cid as usize] {
            CCond::Data(c) => {
                if c.data == DataKind::Event {
                    return false;
                }
                st.slot(c, scope, cid).is_some_and(|s| s.is_true(c, now))
            }
            CCond::TimeRange {
                start,
                end,
                weekdays,
                offset,
            } => in_time_range(now, *start, *end, weekdays, *offset),
            CCond::Schedule => false,
        }
    }

    /// Latest watched values of a scope, for alarm details and notifications.
    fn details(&self, st: &RuleRuntime, scope: Scope) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (cid, c) in self.conds.iter().enumerate() {
            let CCond::Data(c) = c else { continue };
            let Some(slot) = st.slot(c, scope, cid as u32) else {
                continue;
            };
            let Some(v) = &slot.value else { continue };
            let key = match c.data {
                DataKind::Status => "online".to_owned(),
                _ => c.key.clone(),
            };
            map.insert(key, v.to_json());
        }
        serde_json::Value::Object(map)
    }
}

/// `"online"`/`"ON-LINE"`/`true` and `"offline"`/`"OFF-LINE"`/`false`.
fn status_rhs(v: &serde_json::Value) -> Rhs {
    match v {
        serde_json::Value::Bool(b) => Rhs::Bool(*b),
        serde_json::Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "online" | "on-line" | "on_line" => Rhs::Bool(true),
            "offline" | "off-line" | "off_line" => Rhs::Bool(false),
            _ => Rhs::Null,
        },
        _ => Rhs::Null,
    }
}

/// What one condition last saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Slot {
    #[serde(default)]
    value: Option<Value>,
    #[serde(default)]
    ts: Timestamp,
    #[serde(default)]
    holds: bool,
    #[serde(default)]
    since: Option<Timestamp>,
}

impl Slot {
    fn is_true(&self, c: &DataCond, now: Timestamp) -> bool {
        self.holds
            && self
                .since
                .is_some_and(|t| now.saturating_sub(t) >= c.duration_ms)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ScopeState {
    #[serde(default)]
    firing: bool,
    #[serde(default)]
    slots: BTreeMap<u32, Slot>,
}

#[derive(Debug, Default)]
struct RuleRuntime {
    /// Slots of fixed-device conditions, shared by every scope.
    shared: BTreeMap<u32, Slot>,
    scopes: HashMap<Scope, ScopeState>,
    /// Per schedule group: last nominal fire time and the next one.
    last_fire: HashMap<u32, Timestamp>,
    next_fire: HashMap<u32, Timestamp>,
    /// Per schedule group that has not fired yet: when it was armed (fire times
    /// after it are due), persisted so a first fire time missed while the node was
    /// down still fires once after a restart.
    armed: HashMap<u32, Timestamp>,
}

impl RuleRuntime {
    fn slot(&self, c: &DataCond, scope: Scope, cid: u32) -> Option<&Slot> {
        match c.source {
            DeviceSource::Device(_) => self.shared.get(&cid),
            DeviceSource::Profile(_) => self.scopes.get(&scope)?.slots.get(&cid),
        }
    }
}

/// A piece of state to persist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Dirty {
    Shared,
    Scope(Scope),
    Schedule(u32),
}

#[derive(Serialize, Deserialize)]
struct Persisted {
    /// The rule's `updated_at` the state belongs to: slots of an edited rule are
    /// dropped (condition positions may have moved), its firing flags kept.
    v: Timestamp,
    #[serde(default)]
    firing: bool,
    #[serde(default)]
    slots: BTreeMap<u32, Slot>,
    #[serde(default)]
    last_fire: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    armed: Option<Timestamp>,
}

type Deadline = Reverse<(Timestamp, u32, Option<Scope>)>;

/// The compiled rules and their evaluation state. See the module docs.
#[derive(Debug, Default)]
pub struct Evaluator {
    rules: Vec<CRule>,
    state: Vec<RuleRuntime>,
    by_id: HashMap<RuleId, u32>,
    by_device: HashMap<DeviceId, Vec<u32>>,
    by_profile: HashMap<ProfileId, Vec<u32>>,
    /// Duration windows completing: (deadline, rule, scope; `None` = every scope).
    deadlines: BinaryHeap<Deadline>,
    /// Schedules: (fire time, rule, group).
    schedules: BinaryHeap<Reverse<(Timestamp, u32, u32)>>,
    /// Time-range bounds of rules whose data conditions are limited to a daily window:
    /// (when the window opens or closes, rule). Re-evaluated then, so a window's end
    /// clears a firing rule without new data.
    boundaries: BinaryHeap<Reverse<(Timestamp, u32)>>,
    dirty: HashSet<(u32, Dirty)>,
    errors: Vec<(RuleId, String)>,
}

impl Evaluator {
    /// An evaluator without rules.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of loaded rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// No rules loaded.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Problems found compiling the loaded rules (e.g. a bad cron expression); the
    /// affected group never fires.
    pub fn errors(&self) -> &[(RuleId, String)] {
        &self.errors
    }

    /// Replaces the rule set (disabled rules are skipped). State of rules that are
    /// still loaded and unchanged (same `updated_at`) is kept; an edited rule keeps
    /// only whether each scope is firing, so its open alarm still clears. Returns the
    /// ids of rules that had no state here, whose persisted state the caller may
    /// [`Self::import_states`].
    pub fn load(&mut self, rules: impl IntoIterator<Item = Rule>, now: Timestamp) -> Vec<RuleId> {
        let mut old_rules: HashMap<RuleId, (Timestamp, RuleRuntime)> = HashMap::new();
        for (cr, st) in self.rules.drain(..).zip(self.state.drain(..)) {
            old_rules.insert(cr.rule.id, (cr.rule.updated_at, st));
        }
        self.by_id.clear();
        self.by_device.clear();
        self.by_profile.clear();
        self.dirty.clear();
        self.errors.clear();
        let mut fresh = Vec::new();
        for rule in rules {
            if !rule.enabled || self.by_id.contains_key(&rule.id) {
                continue;
            }
            let ri = self.rules.len() as u32;
            let st = match old_rules.remove(&rule.id) {
                Some((v, st)) if v == rule.updated_at => st,
                Some((_, old)) => RuleRuntime {
                    scopes: old
                        .scopes
                        .into_iter()
                        .filter(|(_, s)| s.firing)
                        .map(|(k, _)| {
                            (
                                k,
                                ScopeState {
                                    firing: true,
                                    slots: BTreeMap::new(),
                                },
                            )
                        })
                        .collect(),
                    ..Default::default()
                },
                None => {
                    fresh.push(rule.id);
                    RuleRuntime::default()
                }
            };
            let cr = CRule::compile(rule, &mut self.errors);
            self.by_id.insert(cr.rule.id, ri);
            for c in &cr.conds {
                let CCond::Data(c) = c else { continue };
                let list = match c.source {
                    DeviceSource::Device(d) => self.by_device.entry(d).or_default(),
                    DeviceSource::Profile(p) => self.by_profile.entry(p).or_default(),
                };
                if list.last() != Some(&ri) {
                    list.push(ri);
                }
            }
            self.rules.push(cr);
            self.state.push(st);
        }
        self.rebuild_timers(now);
        fresh
    }

    /// Restores persisted state (from [`Self::take_dirty`] of an earlier run) of loaded
    /// rules; states of unknown rules are ignored.
    pub fn import_states(&mut self, states: &[RuleState], now: Timestamp) {
        for s in states {
            let Some(&ri) = self.by_id.get(&s.rule_id) else {
                continue;
            };
            let Ok(p) = serde_json::from_value::<Persisted>(s.state.clone()) else {
                continue;
            };
            let same = p.v == self.rules[ri as usize].rule.updated_at;
            let st = &mut self.state[ri as usize];
            if s.scope == "shared" {
                if same {
                    st.shared = p.slots;
                }
            } else if let Some(g) = s.scope.strip_prefix("schedule:") {
                if let (true, Ok(g)) = (same, g.parse::<u32>()) {
                    if let Some(t) = p.last_fire {
                        st.last_fire.insert(g, t);
                    }
                    if let Some(t) = p.armed {
                        st.armed.insert(g, t);
                    }
                    if p.last_fire.is_some() || p.armed.is_some() {
                        st.next_fire.remove(&g);
                    }
                }
            } else if let Some(scope) = Scope::parse(&s.scope) {
                let slots = if same { p.slots } else { BTreeMap::new() };
                st.scopes.insert(
                    scope,
                    ScopeState {
                        firing: p.firing,
                        slots,
                    },
                );
            }
        }
        self.rebuild_timers(now);
    }

    fn rebuild_timers(&mut self, now: Timestamp) {
        self.deadlines.clear();
        self.schedules.clear();
        self.boundaries.clear();
        for (ri, (cr, st)) in self.rules.iter().zip(self.state.iter_mut()).enumerate() {
            let ri = ri as u32;
            if let Some(t) = cr.next_window_change(now) {
                self.boundaries.push(Reverse((t, ri)));
            }
            for (cid, c) in cr.conds.iter().enumerate() {
                let CCond::Data(c) = c else { continue };
                if c.duration_ms == 0 {
                    continue;
                }
                let cid = cid as u32;
                if let Some(s) = st.shared.get(&cid)
                    && let (true, Some(since)) = (s.holds, s.since)
                {
                    self.deadlines
                        .push(Reverse((since.saturating_add(c.duration_ms), ri, None)));
                }
                for (scope, ss) in &st.scopes {
                    if let Some(s) = ss.slots.get(&cid)
                        && let (true, Some(since)) = (s.holds, s.since)
                    {
                        self.deadlines.push(Reverse((
                            since.saturating_add(c.duration_ms),
                            ri,
                            Some(*scope),
                        )));
                    }
                }
            }
            for (gi, g) in cr.groups.iter().enumerate() {
                let gi = gi as u32;
                let Some(sched) = &g.schedule else { continue };
                let next = match st.next_fire.get(&gi) {
                    Some(n) => Some(*n),
                    // A missed fire time since the last one (or, never fired, since
                    // the schedule was armed) fires once, late.
                    None => {
                        let after = match (st.last_fire.get(&gi), st.armed.get(&gi)) {
                            (Some(t), _) | (None, Some(t)) => *t,
                            (None, None) => {
                                let t = now.saturating_sub(1);
                                st.armed.insert(gi, t);
                                self.dirty.insert((ri, Dirty::Schedule(gi)));
                                t
                            }
                        };
                        sched.next_after(after)
                    }
                };
                match next {
                    Some(n) => {
                        st.next_fire.insert(gi, n);
                        self.schedules.push(Reverse((n, ri, gi)));
                    }
                    None => {
                        st.next_fire.remove(&gi);
                    }
                }
            }
        }
    }

    /// The earliest time [`Self::tick`] has something to do: a duration window
    /// completes, a schedule is due or a daily time range opens or closes.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let d = self.deadlines.peek().map(|r| r.0.0);
        let s = self.schedules.peek().map(|r| r.0.0);
        let b = self.boundaries.peek().map(|r| r.0.0);
        [d, s, b].into_iter().flatten().min()
    }

    /// Evaluates one input at `now` (the engine's clock, used for duration windows).
    pub fn on_input(&mut self, input: &RuleInput, now: Timestamp) -> Vec<Transition> {
        let mut out = Vec::new();
        self.on_input_into(input, now, &mut out);
        out
    }

    /// [`Self::on_input`] appending to `out`.
    pub fn on_input_into(&mut self, input: &RuleInput, now: Timestamp, out: &mut Vec<Transition>) {
        let empty: &[u32] = &[];
        let a = self
            .by_device
            .get(&input.device_id)
            .map_or(empty, Vec::as_slice);
        let b = input
            .profile_id
            .and_then(|p| self.by_profile.get(&p))
            .map_or(empty, Vec::as_slice);
        // Both lists are ascending: merge without duplicates.
        let (mut i, mut j) = (0, 0);
        let mut candidates: Vec<u32> = Vec::with_capacity(a.len() + b.len());
        while i < a.len() || j < b.len() {
            let next = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) if x == y => {
                    i += 1;
                    j += 1;
                    *x
                }
                (Some(x), Some(y)) if x < y => {
                    i += 1;
                    *x
                }
                (Some(x), None) => {
                    i += 1;
                    *x
                }
                (_, Some(y)) => {
                    j += 1;
                    *y
                }
                (None, None) => break,
            };
            candidates.push(next);
        }
        for ri in candidates {
            if self.rules[ri as usize].rule.tenant_id == input.tenant_id {
                self.apply_input(ri, input, now, out);
            }
        }
    }

    fn apply_input(
        &mut self,
        ri: u32,
        input: &RuleInput,
        now: Timestamp,
        out: &mut Vec<Transition>,
    ) {
        let cr = &self.rules[ri as usize];
        let st = &mut self.state[ri as usize];
        let in_profile = |p: &ProfileId| input.profile_id.as_ref() == Some(p);
        let device_scope = Scope::Device(input.device_id);
        let input_scope = if cr.per_device {
            let watched = cr.conds.iter().any(|c| {
                matches!(c, CCond::Data(DataCond { source: DeviceSource::Profile(p), .. }) if in_profile(p))
            });
            watched.then_some(device_scope)
        } else {
            Some(cr.default_scope)
        };
        let mut touched_shared = false;
        let mut touched_scope = false;
        let mut event_hits: Vec<(u32, bool)> = Vec::new();
        for (cid, c) in cr.conds.iter().enumerate() {
            let CCond::Data(c) = c else { continue };
            let cid = cid as u32;
            let shared = match &c.source {
                DeviceSource::Device(d) if *d == input.device_id => true,
                DeviceSource::Profile(p) if in_profile(p) => false,
                _ => continue,
            };
            let value = match (c.data, &input.data) {
                (DataKind::Telemetry, RuleInputData::Telemetry { values })
                | (DataKind::Attribute, RuleInputData::Attributes { values }) => {
                    match values.iter().rev().find(|kv| kv.key == c.key) {
                        Some(kv) => kv.value.clone(),
                        None => continue,
                    }
                }
                (DataKind::Status, RuleInputData::Status { online }) => Value::Bool(*online),
                (DataKind::Event, RuleInputData::Event { method, params }) => {
                    if *method != c.key {
                        continue;
                    }
                    let holds = match (&c.rhs, Value::from_json(params.clone())) {
                        (Rhs::Null, _) => true,
                        (rhs, Some(v)) => compare(c.op, &v, rhs),
                        (_, None) => false,
                    };
                    event_hits.push((cid, holds));
                    continue;
                }
                _ => continue,
            };
            let holds = compare(c.op, &value, &c.rhs);
            let (slot, dirty, scope) = if shared {
                touched_shared = true;
                (st.shared.entry(cid).or_default(), Dirty::Shared, None)
            } else {
                touched_scope = true;
                (
                    st.scopes
                        .entry(device_scope)
                        .or_default()
                        .slots
                        .entry(cid)
                        .or_default(),
                    Dirty::Scope(device_scope),
                    Some(device_scope),
                )
            };
            slot.value = Some(value);
            slot.ts = now;
            if slot.holds != holds {
                slot.holds = holds;
                slot.since = holds.then_some(now);
                self.dirty.insert((ri, dirty));
                if holds && c.duration_ms > 0 {
                    self.deadlines
                        .push(Reverse((now.saturating_add(c.duration_ms), ri, scope)));
                }
            }
        }
        if touched_shared && cr.per_device {
            let mut scopes: Vec<Scope> = st.scopes.keys().copied().collect();
            scopes.sort_unstable();
            for scope in scopes {
                self.eval_level(ri, scope, now, true, None, out);
            }
        } else if let Some(scope) = input_scope
            && (touched_shared || touched_scope)
        {
            self.eval_level(ri, scope, now, true, None, out);
        }
        if !event_hits.is_empty() {
            let scope = input_scope.unwrap_or(device_scope);
            self.eval_pulses(ri, scope, now, &event_hits, out);
        }
    }

    /// Re-evaluates the level groups of one scope and emits the edge, if any.
    fn eval_level(
        &mut self,
        ri: u32,
        scope: Scope,
        now: Timestamp,
        touched: bool,
        fire_ts: Option<Timestamp>,
        out: &mut Vec<Transition>,
    ) {
        let cr = &self.rules[ri as usize];
        let st = &mut self.state[ri as usize];
        let holding = cr.groups.iter().position(|g| {
            !g.pulse
                && !g.conds.is_empty()
                && g.conds.iter().all(|cid| cr.cond_true(st, scope, *cid, now))
        });
        let was = st.scopes.get(&scope).is_some_and(|s| s.firing);
        let kind = match (holding.is_some(), was) {
            (true, false) => TransitionKind::Fired,
            (true, true) if touched => TransitionKind::Repeated,
            (false, true) => TransitionKind::Cleared,
            _ => return,
        };
        if kind != TransitionKind::Repeated {
            st.scopes.entry(scope).or_default().firing = holding.is_some();
            self.dirty.insert((ri, Dirty::Scope(scope)));
        }
        out.push(Transition {
            rule: cr.rule.clone(),
            scope,
            kind,
            group: holding,
            ts: now,
            fire_ts,
            details: cr.details(st, scope),
        });
    }

    /// Pulse groups satisfied by the events of this input.
    fn eval_pulses(
        &mut self,
        ri: u32,
        scope: Scope,
        now: Timestamp,
        hits: &[(u32, bool)],
        out: &mut Vec<Transition>,
    ) {
        let cr = &self.rules[ri as usize];
        let st = &self.state[ri as usize];
        for (gi, g) in cr.groups.iter().enumerate() {
            if !g.pulse || g.schedule.is_some() {
                continue;
            }
            let mut any_hit = false;
            let all = g.conds.iter().all(|cid| {
                if let Some((_, holds)) = hits.iter().find(|(c, _)| c == cid) {
                    any_hit = true;
                    return *holds;
                }
                cr.cond_true(st, scope, *cid, now)
            });
            if any_hit && all {
                out.push(Transition {
                    rule: cr.rule.clone(),
                    scope,
                    kind: TransitionKind::Pulse,
                    group: Some(gi),
                    ts: now,
                    fire_ts: None,
                    details: cr.details(st, scope),
                });
            }
        }
    }

    /// Evaluates what is due at `now`: completed duration windows and schedules.
    pub fn tick(&mut self, now: Timestamp) -> Vec<Transition> {
        let mut out = Vec::new();
        while let Some(&Reverse((t, ri, scope))) = self.deadlines.peek() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            if ri as usize >= self.rules.len() {
                continue;
            }
            let scopes: Vec<Scope> = match scope {
                Some(s) => vec![s],
                None => every_scope(&self.rules[ri as usize], &self.state[ri as usize]),
            };
            for s in scopes {
                self.eval_level(ri, s, now, false, None, &mut out);
            }
        }
        while let Some(&Reverse((t, ri, gi))) = self.schedules.peek() {
            if t > now {
                break;
            }
            self.schedules.pop();
            self.fire_schedule(ri, gi, t, now, &mut out);
        }
        while let Some(&Reverse((t, ri))) = self.boundaries.peek() {
            if t > now {
                break;
            }
            self.boundaries.pop();
            let Some(cr) = self.rules.get(ri as usize) else {
                continue;
            };
            if let Some(next) = cr.next_window_change(t.max(now)) {
                self.boundaries.push(Reverse((next, ri)));
            }
            for s in every_scope(cr, &self.state[ri as usize]) {
                self.eval_level(ri, s, now, false, None, &mut out);
            }
        }
        out
    }

    fn fire_schedule(
        &mut self,
        ri: u32,
        gi: u32,
        fire_ts: Timestamp,
        now: Timestamp,
        out: &mut Vec<Transition>,
    ) {
        let Some(cr) = self.rules.get(ri as usize) else {
            return;
        };
        let st = &mut self.state[ri as usize];
        if st.next_fire.get(&gi) != Some(&fire_ts) {
            return;
        }
        let g = &cr.groups[gi as usize];
        st.last_fire.insert(gi, fire_ts);
        self.dirty.insert((ri, Dirty::Schedule(gi)));
        // Catching up after a pause fires once, then continues from now.
        match g
            .schedule
            .as_ref()
            .and_then(|s| s.next_after(fire_ts.max(now)))
        {
            Some(n) => {
                st.next_fire.insert(gi, n);
                self.schedules.push(Reverse((n, ri, gi)));
            }
            None => {
                st.next_fire.remove(&gi);
            }
        }
        for scope in every_scope(cr, st) {
            let all = g.conds.iter().all(|cid| {
                matches!(cr.conds[*cid as usize], CCond::Schedule)
                    || cr.cond_true(st, scope, *cid, now)
            });
            if all {
                out.push(Transition {
                    rule: cr.rule.clone(),
                    scope,
                    kind: TransitionKind::Pulse,
                    group: Some(gi as usize),
                    ts: now,
                    fire_ts: Some(fire_ts),
                    details: cr.details(st, scope),
                });
            }
        }
    }

    /// The state changed since the last call, as [`RuleState`] rows to persist
    /// (transitions and condition edges only, not every message).
    pub fn take_dirty(&mut self, now: Timestamp) -> Vec<RuleState> {
        let mut out = Vec::with_capacity(self.dirty.len());
        for (ri, d) in self.dirty.drain() {
            let (Some(cr), Some(st)) = (self.rules.get(ri as usize), self.state.get(ri as usize))
            else {
                continue;
            };
            let v = cr.rule.updated_at;
            let (scope, p) = match d {
                Dirty::Shared => (
                    "shared".to_owned(),
                    Persisted {
                        v,
                        firing: false,
                        slots: st.shared.clone(),
                        last_fire: None,
                        armed: None,
                    },
                ),
                Dirty::Scope(s) => {
                    let ss = st.scopes.get(&s).cloned().unwrap_or_default();
                    (
                        s.key(),
                        Persisted {
                            v,
                            firing: ss.firing,
                            slots: ss.slots,
                            last_fire: None,
                            armed: None,
                        },
                    )
                }
                Dirty::Schedule(g) => (
                    format!("schedule:{g}"),
                    Persisted {
                        v,
                        firing: false,
                        slots: BTreeMap::new(),
                        last_fire: st.last_fire.get(&g).copied(),
                        armed: st.armed.get(&g).copied(),
                    },
                ),
            };
            let Ok(state) = serde_json::to_value(&p) else {
                continue;
            };
            out.push(RuleState {
                rule_id: cr.rule.id,
                scope,
                state,
                updated_at: now,
            });
        }
        out.sort_by(|a, b| (a.rule_id, &a.scope).cmp(&(b.rule_id, &b.scope)));
        out
    }

    /// Whether `rule` is currently firing in `scope`.
    pub fn is_firing(&self, rule: RuleId, scope: Scope) -> bool {
        self.by_id
            .get(&rule)
            .and_then(|ri| self.state[*ri as usize].scopes.get(&scope))
            .is_some_and(|s| s.firing)
    }

    /// The loaded rule with this id.
    pub fn rule(&self, id: RuleId) -> Option<&Arc<Rule>> {
        self.by_id.get(&id).map(|ri| &self.rules[*ri as usize].rule)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::{KeyValue, TenantId};
    use crate::rules::model::{Schedule, ScheduleKind, TriggerGroup};

    fn rule(tenant: TenantId, groups: Vec<Vec<Condition>>) -> Rule {
        Rule {
            id: RuleId::new(),
            tenant_id: tenant,
            name: "r".into(),
            description: None,
            enabled: true,
            trigger_groups: groups
                .into_iter()
                .map(|conditions| TriggerGroup { conditions })
                .collect(),
            actions: vec![],
            created_at: 0,
            updated_at: 0,
        }
    }

    fn cond(source: DeviceSource, key: &str, op: Operator, value: serde_json::Value) -> Condition {
        Condition::Device {
            source,
            data: DataKind::Telemetry,
            key: key.into(),
            operator: op,
            value,
            duration_secs: None,
        }
    }

    fn tel(
        tenant: TenantId,
        dev: DeviceId,
        profile: Option<ProfileId>,
        kv: &[(&str, serde_json::Value)],
    ) -> RuleInput {
        RuleInput {
            device_id: dev,
            tenant_id: tenant,
            profile_id: profile,
            ts: 0,
            data: RuleInputData::Telemetry {
                values: kv
                    .iter()
                    .map(|(k, v)| KeyValue {
                        key: (*k).into(),
                        ts: 0,
                        value: Value::from_json(v.clone()).expect("value"),
                    })
                    .collect(),
            },
        }
    }

    fn kinds(t: &[Transition]) -> Vec<TransitionKind> {
        t.iter().map(|t| t.kind).collect()
    }

    #[test]
    fn operators_over_typed_values() {
        let c = |op, l: serde_json::Value, r: serde_json::Value| {
            compare(op, &Value::from_json(l).expect("v"), &Rhs::compile(op, &r))
        };
        use Operator::*;
        assert!(c(Gt, json!(35), json!(30)));
        assert!(c(Gt, json!(30.5), json!(30)));
        assert!(c(Eq, json!(30), json!(30.0)));
        assert!(c(Ne, json!(30), json!(31)));
        assert!(!c(Gt, json!(30), json!(30)));
        assert!(c(Ge, json!(30), json!(30)));
        assert!(c(Le, json!(29.9), json!(30)));
        assert!(c(Lt, json!(-1), json!(0.5)));
        assert!(c(Between, json!(10), json!([10, 20])));
        assert!(c(Between, json!(20.0), json!([10, 20])));
        assert!(!c(Between, json!(20.1), json!([10, 20])));
        assert!(!c(Between, json!(15), json!(10)));
        assert!(c(In, json!("b"), json!(["a", "b"])));
        assert!(c(In, json!("b"), json!("a, b ,c")));
        assert!(c(In, json!(2), json!([1, 2.0])));
        assert!(!c(In, json!(3), json!([1, 2])));
        assert!(c(Eq, json!("on"), json!("on")));
        assert!(c(Gt, json!("b"), json!("a")));
        assert!(c(Eq, json!(true), json!(true)));
        assert!(c(Ne, json!(true), json!(false)));
        // Type mismatches are false, for every operator.
        for op in [Eq, Ne, Gt, Lt, Ge, Le, Between, In] {
            assert!(!c(op, json!("35"), json!(30)), "{op:?}");
            assert!(!c(op, json!(true), json!(1)), "{op:?}");
            assert!(!c(op, json!({"a": 1}), json!(1)), "{op:?}");
        }
        assert!(!c(Gt, json!(true), json!(false)));
    }

    #[test]
    fn edge_triggered_fire_repeat_clear() {
        let t = TenantId::new();
        let d = DeviceId::new();
        let r = rule(
            t,
            vec![vec![cond(
                DeviceSource::Device(d),
                "temp",
                Operator::Gt,
                json!(30),
            )]],
        );
        let mut ev = Evaluator::new();
        ev.load([r.clone()], 0);
        assert!(kinds(&ev.on_input(&tel(t, d, None, &[("temp", json!(25))]), 1)).is_empty());
        let fired = ev.on_input(&tel(t, d, None, &[("temp", json!(35))]), 2);
        assert_eq!(kinds(&fired), [TransitionKind::Fired]);
        assert_eq!(fired[0].scope, Scope::Device(d));
        assert_eq!(fired[0].details, json!({"temp": 35}));
        assert_eq!(
            kinds(&ev.on_input(&tel(t, d, None, &[("temp", json!(36))]), 3)),
            [TransitionKind::Repeated]
        );
        // Unwatched keys and other devices and tenants do nothing.
        assert!(
            ev.on_input(&tel(t, d, None, &[("hum", json!(1))]), 4)
                .is_empty()
        );
        assert!(
            ev.on_input(&tel(t, DeviceId::new(), None, &[("temp", json!(99))]), 4)
                .is_empty()
        );
        assert!(
            ev.on_input(&tel(TenantId::new(), d, None, &[("temp", json!(10))]), 4)
                .is_empty()
        );
        assert!(ev.is_firing(r.id, Scope::Device(d)));
        assert_eq!(
            kinds(&ev.on_input(&tel(t, d, None, &[("temp", json!(20))]), 5)),
            [TransitionKind::Cleared]
        );
        assert!(
            ev.on_input(&tel(t, d, None, &[("temp", json!(19))]), 6)
                .is_empty()
        );
        let dirty = ev.take_dirty(7);
        assert_eq!(dirty.len(), 2, "{dirty:?}");
        assert!(ev.take_dirty(8).is_empty());
    }

    #[test]
    fn a_group_ands_the_latest_values_of_two_keys_and_groups_or() {
        let t = TenantId::new();
        let d = DeviceId::new();
        let src = DeviceSource::Device(d);
        let r = rule(
            t,
            vec![
                vec![
                    cond(src, "temp", Operator::Gt, json!(30)),
                    cond(src, "hum", Operator::Lt, json!(20)),
                ],
                vec![cond(src, "smoke", Operator::Eq, json!(true))],
            ],
        );
        let mut ev = Evaluator::new();
        ev.load([r], 0);
        assert!(
            ev.on_input(&tel(t, d, None, &[("temp", json!(35))]), 1)
                .is_empty()
        );
        let f = ev.on_input(&tel(t, d, None, &[("hum", json!(10))]), 2);
        assert_eq!(kinds(&f), [TransitionKind::Fired]);
        assert_eq!(f[0].group, Some(0));
        assert_eq!(f[0].details, json!({"temp": 35, "hum": 10}));
        // The other group keeps it firing when the first stops.
        assert_eq!(
            kinds(&ev.on_input(&tel(t, d, None, &[("smoke", json!(true))]), 3)),
            [TransitionKind::Repeated]
        );
        assert_eq!(
            kinds(&ev.on_input(&tel(t, d, None, &[("temp", json!(20))]), 4)),
            [TransitionKind::Repeated]
        );
        assert_eq!(
            kinds(&ev.on_input(&tel(t, d, None, &[("smoke", json!(false))]), 5)),
            [TransitionKind::Cleared]
        );
    }

    #[test]
    fn profile_rules_evaluate_each_device_on_its_own() {
        let t = TenantId::new();
        let p = ProfileId::new();
        let (a, b) = (DeviceId::new(), DeviceId::new());
        let r = rule(
            t,
            vec![vec![cond(
                DeviceSource::Profile(p),
                "temp",
                Operator::Ge,
                json!(30),
            )]],
        );
        let mut ev = Evaluator::new();
        ev.load([r], 0);
        let f = ev.on_input(&tel(t, a, Some(p), &[("temp", json!(30))]), 1);
        assert_eq!(
            (kinds(&f), f[0].scope),
            (vec![TransitionKind::Fired], Scope::Device(a))
        );
        let f = ev.on_input(&tel(t, b, Some(p), &[("temp", json!(31))]), 2);
        assert_eq!(
            (kinds(&f), f[0].scope),
            (vec![TransitionKind::Fired], Scope::Device(b))
        );
        let c = ev.on_input(&tel(t, a, Some(p), &[("temp", json!(1))]), 3);
        assert_eq!(
            (kinds(&c), c[0].scope),
            (vec![TransitionKind::Cleared], Scope::Device(a))
        );
        // Another profile's device is not watched.
        assert!(
            ev.on_input(
                &tel(
                    t,
                    DeviceId::new(),
                    Some(ProfileId::new()),
                    &[("temp", json!(99))]
                ),
                4
            )
            .is_empty()
        );
    }

    #[test]
    fn index_touches_only_rules_watching_the_device() {
        let t = TenantId::new();
        let watched = DeviceId::new();
        let mut rules = Vec::new();
        for _ in 0..1000 {
            rules.push(rule(
                t,
                vec![vec![cond(
                    DeviceSource::Device(DeviceId::new()),
                    "temp",
                    Operator::Gt,
                    json!(0),
                )]],
            ));
        }
        rules.push(rule(
            t,
            vec![vec![cond(
                DeviceSource::Device(watched),
                "temp",
                Operator::Gt,
                json!(0),
            )]],
        ));
        let mut ev = Evaluator::new();
        ev.load(rules, 0);
        assert_eq!(ev.len(), 1001);
        assert_eq!(ev.by_device.get(&watched).map(Vec::len), Some(1));
        assert_eq!(
            ev.on_input(&tel(t, watched, None, &[("temp", json!(1))]), 1)
                .len(),
            1
        );
    }

    #[test]
    fn duration_windows_complete_on_tick() {
        let t = TenantId::new();
        let d = DeviceId::new();
        let r = rule(
            t,
            vec![vec![Condition::Device {
                source: DeviceSource::Device(d),
                data: DataKind::Status,
                key: String::new(),
                operator: Operator::Eq,
                value: json!("offline"),
                duration_secs: Some(60),
            }]],
        );
        let mut ev = Evaluator::new();
        ev.load([r.clone()], 0);
        let status = |online| RuleInput {
            device_id: d,
            tenant_id: t,
            profile_id: None,
            ts: 0,
            data: RuleInputData::Status { online },
        };
        assert!(ev.on_input(&status(false), 1_000).is_empty());
        assert_eq!(ev.next_deadline(), Some(61_000));
        assert!(ev.tick(60_999).is_empty());
        let f = ev.tick(61_000);
        assert_eq!(kinds(&f), [TransitionKind::Fired]);
        assert_eq!(f[0].details, json!({"online": false}));
        assert_eq!(ev.next_deadline(), None);
        // Back online before a second window completes: cleared, and no fire.
        assert_eq!(
            kinds(&ev.on_input(&status(true), 70_000)),
            [TransitionKind::Cleared]
        );
        assert!(ev.on_input(&status(false), 80_000).is_empty());
        assert!(ev.on_input(&status(true), 100_000).is_empty());
        assert!(ev.tick(140_000).is_empty());

        // The window survives a restart through the persisted state.
        assert!(ev.on_input(&status(false), 200_000).is_empty());
        let states = ev.take_dirty(200_000);
        let mut restarted = Evaluator::new();
        assert_eq!(restarted.load([r.clone()], 230_000), vec![r.id]);
        restarted.import_states(&states, 230_000);
        assert_eq!(restarted.next_deadline(), Some(260_000));
        assert_eq!(kinds(&restarted.tick(260_000)), [TransitionKind::Fired]);
    }

    #[test]
    fn firing_state_survives_restart_and_edits_so_alarms_clear() {
        let t = TenantId::new();
        let d = DeviceId::new();
        let mut r = rule(
            t,
            vec![vec![cond(
                DeviceSource::Device(d),
                "temp",
                Operator::Gt,
                json!(30),
            )]],
        );
        let mut ev = Evaluator::new();
        ev.load([r.clone()], 0);
        ev.on_input(&tel(t, d, None, &[("temp", json!(35))]), 1);
        let states = ev.take_dirty(1);
        let mut ev2 = Evaluator::new();
        ev2.load([r.clone()], 2);
        ev2.import_states(&states, 2);
        assert_eq!(
            kinds(&ev2.on_input(&tel(t, d, None, &[("temp", json!(36))]), 3)),
            [TransitionKind::Repeated]
        );
        // An edit keeps the firing flag: the next normal value clears.
        r.updated_at = 10;
        r.trigger_groups[0].conditions[0] =
            cond(DeviceSource::Device(d), "temp", Operator::Gt, json!(40));
        assert!(ev2.load([r.clone()], 11).is_empty());
        assert_eq!(
            kinds(&ev2.on_input(&tel(t, d, None, &[("temp", json!(36))]), 12)),
            [TransitionKind::Cleared]
        );
        // Disabled rules are not loaded.
        r.enabled = false;
        ev2.load([r], 13);
        assert!(ev2.is_empty());
    }

    #[test]
    fn events_are_pulses() {
        let t = TenantId::new();
        let d = DeviceId::new();
        let r = rule(
            t,
            vec![vec![Condition::Device {
                source: DeviceSource::Device(d),
                data: DataKind::Event,
                key: "door_open".into(),
                operator: Operator::Eq,
                value: serde_json::Value::Null,
                duration_secs: None,
            }]],
        );
        let mut ev = Evaluator::new();
        ev.load([r], 0);
        let event = |method: &str| RuleInput {
            device_id: d,
            tenant_id: t,
            profile_id: None,
            ts: 0,
            data: RuleInputData::Event {
                method: method.into(),
                params: json!({}),
            },
        };
        assert_eq!(
            kinds(&ev.on_input(&event("door_open"), 1)),
            [TransitionKind::Pulse]
        );
        assert_eq!(
            kinds(&ev.on_input(&event("door_open"), 2)),
            [TransitionKind::Pulse]
        );
        assert!(ev.on_input(&event("door_closed"), 3).is_empty());
    }

    #[test]
    fn a_time_range_closing_clears_a_firing_rule_and_opening_fires_it_again() {
        const H: i64 = 3_600_000;
        let t = TenantId::new();
        let d = DeviceId::new();
        let p = ProfileId::new();
        let window = Condition::TimeRange {
            start_minute: 8 * 60,
            end_minute: 9 * 60,
            weekdays: vec![],
            utc_offset_minutes: 0,
        };
        // One rule on a device, one on a profile (evaluated per device).
        let on_device = rule(
            t,
            vec![vec![
                cond(DeviceSource::Device(d), "temp", Operator::Gt, json!(30)),
                window.clone(),
            ]],
        );
        let on_profile = rule(
            t,
            vec![vec![
                cond(DeviceSource::Profile(p), "temp", Operator::Gt, json!(30)),
                window,
            ]],
        );
        let mut ev = Evaluator::new();
        ev.load([on_device.clone(), on_profile.clone()], 7 * H);
        assert_eq!(ev.next_deadline(), Some(8 * H), "the window opens");
        // Too hot before the window: nothing.
        let hot = tel(t, d, Some(p), &[("temp", json!(35))]);
        assert!(ev.on_input(&hot, 7 * H + 1).is_empty());
        // The window opens with the value still too hot: both fire, without new data.
        let f = ev.tick(8 * H);
        assert_eq!(kinds(&f), [TransitionKind::Fired, TransitionKind::Fired]);
        assert_eq!(ev.next_deadline(), Some(9 * H), "the window closes");
        assert_eq!(
            kinds(&ev.on_input(&hot, 8 * H + 5)),
            [TransitionKind::Repeated, TransitionKind::Repeated]
        );
        // The window closes: both clear (no data arrives).
        assert!(ev.tick(9 * H - 1).is_empty());
        let c = ev.tick(9 * H);
        assert_eq!(
            kinds(&c),
            [TransitionKind::Cleared, TransitionKind::Cleared]
        );
        let ids: HashSet<RuleId> = c.iter().map(|t| t.rule.id).collect();
        assert_eq!(ids, HashSet::from([on_device.id, on_profile.id]));
        assert_eq!(ev.next_deadline(), Some(32 * H), "tomorrow's opening");
        // A restart keeps the boundaries.
        let mut ev2 = Evaluator::new();
        ev2.load([on_device], 10 * H);
        assert_eq!(ev2.next_deadline(), Some(32 * H));
    }

    #[test]
    fn schedules_fire_on_tick_within_time_ranges() {
        let t = TenantId::new();
        let r = rule(
            t,
            vec![vec![
                Condition::Schedule(Schedule {
                    kind: ScheduleKind::Cron {
                        expression: "0 * * * * *".into(),
                    },
                    not_before: None,
                    not_after: Some(240_000),
                }),
                // 00:00-00:03 UTC only.
                Condition::TimeRange {
                    start_minute: 0,
                    end_minute: 3,
                    weekdays: vec![],
                    utc_offset_minutes: 0,
                },
            ]],
        );
        let mut ev = Evaluator::new();
        ev.load([r.clone()], 1_000);
        assert_eq!(ev.next_deadline(), Some(60_000));
        assert!(ev.tick(59_999).is_empty());
        let f = ev.tick(60_000);
        assert_eq!(kinds(&f), [TransitionKind::Pulse]);
        assert_eq!((f[0].fire_ts, f[0].scope), (Some(60_000), Scope::Rule));
        assert_eq!(ev.next_deadline(), Some(120_000));
        assert_eq!(ev.tick(120_000).len(), 1);
        // 00:03 is outside the range: due, but filtered.
        assert!(ev.tick(180_000).is_empty());
        let states = ev.take_dirty(180_000);
        assert_eq!(ev.next_deadline(), Some(240_000));
        assert_eq!(ev.tick(250_000).len(), 0);
        assert_eq!(ev.next_deadline(), None, "not_after ends it");

        // After a restart at 00:03:30 the last fire time (00:03) is known: the 00:04 one is next.
        let mut ev2 = Evaluator::new();
        ev2.load([r], 210_000);
        ev2.import_states(&states, 210_000);
        assert_eq!(ev2.next_deadline(), Some(240_000));
        assert!(ev.errors().is_empty());
    }

    #[test]
    fn a_first_fire_time_missed_while_down_fires_once_after_a_restart() {
        let r = rule(
            TenantId::new(),
            vec![vec![Condition::Schedule(Schedule {
                kind: ScheduleKind::Once { at: 5_000 },
                not_before: None,
                not_after: None,
            })]],
        );
        let mut ev = Evaluator::new();
        ev.load([r.clone()], 1_000);
        assert_eq!(ev.next_deadline(), Some(5_000));
        // Arming is persisted, though nothing fired yet.
        let states = ev.take_dirty(1_000);
        assert_eq!(states.len(), 1, "{states:?}");
        assert_eq!(states[0].scope, "schedule:0");
        assert!(ev.take_dirty(1_000).is_empty(), "once");
        ev.load([r.clone()], 2_000);
        assert!(ev.take_dirty(2_000).is_empty(), "a reload does not re-arm");

        // Down from 2 s to 9 s: the 5 s fire time is due at once, then never again.
        let mut ev2 = Evaluator::new();
        ev2.load([r.clone()], 9_000);
        ev2.import_states(&states, 9_000);
        assert_eq!(ev2.next_deadline(), Some(5_000));
        let f = ev2.tick(9_000);
        assert_eq!(kinds(&f), [TransitionKind::Pulse]);
        assert_eq!(f[0].fire_ts, Some(5_000));
        assert_eq!(ev2.next_deadline(), None);
        // Without the persisted state it would have been lost.
        let mut ev3 = Evaluator::new();
        ev3.load([r], 9_000);
        assert_eq!(ev3.next_deadline(), None);
    }
}

//! Dashboards: a tenant's named grids of widgets bound to its devices and their keys
//! (charts, value cards, gauges, switches and buttons that send downlink, alarm
//! lists, device status tables, maps, markdown text). One dashboard per tenant may
//! be its home dashboard, shown first by the console.
//!
//! This module holds the model with its validation ([`Dashboard::validate`]: sizes,
//! counts, key names, colours; the REST API declares the same limits in its OpenAPI
//! document) and the [`DashboardStore`] contract (conformance suite in
//! `testing::dashboard`, feature `testing`). Widgets are kept as one JSON document
//! per dashboard: they are always read and written together, and a layout change
//! is one write.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{DashboardId, DeviceId, Page, Paged, ProfileId, TenantId, Timestamp};
use crate::store::Aggregation;

/// Columns of the dashboard grid (a widget spans 1 to 12 of them).
pub const GRID_COLUMNS: u32 = 12;
/// Lowest row a widget may start on.
pub const MAX_GRID_ROW: u32 = 1_000;
/// Tallest widget, in grid rows.
pub const MAX_WIDGET_HEIGHT: u32 = 24;
/// Most widgets on one dashboard.
pub const MAX_WIDGETS: usize = 64;
/// Most keys one chart draws.
pub const MAX_CHART_KEYS: usize = 8;
/// Most devices a status table or map lists.
pub const MAX_WIDGET_DEVICES: usize = 100;
/// Most colour thresholds of a value card or gauge.
pub const MAX_THRESHOLDS: usize = 8;
/// Longest telemetry or attribute key, in characters.
pub const MAX_KEY_CHARS: usize = 255;
/// Longest widget id, in characters (`[A-Za-z0-9_-]`).
pub const MAX_WIDGET_ID_CHARS: usize = 64;
/// Longest name or title, in characters.
pub const MAX_NAME_CHARS: usize = 255;
/// Longest dashboard description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 1_000;
/// Longest markdown text, in characters.
pub const MAX_MARKDOWN_CHARS: usize = 10_000;
/// Longest unit, in characters.
pub const MAX_UNIT_CHARS: usize = 32;
/// Shortest chart range (one minute), in seconds.
pub const MIN_CHART_RANGE_SECS: u32 = 60;
/// Longest chart range (31 days), in seconds.
pub const MAX_CHART_RANGE_SECS: u32 = 31 * 24 * 3600;
/// Most alarms an alarm list shows.
pub const MAX_ALARM_ROWS: u32 = 100;

/// A tenant's dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dashboard {
    /// Identifier.
    pub id: DashboardId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// The tenant's home dashboard (at most one per tenant).
    pub home: bool,
    /// The widgets, in the order the editor lists them.
    pub widgets: Vec<Widget>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

/// One widget: where it sits on the grid and what it shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Widget {
    /// Identifier, unique on the dashboard (the editor's handle), 1 to 64 of
    /// `[A-Za-z0-9_-]`.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 64,
            pattern = "^[A-Za-z0-9_-]+$",
            example = "w1"
        )
    )]
    pub id: String,
    /// Caption shown above it.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 255))]
    pub title: Option<String>,
    /// Grid column of the left edge, 0 to 11 (`x + w` at most 12).
    #[serde(deserialize_with = "crate::serde_int::integer")]
    #[cfg_attr(feature = "openapi", schema(maximum = 11))]
    pub x: u32,
    /// Grid row of the top edge, 0 to 1000.
    #[serde(deserialize_with = "crate::serde_int::integer")]
    #[cfg_attr(feature = "openapi", schema(maximum = 1000))]
    pub y: u32,
    /// Width in columns, 1 to 12.
    #[serde(deserialize_with = "crate::serde_int::integer")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 12))]
    pub w: u32,
    /// Height in rows, 1 to 24.
    #[serde(deserialize_with = "crate::serde_int::integer")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 24))]
    pub h: u32,
    /// What it shows, told apart by `type`.
    pub config: WidgetConfig,
}

/// How a chart draws its series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ChartStyle {
    /// Lines.
    #[default]
    Line,
    /// Lines with the area below filled.
    Area,
}

/// Where a switch or button sends its value: the normal downlink paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ControlTarget {
    /// Telemetry control `{key: value}` (`devices/telemetry/control/{device_number}`).
    #[default]
    TelemetryControl,
    /// An attribute set `{key: value}`.
    AttributeSet,
    /// A command `method` with params `{key: value}`.
    Command,
}

/// A colour from a value on: a value card or gauge takes the colour of the highest
/// threshold its value reaches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// From this value on (inclusive).
    pub from: f64,
    /// CSS colour `#rrggbb`.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^#[0-9a-fA-F]{6}$", example = "#d9534f")
    )]
    pub color: String,
}

/// A value a button sends: a boolean, a number or a string (schema:
/// `crate::openapi::control_value`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ControlValue {
    /// `true` / `false`.
    Bool(bool),
    /// A number.
    Number(f64),
    /// Text, at most 255 characters.
    Text(String),
}

/// What a widget shows, told apart by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WidgetConfig {
    /// A time-series chart of one device's keys over the last `range_secs`.
    Chart {
        /// The device.
        device_id: DeviceId,
        /// Telemetry keys, 1 to 8, each 1 to 255 characters.
        #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::chart_keys))]
        keys: Vec<String>,
        /// How far back it looks, 60 s to 31 days.
        #[serde(deserialize_with = "crate::serde_int::integer")]
        #[cfg_attr(feature = "openapi", schema(minimum = 60, maximum = 2678400))]
        range_secs: u32,
        /// Aggregate into buckets (at most 500 per range); none draws raw points.
        #[serde(default)]
        aggregation: Option<Aggregation>,
        /// Lines or filled areas.
        #[serde(default)]
        style: ChartStyle,
    },
    /// The latest value of a key, with its unit, coloured by thresholds.
    Value {
        /// The device.
        device_id: DeviceId,
        /// Telemetry key.
        #[cfg_attr(
            feature = "openapi",
            schema(min_length = 1, max_length = 255, pattern = r"\S")
        )]
        key: String,
        /// Unit shown after the value.
        #[serde(default)]
        #[cfg_attr(feature = "openapi", schema(max_length = 32))]
        unit: Option<String>,
        /// Colours by value, at most 8.
        #[serde(default)]
        #[cfg_attr(feature = "openapi", schema(max_items = 8))]
        thresholds: Vec<Threshold>,
    },
    /// The latest value of a key on a dial from `min` to `max`.
    Gauge {
        /// The device.
        device_id: DeviceId,
        /// Telemetry key.
        #[cfg_attr(
            feature = "openapi",
            schema(min_length = 1, max_length = 255, pattern = r"\S")
        )]
        key: String,
        /// Unit shown after the value.
        #[serde(default)]
        #[cfg_attr(feature = "openapi", schema(max_length = 32))]
        unit: Option<String>,
        /// Lower end of the dial.
        min: f64,
        /// Upper end of the dial (greater than `min`).
        max: f64,
        /// Colours by value, at most 8.
        #[serde(default)]
        #[cfg_attr(feature = "openapi", schema(max_items = 8))]
        thresholds: Vec<Threshold>,
    },
    /// An on/off switch: shows the key's latest value and sends `{key: true|false}`
    /// through `target`.
    Switch {
        /// The device.
        device_id: DeviceId,
        /// The key shown and sent.
        #[cfg_attr(
            feature = "openapi",
            schema(min_length = 1, max_length = 255, pattern = r"\S")
        )]
        key: String,
        /// Which downlink carries the value.
        #[serde(default)]
        target: ControlTarget,
        /// The command's method (required with `target` `command`).
        #[serde(default)]
        #[cfg_attr(
            feature = "openapi",
            schema(min_length = 1, max_length = 255, pattern = r"\S")
        )]
        method: Option<String>,
    },
    /// A button that sends `{key: value}` through `target`.
    Button {
        /// The device.
        device_id: DeviceId,
        /// Caption on the button.
        #[cfg_attr(
            feature = "openapi",
            schema(min_length = 1, max_length = 255, pattern = r"\S")
        )]
        label: String,
        /// The key sent.
        #[cfg_attr(
            feature = "openapi",
            schema(min_length = 1, max_length = 255, pattern = r"\S")
        )]
        key: String,
        /// The value sent: a boolean, a number or a string of at most 255 characters.
        #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::control_value))]
        value: ControlValue,
        /// Which downlink carries it.
        #[serde(default)]
        target: ControlTarget,
        /// The command's method (required with `target` `command`).
        #[serde(default)]
        #[cfg_attr(
            feature = "openapi",
            schema(min_length = 1, max_length = 255, pattern = r"\S")
        )]
        method: Option<String>,
    },
    /// The newest open alarms of the tenant, or of one device.
    Alarms {
        /// Only this device's.
        #[serde(default)]
        device_id: Option<DeviceId>,
        /// How many rows, 1 to 100.
        #[serde(deserialize_with = "crate::serde_int::integer")]
        #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
        limit: u32,
    },
    /// A table of devices with their online state and last activity: the listed
    /// devices, or a profile's, or (both empty) the tenant's first 100.
    DeviceStatus {
        /// These devices, at most 100.
        #[serde(default)]
        #[cfg_attr(feature = "openapi", schema(max_items = 100))]
        device_ids: Vec<DeviceId>,
        /// Or the devices of this profile.
        #[serde(default)]
        profile_id: Option<ProfileId>,
    },
    /// Devices on a map at the latitude/longitude their attributes (or, lacking
    /// those, latest telemetry) hold under `lat_key` / `lon_key`.
    Map {
        /// These devices, at most 100.
        #[serde(default)]
        #[cfg_attr(feature = "openapi", schema(max_items = 100))]
        device_ids: Vec<DeviceId>,
        /// Or the devices of this profile.
        #[serde(default)]
        profile_id: Option<ProfileId>,
        /// Key of the latitude (default `latitude`).
        #[serde(default = "default_lat_key")]
        #[cfg_attr(
            feature = "openapi",
            schema(min_length = 1, max_length = 255, pattern = r"\S")
        )]
        lat_key: String,
        /// Key of the longitude (default `longitude`).
        #[serde(default = "default_lon_key")]
        #[cfg_attr(
            feature = "openapi",
            schema(min_length = 1, max_length = 255, pattern = r"\S")
        )]
        lon_key: String,
    },
    /// Text in markdown (headings, emphasis, lists, links; no HTML).
    Markdown {
        /// The text, at most 10000 characters.
        #[cfg_attr(feature = "openapi", schema(max_length = 10000))]
        text: String,
    },
}

fn default_lat_key() -> String {
    "latitude".into()
}

fn default_lon_key() -> String {
    "longitude".into()
}

impl WidgetConfig {
    /// The `type` name, e.g. `"chart"`.
    pub fn kind(&self) -> &'static str {
        match self {
            WidgetConfig::Chart { .. } => "chart",
            WidgetConfig::Value { .. } => "value",
            WidgetConfig::Gauge { .. } => "gauge",
            WidgetConfig::Switch { .. } => "switch",
            WidgetConfig::Button { .. } => "button",
            WidgetConfig::Alarms { .. } => "alarms",
            WidgetConfig::DeviceStatus { .. } => "device_status",
            WidgetConfig::Map { .. } => "map",
            WidgetConfig::Markdown { .. } => "markdown",
        }
    }

    /// Every device the widget names (the live stream of a dashboard follows them).
    pub fn devices(&self) -> Vec<DeviceId> {
        match self {
            WidgetConfig::Chart { device_id, .. }
            | WidgetConfig::Value { device_id, .. }
            | WidgetConfig::Gauge { device_id, .. }
            | WidgetConfig::Switch { device_id, .. }
            | WidgetConfig::Button { device_id, .. } => vec![*device_id],
            WidgetConfig::Alarms { device_id, .. } => device_id.iter().copied().collect(),
            WidgetConfig::DeviceStatus { device_ids, .. }
            | WidgetConfig::Map { device_ids, .. } => device_ids.clone(),
            WidgetConfig::Markdown { .. } => Vec::new(),
        }
    }
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// A limit the OpenAPI document declares (length, range, pattern): a 400.
fn check(ok: bool, field: impl FnOnce() -> String, reason: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(field(), reason.to_owned()))
    }
}

/// A rule between fields that a schema cannot state (`x + w <= 12`, `max > min`,
/// unique widget ids, a command's method): a 422.
fn check_across(ok: bool, field: impl FnOnce() -> String, reason: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::unprocessable(field(), reason.to_owned()))
    }
}

/// What the document's `\s` means (JSON Schema patterns are ECMA-262 regular
/// expressions), so `pattern: \S` and this check agree on every character.
fn is_blank(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202f}'
                | '\u{205f}'
                | '\u{3000}'
                | '\u{feff}'
    )
}

/// A name, label or key: 1 to `max` characters, one of them not blank (the
/// document's `minLength: 1, maxLength: max, pattern: \S`).
fn valid_text(field: impl FnOnce() -> String, s: &str, max: usize) -> Result<()> {
    check(
        !s.chars().all(is_blank) && chars(s) <= max,
        field,
        &format!("must be 1 to {max} characters, not all blank"),
    )
}

/// A telemetry or attribute key: 1 to 255 characters, not all blank.
pub fn valid_key(field: impl FnOnce() -> String, key: &str) -> Result<()> {
    valid_text(field, key, MAX_KEY_CHARS)
}

fn valid_method(
    field: impl Fn() -> String,
    target: ControlTarget,
    method: &Option<String>,
) -> Result<()> {
    match (target, method) {
        (ControlTarget::Command, None) => Err(Error::unprocessable(
            field(),
            "is required when target is command",
        )),
        (_, Some(m)) => valid_text(field, m, MAX_NAME_CHARS),
        (_, None) => Ok(()),
    }
}

fn valid_thresholds(field: impl Fn() -> String, thresholds: &[Threshold]) -> Result<()> {
    check(
        thresholds.len() <= MAX_THRESHOLDS,
        &field,
        "must hold at most 8 thresholds",
    )?;
    for (i, t) in thresholds.iter().enumerate() {
        check(
            t.from.is_finite(),
            || format!("{}[{i}].from", field()),
            "must be a finite number",
        )?;
        let hex = t.color.strip_prefix('#').unwrap_or("");
        check(
            hex.len() == 6 && hex.chars().all(|c| c.is_ascii_hexdigit()),
            || format!("{}[{i}].color", field()),
            "must be a colour #rrggbb",
        )?;
    }
    Ok(())
}

fn valid_unit(field: impl FnOnce() -> String, unit: &Option<String>) -> Result<()> {
    match unit {
        Some(u) => check(
            chars(u) <= MAX_UNIT_CHARS,
            field,
            "must be at most 32 characters",
        ),
        None => Ok(()),
    }
}

impl Widget {
    /// Checks the widget's place and configuration; `at` prefixes field names
    /// (`widgets[3]`).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the first field that does not hold.
    pub fn validate(&self, at: &str) -> Result<()> {
        let f = |name: &str| format!("{at}.{name}");
        check(
            !self.id.is_empty()
                && self.id.len() <= MAX_WIDGET_ID_CHARS
                && self
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            || f("id"),
            "must be 1 to 64 of A-Z, a-z, 0-9, _ and -",
        )?;
        if let Some(title) = &self.title {
            check(
                chars(title) <= MAX_NAME_CHARS,
                || f("title"),
                "must be at most 255 characters",
            )?;
        }
        check(
            (1..=GRID_COLUMNS).contains(&self.w),
            || f("w"),
            "must be 1 to 12 columns",
        )?;
        check(self.x < GRID_COLUMNS, || f("x"), "must be 0 to 11")?;
        check_across(
            self.x + self.w <= GRID_COLUMNS,
            || f("x"),
            "must keep the widget inside the 12 columns (x + w <= 12)",
        )?;
        check(self.y <= MAX_GRID_ROW, || f("y"), "must be at most 1000")?;
        check(
            (1..=MAX_WIDGET_HEIGHT).contains(&self.h),
            || f("h"),
            "must be 1 to 24 rows",
        )?;
        let c = |name: &str| format!("{at}.config.{name}");
        match &self.config {
            WidgetConfig::Chart {
                keys, range_secs, ..
            } => {
                check(
                    !keys.is_empty() && keys.len() <= MAX_CHART_KEYS,
                    || c("keys"),
                    "must name 1 to 8 keys",
                )?;
                let mut seen = HashSet::new();
                for (i, k) in keys.iter().enumerate() {
                    valid_key(|| format!("{at}.config.keys[{i}]"), k)?;
                    check(
                        seen.insert(k),
                        || format!("{at}.config.keys[{i}]"),
                        "is listed twice",
                    )?;
                }
                check(
                    (MIN_CHART_RANGE_SECS..=MAX_CHART_RANGE_SECS).contains(range_secs),
                    || c("range_secs"),
                    "must be 60 to 2678400 seconds (31 days)",
                )?;
            }
            WidgetConfig::Value {
                key,
                unit,
                thresholds,
                ..
            } => {
                valid_key(|| c("key"), key)?;
                valid_unit(|| c("unit"), unit)?;
                valid_thresholds(|| c("thresholds"), thresholds)?;
            }
            WidgetConfig::Gauge {
                key,
                unit,
                min,
                max,
                thresholds,
                ..
            } => {
                valid_key(|| c("key"), key)?;
                valid_unit(|| c("unit"), unit)?;
                check(min.is_finite(), || c("min"), "must be a finite number")?;
                check(max.is_finite(), || c("max"), "must be a finite number")?;
                check_across(
                    max > min,
                    || c("max"),
                    "must be a finite number greater than min",
                )?;
                valid_thresholds(|| c("thresholds"), thresholds)?;
            }
            WidgetConfig::Switch {
                key,
                target,
                method,
                ..
            } => {
                valid_key(|| c("key"), key)?;
                valid_method(|| c("method"), *target, method)?;
            }
            WidgetConfig::Button {
                label,
                key,
                value,
                target,
                method,
                ..
            } => {
                valid_text(|| c("label"), label, MAX_NAME_CHARS)?;
                valid_key(|| c("key"), key)?;
                match value {
                    ControlValue::Number(n) => {
                        check(n.is_finite(), || c("value"), "must be a finite number")?
                    }
                    ControlValue::Text(t) => check(
                        chars(t) <= MAX_NAME_CHARS,
                        || c("value"),
                        "must be at most 255 characters",
                    )?,
                    ControlValue::Bool(_) => {}
                }
                valid_method(|| c("method"), *target, method)?;
            }
            WidgetConfig::Alarms { limit, .. } => {
                check(
                    (1..=MAX_ALARM_ROWS).contains(limit),
                    || c("limit"),
                    "must be 1 to 100",
                )?;
            }
            WidgetConfig::DeviceStatus { device_ids, .. } => {
                check(
                    device_ids.len() <= MAX_WIDGET_DEVICES,
                    || c("device_ids"),
                    "must list at most 100 devices",
                )?;
            }
            WidgetConfig::Map {
                device_ids,
                lat_key,
                lon_key,
                ..
            } => {
                check(
                    device_ids.len() <= MAX_WIDGET_DEVICES,
                    || c("device_ids"),
                    "must list at most 100 devices",
                )?;
                valid_key(|| c("lat_key"), lat_key)?;
                valid_key(|| c("lon_key"), lon_key)?;
            }
            WidgetConfig::Markdown { text } => {
                check(
                    chars(text) <= MAX_MARKDOWN_CHARS,
                    || c("text"),
                    "must be at most 10000 characters",
                )?;
            }
        }
        Ok(())
    }
}

impl Dashboard {
    /// Checks name, description and every widget (ids unique on the dashboard).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the first field that does not hold
    /// (`widgets[2].config.keys[0]`).
    pub fn validate(&self) -> Result<()> {
        valid_text(|| "name".into(), &self.name, MAX_NAME_CHARS)?;
        if let Some(d) = &self.description {
            check(
                chars(d) <= MAX_DESCRIPTION_CHARS,
                || "description".into(),
                "must be at most 1000 characters",
            )?;
        }
        check(
            self.widgets.len() <= MAX_WIDGETS,
            || "widgets".into(),
            "must hold at most 64 widgets",
        )?;
        let mut ids = HashSet::new();
        for (i, w) in self.widgets.iter().enumerate() {
            let at = format!("widgets[{i}]");
            w.validate(&at)?;
            check_across(
                ids.insert(&w.id),
                || format!("{at}.id"),
                "is used by another widget",
            )?;
        }
        Ok(())
    }

    /// Every device its widgets name, each once, in widget order.
    pub fn devices(&self) -> Vec<DeviceId> {
        let mut seen = HashSet::new();
        self.widgets
            .iter()
            .flat_map(|w| w.config.devices())
            .filter(|d| seen.insert(*d))
            .collect()
    }
}

/// Where dashboards are kept; every call is scoped to a tenant.
#[async_trait]
pub trait DashboardStore: Send + Sync + fmt::Debug {
    /// Stores a new dashboard; when it is the home dashboard, the tenant's previous
    /// home dashboard stops being one in the same transaction.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] for a taken id.
    async fn create_dashboard(&self, dashboard: &Dashboard) -> Result<()>;

    /// A dashboard of `tenant`, or `None`.
    async fn get_dashboard(&self, tenant: TenantId, id: DashboardId) -> Result<Option<Dashboard>>;

    /// A page of the tenant's dashboards by name, then id.
    async fn list_dashboards(&self, tenant: TenantId, page: Page) -> Result<Paged<Dashboard>>;

    /// Replaces name, description, home, widgets and `updated_at` of the dashboard
    /// with this id in its tenant; becoming home unsets the previous home dashboard
    /// in the same transaction.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the tenant has no such dashboard.
    async fn update_dashboard(&self, dashboard: &Dashboard) -> Result<()>;

    /// Deletes a dashboard; `false` when there was none.
    async fn delete_dashboard(&self, tenant: TenantId, id: DashboardId) -> Result<bool>;

    /// The tenant's home dashboard, if one is set.
    async fn home_dashboard(&self, tenant: TenantId) -> Result<Option<Dashboard>>;
}

/// Shared handle to a [`DashboardStore`].
pub type DashboardStoreRef = Arc<dyn DashboardStore>;

#[cfg(test)]
mod tests {
    use super::*;

    fn dashboard(widgets: Vec<Widget>) -> Dashboard {
        Dashboard {
            id: DashboardId::new(),
            tenant_id: TenantId::new(),
            name: "Plant".into(),
            description: None,
            home: false,
            widgets,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn widget(id: &str, config: WidgetConfig) -> Widget {
        Widget {
            id: id.into(),
            title: None,
            x: 0,
            y: 0,
            w: 6,
            h: 4,
            config,
        }
    }

    /// The field a failed check names, and whether it is a 422 (a rule across
    /// fields) rather than a 400.
    fn failed(r: Result<()>) -> (String, bool) {
        match r {
            Err(Error::Invalid { field, .. }) => (field, false),
            Err(Error::Unprocessable { field, .. }) => (field, true),
            other => panic!("expected Invalid or Unprocessable, got {other:?}"),
        }
    }

    fn field(r: Result<()>) -> String {
        failed(r).0
    }

    #[test]
    fn widgets_parse_as_a_tagged_union() {
        let w: Widget = serde_json::from_value(serde_json::json!({
            "id": "w1", "x": 0, "y": 0, "w": 6.0, "h": 4,
            "config": {"type": "chart", "device_id": DeviceId::new(), "keys": ["temp"],
                       "range_secs": 3600.0, "aggregation": "avg"}
        }))
        .unwrap();
        assert_eq!(w.config.kind(), "chart");
        // JSON Schema's integers include `6.0`; a real fraction is still refused.
        assert_eq!(w.w, 6);
        let fraction = serde_json::json!({"id": "w", "x": 0.5, "y": 0, "w": 1, "h": 1,
            "config": {"type": "markdown", "text": ""}});
        assert!(serde_json::from_value::<Widget>(fraction).is_err());
        let map: WidgetConfig = serde_json::from_value(serde_json::json!({"type": "map"})).unwrap();
        assert!(matches!(map, WidgetConfig::Map { ref lat_key, .. } if lat_key == "latitude"));
        let unknown = serde_json::from_value::<WidgetConfig>(
            serde_json::json!({"type": "markdown", "text": "x", "extra": 1}),
        );
        assert!(unknown.is_err(), "unknown fields are refused");
        let button: WidgetConfig = serde_json::from_value(serde_json::json!({
            "type": "button", "device_id": DeviceId::new(), "label": "Reset", "key": "reset",
            "value": 1.5, "target": "command", "method": "Reset"
        }))
        .unwrap();
        assert!(matches!(
            button,
            WidgetConfig::Button {
                value: ControlValue::Number(_),
                ..
            }
        ));
    }

    #[test]
    fn validation_names_the_field() {
        let dev = DeviceId::new();
        let chart = |keys: Vec<&str>, range_secs| WidgetConfig::Chart {
            device_id: dev,
            keys: keys.into_iter().map(String::from).collect(),
            range_secs,
            aggregation: None,
            style: ChartStyle::Line,
        };
        assert!(
            dashboard(vec![widget("a", chart(vec!["t"], 3600))])
                .validate()
                .is_ok()
        );
        assert_eq!(
            field(dashboard(vec![widget("a", chart(vec![], 3600))]).validate()),
            "widgets[0].config.keys"
        );
        assert_eq!(
            field(dashboard(vec![widget("a", chart(vec!["t", "t"], 3600))]).validate()),
            "widgets[0].config.keys[1]"
        );
        assert_eq!(
            field(dashboard(vec![widget("a", chart(vec!["t"], 10))]).validate()),
            "widgets[0].config.range_secs"
        );
        let mut wide = widget("a", chart(vec!["t"], 3600));
        wide.x = 8;
        assert_eq!(
            failed(dashboard(vec![wide]).validate()),
            ("widgets[0].x".into(), true)
        );
        let twice = vec![
            widget("a", WidgetConfig::Markdown { text: "x".into() }),
            widget("a", WidgetConfig::Markdown { text: "y".into() }),
        ];
        assert_eq!(
            failed(dashboard(twice).validate()),
            ("widgets[1].id".into(), true)
        );
        let gauge = WidgetConfig::Gauge {
            device_id: dev,
            key: "p".into(),
            unit: None,
            min: 10.0,
            max: 10.0,
            thresholds: vec![],
        };
        assert_eq!(
            field(dashboard(vec![widget("g", gauge)]).validate()),
            "widgets[0].config.max"
        );
        let value = WidgetConfig::Value {
            device_id: dev,
            key: "p".into(),
            unit: Some("bar".into()),
            thresholds: vec![Threshold {
                from: 3.0,
                color: "red".into(),
            }],
        };
        assert_eq!(
            field(dashboard(vec![widget("v", value)]).validate()),
            "widgets[0].config.thresholds[0].color"
        );
        let switch = WidgetConfig::Switch {
            device_id: dev,
            key: "on".into(),
            target: ControlTarget::Command,
            method: None,
        };
        assert_eq!(
            field(dashboard(vec![widget("s", switch)]).validate()),
            "widgets[0].config.method"
        );
        let many = (0..=MAX_WIDGETS)
            .map(|i| {
                widget(
                    &format!("m{i}"),
                    WidgetConfig::Markdown {
                        text: String::new(),
                    },
                )
            })
            .collect();
        assert_eq!(field(dashboard(many).validate()), "widgets");
        let mut blank = dashboard(vec![]);
        blank.name = "  ".into();
        assert_eq!(field(blank.validate()), "name");
    }

    #[test]
    fn devices_are_listed_once() {
        let (a, b) = (DeviceId::new(), DeviceId::new());
        let d = dashboard(vec![
            widget(
                "v",
                WidgetConfig::Value {
                    device_id: a,
                    key: "t".into(),
                    unit: None,
                    thresholds: vec![],
                },
            ),
            widget(
                "s",
                WidgetConfig::DeviceStatus {
                    device_ids: vec![a, b],
                    profile_id: None,
                },
            ),
        ]);
        assert_eq!(d.devices(), vec![a, b]);
    }
}

//! The thing model (ThingsPanel's 物模型): device templates holding typed
//! definitions of a device's telemetry, attributes, events and commands, and the
//! checks the platform runs against them.
//!
//! - [`DeviceTemplate`]: a tenant's template with its four definition lists and its
//!   [`ValidationMode`]; a device profile refers to at most one template
//!   ([`crate::DeviceProfile::template_id`]).
//! - [`DeviceTemplate::check_definitions`]: what a template must satisfy before it
//!   is stored (unique identifiers per kind, `min <= max`, enum values present).
//! - [`DeviceTemplate::check_telemetry`] / [`DeviceTemplate::check_attributes`]: the
//!   ingest check of reported values (type, range, enum); [`DeviceTemplate::check_command`]
//!   and [`DeviceTemplate::check_attribute_set`]: the downlink checks.
//! - [`ThingModelStore`]: the persistence contract; [`TemplateCache`]: the per-profile
//!   cache the ingest path reads so it does not query the store per message.
//!
//! Keys a template does not define are accepted unless the template sets
//! `strict_keys` (then each is a violation): templates are often written for the
//! keys that matter and devices report more.
//!
//! ```
//! use tp_core::thing_model::{DataType, DeviceTemplate, Property, ValidationMode};
//! use tp_core::{TenantId, Value};
//!
//! let mut template = DeviceTemplate::new(TenantId::new(), "thermometer");
//! template.validation = ValidationMode::Reject;
//! let mut temp = Property::new("temp", "Temperature", DataType::Float);
//! temp.unit = Some("°C".into());
//! (temp.min, temp.max) = (Some(-40.0), Some(125.0));
//! template.telemetry.push(temp);
//! template.check_definitions()?;
//!
//! let hot = Value::Float(300.0);
//! let violations = template.check_telemetry([("temp", &hot)]);
//! assert_eq!(violations[0].key, "temp");
//! assert!(template.check_telemetry([("temp", &Value::Integer(21))]).is_empty());
//! # Ok::<(), tp_core::Error>(())
//! ```

mod cache;
mod store;

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use uuid::Uuid;

use crate::model::{TenantId, Timestamp, Value, now_ms};
use crate::{Error, Result};

pub use cache::TemplateCache;
pub use store::{ThingModelStore, ThingModelStoreRef};

/// Identifies a device template.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct TemplateId(pub Uuid);

impl TemplateId {
    /// A new random identifier.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }
}

impl Default for TemplateId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TemplateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for TemplateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TemplateId({})", self.0)
    }
}

impl FromStr for TemplateId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|e| Error::invalid("template_id", e.to_string()))
    }
}

/// The type of a defined value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// `true` / `false`.
    Bool,
    /// A whole number (a JSON number without fraction; `3.0` counts).
    Int,
    /// Any number.
    Float,
    /// A string.
    String,
    /// One of the definition's `enum_values` (a string, or a number or boolean whose
    /// JSON text is one of them).
    Enum,
    /// Any JSON value.
    Json,
}

impl DataType {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::Int => "int",
            DataType::Float => "float",
            DataType::String => "string",
            DataType::Enum => "enum",
            DataType::Json => "json",
        }
    }

    fn numeric(self) -> bool {
        matches!(self, DataType::Int | DataType::Float)
    }
}

/// Who may write a property: the device only (`read`), or the platform too
/// (`read_write`: attribute sets and telemetry control are allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Reported by the device; the platform does not set it.
    #[default]
    Read,
    /// Reported by the device and set by the platform.
    ReadWrite,
}

/// What the ingest path does with values a template's definitions refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ValidationMode {
    /// No check.
    #[default]
    Off,
    /// Store the message and record each violation (a counted metric and a device
    /// event `thing_model_violation` naming the key).
    Record,
    /// Store nothing of a message with a violation; count it and tell the device
    /// (HTTP 422, CoAP 4.22, MQTT: see the README's "Thing model" section).
    Reject,
}

impl ValidationMode {
    /// The stored and API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ValidationMode::Off => "off",
            ValidationMode::Record => "record",
            ValidationMode::Reject => "reject",
        }
    }
}

impl FromStr for ValidationMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(ValidationMode::Off),
            "record" => Ok(ValidationMode::Record),
            "reject" => Ok(ValidationMode::Reject),
            other => Err(Error::invalid(
                "validation",
                format!("{other:?} is not one of off, record, reject"),
            )),
        }
    }
}

/// One allowed value of an `enum` definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnumValue {
    /// The value as the device sends it (`"auto"`, or `"1"` for the number 1).
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 128, example = "auto")
    )]
    pub value: String,
    /// What it means, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 255, example = "Automatic"))]
    pub description: Option<String>,
}

/// A telemetry or attribute definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Property {
    /// The key the device reports (`temp`); unique among the template's
    /// definitions of the same kind.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 128,
            pattern = r"^[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$",
            example = "temp"
        )
    )]
    pub identifier: String,
    /// Display name.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 255, example = "Temperature")
    )]
    pub name: String,
    /// Value type.
    pub data_type: DataType,
    /// Unit shown with the value (`°C`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 32, example = "°C"))]
    pub unit: Option<String>,
    /// Smallest allowed value (`int` and `float` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest allowed value (`int` and `float` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Input step of the console's forms (not enforced on ingest: devices report
    /// measured values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0))]
    pub step: Option<f64>,
    /// The allowed values of an `enum` (required and only allowed there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enum_values: Vec<EnumValue>,
    /// `read` (default) or `read_write`.
    #[serde(default)]
    pub access: Access,
    /// What it is, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 1000))]
    pub description: Option<String>,
}

impl Property {
    /// A definition with no unit, range or enum values, read-only.
    pub fn new(identifier: &str, name: &str, data_type: DataType) -> Self {
        Self {
            identifier: identifier.to_owned(),
            name: name.to_owned(),
            data_type,
            unit: None,
            min: None,
            max: None,
            step: None,
            enum_values: Vec::new(),
            access: Access::Read,
            description: None,
        }
    }

    fn spec(&self) -> Spec<'_> {
        Spec {
            data_type: self.data_type,
            min: self.min,
            max: self.max,
            enum_values: &self.enum_values,
        }
    }
}

/// A parameter of an event (output) or a command (input), typed like a [`Property`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Param {
    /// The key in `params` (`target`).
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 128,
            pattern = r"^[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$",
            example = "target"
        )
    )]
    pub identifier: String,
    /// Display name.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 255, example = "Target temperature")
    )]
    pub name: String,
    /// Value type.
    pub data_type: DataType,
    /// Unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 32))]
    pub unit: Option<String>,
    /// Smallest allowed value (`int` and `float` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest allowed value (`int` and `float` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Input step of the console's forms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0))]
    pub step: Option<f64>,
    /// The allowed values of an `enum`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enum_values: Vec<EnumValue>,
    /// What it is, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 1000))]
    pub description: Option<String>,
}

impl Param {
    /// A parameter with no unit, range or enum values.
    pub fn new(identifier: &str, name: &str, data_type: DataType) -> Self {
        Self {
            identifier: identifier.to_owned(),
            name: name.to_owned(),
            data_type,
            unit: None,
            min: None,
            max: None,
            step: None,
            enum_values: Vec::new(),
            description: None,
        }
    }

    fn spec(&self) -> Spec<'_> {
        Spec {
            data_type: self.data_type,
            min: self.min,
            max: self.max,
            enum_values: &self.enum_values,
        }
    }
}

/// An event a device reports (`devices/event/{message_id}` with this `method`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EventDef {
    /// The event's `method`.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 128,
            pattern = r"^[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$",
            example = "overheat"
        )
    )]
    pub identifier: String,
    /// Display name.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 255, example = "Overheated")
    )]
    pub name: String,
    /// What it means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 1000))]
    pub description: Option<String>,
    /// The parameters the device sends with it.
    #[serde(default)]
    pub params: Vec<Param>,
}

/// A command the platform sends (`devices/command/{device_number}/{message_id}`
/// with this `method`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CommandDef {
    /// The command's `method`.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 128,
            pattern = r"^[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$",
            example = "set_target"
        )
    )]
    pub identifier: String,
    /// Display name.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 255, example = "Set target temperature")
    )]
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 1000))]
    pub description: Option<String>,
    /// The parameters the command takes; `params` of a sent command may hold only
    /// these keys, each of its type and within its range.
    #[serde(default)]
    pub params: Vec<Param>,
}

/// A device template: the thing model of the devices whose profile refers to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceTemplate {
    /// Identifier.
    pub id: TemplateId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// Name, unique in the tenant.
    pub name: String,
    /// What devices it is for.
    pub description: Option<String>,
    /// What ingest does with values the definitions refuse.
    pub validation: ValidationMode,
    /// Whether keys without a definition are violations too.
    pub strict_keys: bool,
    /// Telemetry definitions.
    pub telemetry: Vec<Property>,
    /// Attribute definitions.
    pub attributes: Vec<Property>,
    /// Event definitions.
    pub events: Vec<EventDef>,
    /// Command definitions.
    pub commands: Vec<CommandDef>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

/// The definitions of a template, as one stored document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Definitions {
    /// Telemetry definitions.
    #[serde(default)]
    pub telemetry: Vec<Property>,
    /// Attribute definitions.
    #[serde(default)]
    pub attributes: Vec<Property>,
    /// Event definitions.
    #[serde(default)]
    pub events: Vec<EventDef>,
    /// Command definitions.
    #[serde(default)]
    pub commands: Vec<CommandDef>,
}

/// A value a definition refuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The key (telemetry, attribute or parameter identifier).
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

impl Violation {
    fn new(key: &str, reason: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }

    /// The error an API or device path answers with (422 naming the key).
    pub fn into_error(self) -> Error {
        Error::unprocessable(self.key, self.reason)
    }
}

/// Longest identifier.
const MAX_IDENTIFIER: usize = 128;

impl DeviceTemplate {
    /// An empty template of `tenant`, validation off.
    pub fn new(tenant: TenantId, name: &str) -> Self {
        let now = now_ms();
        Self {
            id: TemplateId::new(),
            tenant_id: tenant,
            name: name.to_owned(),
            description: None,
            validation: ValidationMode::Off,
            strict_keys: false,
            telemetry: Vec::new(),
            attributes: Vec::new(),
            events: Vec::new(),
            commands: Vec::new(),
            created_at: now,
            updated_at: now,
        }
    }

    /// The definitions as one document (the stored form).
    pub fn definitions(&self) -> Definitions {
        Definitions {
            telemetry: self.telemetry.clone(),
            attributes: self.attributes.clone(),
            events: self.events.clone(),
            commands: self.commands.clone(),
        }
    }

    /// Replaces the definitions.
    pub fn set_definitions(&mut self, d: Definitions) {
        self.telemetry = d.telemetry;
        self.attributes = d.attributes;
        self.events = d.events;
        self.commands = d.commands;
    }

    /// Checks the definitions are usable: identifiers present, without blanks and
    /// unique per kind (parameters: per event or command); `min <= max`, ranges only
    /// on numbers; `enum` with at least one value and enum values only on `enum`.
    ///
    /// # Errors
    /// [`Error::Unprocessable`] naming the definition (`telemetry[2].max`).
    pub fn check_definitions(&self) -> Result<()> {
        check_unique("telemetry", self.telemetry.iter().map(|p| &p.identifier))?;
        check_unique("attributes", self.attributes.iter().map(|p| &p.identifier))?;
        check_unique("events", self.events.iter().map(|e| &e.identifier))?;
        check_unique("commands", self.commands.iter().map(|c| &c.identifier))?;
        for (kind, props) in [
            ("telemetry", &self.telemetry),
            ("attributes", &self.attributes),
        ] {
            for (i, p) in props.iter().enumerate() {
                check_spec(&format!("{kind}[{i}]"), &p.name, p.spec(), p.step)?;
            }
        }
        let calls = self
            .events
            .iter()
            .map(|e| ("events", &e.name, &e.params))
            .chain(
                self.commands
                    .iter()
                    .map(|c| ("commands", &c.name, &c.params)),
            );
        let mut counters = std::collections::HashMap::new();
        for (kind, name, params) in calls {
            let i = counters.entry(kind).or_insert(0usize);
            let at = format!("{kind}[{i}]");
            *i += 1;
            check_text(&format!("{at}.name"), name, 255)?;
            check_unique(
                &format!("{at}.params"),
                params.iter().map(|p| &p.identifier),
            )?;
            for (j, p) in params.iter().enumerate() {
                check_spec(&format!("{at}.params[{j}]"), &p.name, p.spec(), p.step)?;
            }
        }
        Ok(())
    }

    /// The telemetry definition of `key`, if any.
    pub fn telemetry_def(&self, key: &str) -> Option<&Property> {
        self.telemetry.iter().find(|p| p.identifier == key)
    }

    /// The attribute definition of `key`, if any.
    pub fn attribute_def(&self, key: &str) -> Option<&Property> {
        self.attributes.iter().find(|p| p.identifier == key)
    }

    /// The command definition of `method`, if any.
    pub fn command_def(&self, method: &str) -> Option<&CommandDef> {
        self.commands.iter().find(|c| c.identifier == method)
    }

    /// The violations of reported telemetry values (type, range, enum; undefined
    /// keys only with `strict_keys`), in the order of `values`.
    pub fn check_telemetry<'a>(
        &self,
        values: impl IntoIterator<Item = (&'a str, &'a Value)>,
    ) -> Vec<Violation> {
        check_reported(&self.telemetry, self.strict_keys, values)
    }

    /// The violations of reported attribute values; see [`Self::check_telemetry`].
    pub fn check_attributes<'a>(
        &self,
        values: impl IntoIterator<Item = (&'a str, &'a Value)>,
    ) -> Vec<Violation> {
        check_reported(&self.attributes, self.strict_keys, values)
    }

    /// Checks a command the platform is about to send: a command with a
    /// definition takes only its defined parameters, each of its type and range.
    /// A command without a definition passes unless `strict_keys` is set.
    ///
    /// # Errors
    /// The first [`Violation`] (the parameter's identifier, or `method`).
    pub fn check_command(&self, method: &str, params: &Json) -> std::result::Result<(), Violation> {
        let Some(def) = self.command_def(method) else {
            if self.strict_keys {
                return Err(Violation::new(
                    "method",
                    format!("{method:?} is not a command of template {:?}", self.name),
                ));
            }
            return Ok(());
        };
        let args = match params {
            Json::Null => return Ok(()),
            Json::Object(map) => map,
            _ => {
                return Err(Violation::new(
                    "params",
                    format!("command {method:?} takes an object of named parameters"),
                ));
            }
        };
        for (key, value) in args {
            let Some(param) = def.params.iter().find(|p| &p.identifier == key) else {
                return Err(Violation::new(
                    key,
                    format!("command {method:?} has no parameter {key:?}"),
                ));
            };
            check_json(key, param.spec(), value)?;
        }
        Ok(())
    }

    /// Checks an attribute set the platform is about to send: each attribute a
    /// definition names must be `read_write` and of its type and range; undefined
    /// attributes pass unless `strict_keys` is set.
    ///
    /// # Errors
    /// The first [`Violation`].
    pub fn check_attribute_set(&self, values: &Json) -> std::result::Result<(), Violation> {
        let Json::Object(map) = values else {
            return Ok(());
        };
        for (key, value) in map {
            match self.attribute_def(key) {
                Some(def) if def.access != Access::ReadWrite => {
                    return Err(Violation::new(
                        key,
                        "the attribute is read-only (access \"read\" in the template)",
                    ));
                }
                Some(def) => check_json(key, def.spec(), value)?,
                None if self.strict_keys => {
                    return Err(Violation::new(key, "no such attribute in the template"));
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// The part of a definition a value is checked against.
#[derive(Clone, Copy)]
struct Spec<'a> {
    data_type: DataType,
    min: Option<f64>,
    max: Option<f64>,
    enum_values: &'a [EnumValue],
}

impl Spec<'_> {
    /// Why `value` does not fit, if it does not.
    fn refuse(&self, value: &Value) -> Option<String> {
        let type_error = || {
            Some(format!(
                "expected {}, got {}",
                self.data_type.as_str(),
                value_type_name(value)
            ))
        };
        let number = match (self.data_type, value) {
            (DataType::Json, _) => return None,
            (DataType::Bool, Value::Bool(_)) => return None,
            (DataType::String, Value::String(_)) => return None,
            (DataType::Int, Value::Integer(i)) => *i as f64,
            (DataType::Int, Value::Float(f)) if f.fract() == 0.0 => *f,
            (DataType::Float, Value::Integer(i)) => *i as f64,
            (DataType::Float, Value::Float(f)) => *f,
            (DataType::Enum, Value::String(_) | Value::Integer(_) | Value::Bool(_)) => {
                let text = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_json().to_string(),
                };
                return if self.enum_values.iter().any(|e| e.value == text) {
                    None
                } else {
                    let allowed: Vec<&str> =
                        self.enum_values.iter().map(|e| e.value.as_str()).collect();
                    Some(format!("{text:?} is not one of {allowed:?}"))
                };
            }
            _ => return type_error(),
        };
        if let Some(min) = self.min.filter(|m| number < *m) {
            return Some(format!("{number} is below the minimum {min}"));
        }
        if let Some(max) = self.max.filter(|m| number > *m) {
            return Some(format!("{number} is above the maximum {max}"));
        }
        None
    }
}

fn value_type_name(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "bool",
        Value::Integer(_) => "int",
        Value::Float(_) => "float",
        Value::String(_) => "string",
        Value::Json(_) => "json",
    }
}

fn check_reported<'a>(
    defs: &[Property],
    strict: bool,
    values: impl IntoIterator<Item = (&'a str, &'a Value)>,
) -> Vec<Violation> {
    let mut out = Vec::new();
    for (key, value) in values {
        match defs.iter().find(|d| d.identifier == key) {
            Some(def) => {
                if let Some(reason) = def.spec().refuse(value) {
                    out.push(Violation::new(key, reason));
                }
            }
            None if strict => out.push(Violation::new(key, "not defined in the template")),
            None => {}
        }
    }
    out
}

fn check_json(key: &str, spec: Spec<'_>, value: &Json) -> std::result::Result<(), Violation> {
    let Some(v) = Value::from_json(value.clone()) else {
        return Err(Violation::new(key, "null is not a value"));
    };
    match spec.refuse(&v) {
        Some(reason) => Err(Violation::new(key, reason)),
        None => Ok(()),
    }
}

fn check_text(field: &str, s: &str, max: usize) -> Result<()> {
    let len = s.trim().chars().count();
    if len == 0 || s.chars().count() > max {
        return Err(Error::invalid(
            field,
            format!("must be 1 to {max} characters"),
        ));
    }
    Ok(())
}

fn check_unique<'a>(kind: &str, ids: impl Iterator<Item = &'a String>) -> Result<()> {
    let mut seen = HashSet::new();
    for (i, id) in ids.enumerate() {
        let field = format!("{kind}[{i}].identifier");
        if id.is_empty()
            || id.chars().count() > MAX_IDENTIFIER
            || id.chars().any(char::is_whitespace)
        {
            return Err(Error::invalid(
                field,
                format!("must be 1 to {MAX_IDENTIFIER} characters without blanks"),
            ));
        }
        if !seen.insert(id.as_str()) {
            return Err(Error::unprocessable(
                field,
                format!("{id:?} is defined twice"),
            ));
        }
    }
    Ok(())
}

fn check_spec(at: &str, name: &str, spec: Spec<'_>, step: Option<f64>) -> Result<()> {
    check_text(&format!("{at}.name"), name, 255)?;
    if !spec.data_type.numeric() && (spec.min.is_some() || spec.max.is_some()) {
        return Err(Error::unprocessable(
            format!("{at}.min"),
            "a range is only allowed on int and float",
        ));
    }
    for (field, v) in [("min", spec.min), ("max", spec.max), ("step", step)] {
        if v.is_some_and(|v| !v.is_finite()) {
            return Err(Error::invalid(
                format!("{at}.{field}"),
                "must be a finite number",
            ));
        }
    }
    if let (Some(min), Some(max)) = (spec.min, spec.max)
        && min > max
    {
        return Err(Error::unprocessable(
            format!("{at}.max"),
            format!("{max} is below min {min}"),
        ));
    }
    if step.is_some_and(|s| s <= 0.0) {
        return Err(Error::invalid(format!("{at}.step"), "must be positive"));
    }
    match (spec.data_type, spec.enum_values.is_empty()) {
        (DataType::Enum, true) => Err(Error::unprocessable(
            format!("{at}.enum_values"),
            "an enum needs at least one value",
        )),
        (DataType::Enum, false) => {
            check_unique_values(at, spec.enum_values)?;
            Ok(())
        }
        (_, false) => Err(Error::unprocessable(
            format!("{at}.enum_values"),
            "enum values are only allowed on data_type enum",
        )),
        (_, true) => Ok(()),
    }
}

fn check_unique_values(at: &str, values: &[EnumValue]) -> Result<()> {
    let mut seen = HashSet::new();
    for (i, v) in values.iter().enumerate() {
        let field = format!("{at}.enum_values[{i}].value");
        check_text(&field, &v.value, 128)?;
        if !seen.insert(v.value.as_str()) {
            return Err(Error::unprocessable(
                field,
                format!("{:?} is listed twice", v.value),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> DeviceTemplate {
        let mut t = DeviceTemplate::new(TenantId::new(), "t");
        let mut temp = Property::new("temp", "Temperature", DataType::Float);
        (temp.min, temp.max) = (Some(-40.0), Some(125.0));
        let mut mode = Property::new("mode", "Mode", DataType::Enum);
        mode.enum_values = vec![
            EnumValue {
                value: "auto".into(),
                description: None,
            },
            EnumValue {
                value: "1".into(),
                description: None,
            },
        ];
        mode.access = Access::ReadWrite;
        t.telemetry = vec![temp, Property::new("on", "On", DataType::Bool)];
        t.attributes = vec![mode, Property::new("fw", "Firmware", DataType::String)];
        let mut target = Param::new("target", "Target", DataType::Int);
        (target.min, target.max) = (Some(5.0), Some(30.0));
        t.commands = vec![CommandDef {
            identifier: "set_target".into(),
            name: "Set target".into(),
            description: None,
            params: vec![target],
        }];
        t
    }

    #[test]
    fn values_are_checked_by_type_range_and_enum() {
        let t = template();
        t.check_definitions().unwrap();
        let ok = [
            ("temp", Value::Integer(20)),
            ("temp", Value::Float(-40.0)),
            ("on", Value::Bool(true)),
            ("other", Value::String("x".into())),
        ];
        assert!(
            t.check_telemetry(ok.iter().map(|(k, v)| (*k, v)))
                .is_empty()
        );
        let bad = [("temp", Value::Float(125.5)), ("on", Value::Integer(1))];
        let v = t.check_telemetry(bad.iter().map(|(k, v)| (*k, v)));
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].key.as_str(), v[1].key.as_str()), ("temp", "on"));
        assert!(v[0].reason.contains("maximum"), "{}", v[0]);
        let mode = [
            ("mode", Value::Integer(1)),
            ("mode", Value::String("auto".into())),
        ];
        assert!(
            t.check_attributes(mode.iter().map(|(k, v)| (*k, v)))
                .is_empty()
        );
        let mode = [("mode", Value::String("manual".into()))];
        assert_eq!(
            t.check_attributes(mode.iter().map(|(k, v)| (*k, v))).len(),
            1
        );
    }

    #[test]
    fn strict_templates_refuse_undefined_keys() {
        let mut t = template();
        t.strict_keys = true;
        let v = Value::Integer(1);
        assert_eq!(t.check_telemetry([("other", &v)])[0].key, "other");
        assert!(t.check_command("reboot", &Json::Null).is_err());
    }

    #[test]
    fn commands_take_their_defined_params() {
        let t = template();
        assert!(
            t.check_command("set_target", &serde_json::json!({"target": 21}))
                .is_ok()
        );
        let e = t
            .check_command("set_target", &serde_json::json!({"target": 40}))
            .unwrap_err();
        assert_eq!(e.key, "target");
        let e = t
            .check_command("set_target", &serde_json::json!({"tagret": 21}))
            .unwrap_err();
        assert_eq!(e.key, "tagret");
        let e = t
            .check_command("set_target", &serde_json::json!({"target": "hot"}))
            .unwrap_err();
        assert!(e.reason.contains("expected int"), "{e}");
        // undefined commands pass on a non-strict template
        assert!(
            t.check_command("reboot", &serde_json::json!({"x": 1}))
                .is_ok()
        );
    }

    #[test]
    fn attribute_sets_need_read_write() {
        let t = template();
        assert!(
            t.check_attribute_set(&serde_json::json!({"mode": "auto"}))
                .is_ok()
        );
        assert_eq!(
            t.check_attribute_set(&serde_json::json!({"fw": "2"}))
                .unwrap_err()
                .key,
            "fw"
        );
        assert_eq!(
            t.check_attribute_set(&serde_json::json!({"mode": "x"}))
                .unwrap_err()
                .key,
            "mode"
        );
    }

    #[test]
    fn bad_definitions_are_refused() {
        let mut t = template();
        t.telemetry
            .push(Property::new("temp", "Again", DataType::Int));
        assert!(
            matches!(t.check_definitions(), Err(Error::Unprocessable { field, .. }) if field == "telemetry[2].identifier")
        );
        let mut t = template();
        t.telemetry[0].min = Some(200.0);
        assert!(
            matches!(t.check_definitions(), Err(Error::Unprocessable { field, .. }) if field == "telemetry[0].max")
        );
        let mut t = template();
        t.attributes[0].enum_values.clear();
        assert!(t.check_definitions().is_err());
        let mut t = template();
        t.telemetry[1].min = Some(0.0);
        assert!(t.check_definitions().is_err());
        let mut t = template();
        t.commands[0]
            .params
            .push(Param::new("bad id", "x", DataType::Int));
        assert!(
            matches!(t.check_definitions(), Err(Error::Invalid { field, .. }) if field == "commands[0].params[1].identifier")
        );
    }

    #[test]
    fn definitions_round_trip_as_json() {
        let t = template();
        let doc = serde_json::to_value(t.definitions()).unwrap();
        assert_eq!(doc["telemetry"][0]["data_type"], "float");
        assert_eq!(doc["attributes"][0]["access"], "read_write");
        let back: Definitions = serde_json::from_value(doc).unwrap();
        assert_eq!(back, t.definitions());
    }
}

//! The OpenAPI description of the API.

use utoipa::Modify;
use utoipa::OpenApi;
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, ParameterIn, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};

/// Where the OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// Name of the bearer-JWT security scheme.
pub const BEARER_SCHEME: &str = "bearer";

/// Name of the `X-API-Key` security scheme.
pub const API_KEY_SCHEME: &str = "api_key";

/// Static part of the document; paths come from the route table.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "ThingsPanel (Rust) API",
        description = "Devices, telemetry and platform operations. Sign in with `POST /api/v1/auth/login` and send `Authorization: Bearer <token>`, or send an API key as `X-API-Key`. Each operation's security requirement lists, as its scopes, the permission it needs (`device:read`, `device:write`, `device:command`, `user:manage`, `role:manage`, `apikey:manage`, `group:write`, `profile:write`, `audit:read`, `rule:read`, `rule:write`, `alarm:read`, `ota:read`, `ota:write`, `template:read`, `template:write`, `script:read`, `script:write`, `dashboard:read`, `dashboard:write`) or `SYS_ADMIN`; an empty list means any authenticated caller. Another tenant's resources answer 404."
    ),
    modifiers(&SecurityAddon),
    // Named only through a query parameter's `value_type`, so not collected by a route.
    components(schemas(tp_core::rules::AlarmStatus)),
    tags(
        (name = "auth", description = "Sign in, refresh, sign out, password change and the current user"),
        (name = "tenants", description = "Tenants and their admins (SYS_ADMIN)"),
        (name = "users", description = "Users of the caller's tenant"),
        (name = "roles", description = "Custom roles: named sets of permissions"),
        (name = "api-keys", description = "API keys for integrations (`X-API-Key`)"),
        (name = "groups", description = "Device groups (a tree) and their members"),
        (name = "profiles", description = "Device profiles"),
        (name = "audit", description = "Who changed what"),
        (name = "devices", description = "Device registry and MQTT credentials"),
        (name = "telemetry", description = "Telemetry, attributes and events of a device"),
        (name = "downlink", description = "Commands, attribute set/get and telemetry control to a device, and their log"),
        (name = "rules", description = "Automation rules: trigger groups (OR of AND-ed conditions) and actions"),
        (name = "scenes", description = "Manual scenes: named action lists run on demand"),
        (name = "alarms", description = "Alarms raised by rules: lifecycle, history, comments and counts"),
        (name = "notifications", description = "Notification channels (webhook, email) and the notification history"),
        (name = "ota", description = "OTA upgrades: packages (uploaded or external), tasks that send them to devices over `ota/devices/inform/{device_number}`, and each device's progress"),
        (name = "templates", description = "Device templates: the thing model (typed telemetry, attribute, event and command definitions) and its validation mode on ingest"),
        (name = "scripts", description = "Data scripts: ThingsPanel-compatible Lua run on a profile's uplink before decoding and downlink after encoding, and their test run"),
        (name = "dashboards", description = "Dashboards: grids of widgets (charts, value cards, gauges, switches, buttons, alarm lists, device status tables, maps, markdown) bound to the tenant's devices, the home dashboard and one live stream per dashboard"),
        (name = "stats", description = "The tenant's trends for the home page: messages per minute, devices online per hour, alarms raised and cleared per hour, the busiest devices"),
        (name = "system", description = "Health, readiness, metrics and API documentation"),
    )
)]
pub(crate) struct ApiDoc;

#[derive(Debug)]
struct SecurityAddon;

impl Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            API_KEY_SCHEME,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "An API key created with POST /api/v1/api-keys",
            ))),
        );
    }
}

/// The OpenAPI 3.1 document of every route served by [`crate::router`], as JSON
/// (what `GET /api/v1/openapi.json` serves). It is JSON rather than utoipa's typed
/// document because the last edits (discriminators, links) are made on the JSON.
pub fn openapi() -> serde_json::Value {
    let mut doc = crate::routes::api_router().into_openapi();
    let docs = OperationBuilder::new()
        .tag("system")
        .summary(Some("Swagger UI rendering the OpenAPI document"))
        .response(
            "303",
            ResponseBuilder::new()
                .description("Redirect to `/docs/`, the Swagger UI page (HTML)")
                .build(),
        )
        .build();
    doc.paths
        .paths
        .insert("/docs".to_owned(), PathItem::new(HttpMethod::Get, docs));
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            document_extractor_errors(op);
        }
    }
    // utoipa's document types are plain data; serializing them cannot fail.
    let mut value = serde_json::to_value(&doc).unwrap_or_default();
    add_discriminators(&mut value);
    add_condition_value_rules(&mut value);
    add_definition_rules(&mut value);
    add_field_pairing_rules(&mut value);
    add_links(&mut value);
    add_request_examples(&mut value);
    value
}

/// An example of every JSON request body, by schema name (ids are placeholders:
/// replace them with ones of your tenant).
const REQUEST_EXAMPLES: &[(&str, &str)] = &[
    ("TransitionRequest", r#"{"text": "on my way"}"#),
    ("CommentRequest", r#"{"text": "valve replaced"}"#),
    (
        "CreateApiKeyRequest",
        r#"{"name": "erp-sync", "role": "TENANT_USER", "expires_at": 4102444800000}"#,
    ),
    (
        "LoginRequest",
        r#"{"email": "admin@thingspanel.local", "password": "correct horse battery staple"}"#,
    ),
    (
        "PasswordRequest",
        r#"{"current_password": "correct horse battery staple", "new_password": "a new long passphrase"}"#,
    ),
    (
        "RefreshRequest",
        r#"{"refresh_token": "<refresh token from sign-in>"}"#,
    ),
    (
        "ProvisionRequest",
        r#"{"profile_secret": "<the profile's provisioning secret>", "device_number": "pump-7", "name": "Pump 7"}"#,
    ),
    (
        "CreateDeviceRequest",
        r#"{"name": "Boiler", "device_number": "boiler-1", "label": "basement"}"#,
    ),
    (
        "ImportRequest",
        r#"{"devices": [{"name": "Pump 1", "device_number": "pump-1"}, {"name": "Pump 2", "device_number": "pump-2", "voucher_type": "ACCESSTOKEN"}]}"#,
    ),
    (
        "UpdateDeviceRequest",
        r#"{"label": "roof", "enabled": true}"#,
    ),
    (
        "AttributeSetRequest",
        r#"{"values": {"target_temp": 21.5}, "expires_in_secs": 3600}"#,
    ),
    ("AttributeGetRequest", r#"{"keys": ["fw", "ip"]}"#),
    (
        "CommandRequest",
        r#"{"method": "ReSet", "params": {"delay": 5}, "expires_in_secs": 86400}"#,
    ),
    ("CredentialsRequest", r#"{"voucher_type": "ACCESSTOKEN"}"#),
    (
        "TelemetryControlRequest",
        r#"{"values": {"switch": false}}"#,
    ),
    ("CreateGroupRequest", r#"{"name": "Building A"}"#),
    ("UpdateGroupRequest", r#"{"name": "Building A (north)"}"#),
    (
        "CreateChannelRequest",
        r#"{"type": "email", "name": "ops mail", "to": ["ops@example.com"]}"#,
    ),
    ("UpdateChannelRequest", r#"{"enabled": false}"#),
    (
        "CreateProfileRequest",
        r#"{"name": "Boilers", "device_type": "direct", "online_timeout_secs": 300}"#,
    ),
    ("UpdateProfileRequest", r#"{"heartbeat_secs": 120}"#),
    (
        "CreateRoleRequest",
        r#"{"name": "operator", "permissions": ["device:read", "device:command", "alarm:ack"]}"#,
    ),
    ("UpdateRoleRequest", r#"{"permissions": ["device:read"]}"#),
    (
        "CreateRuleRequest",
        r#"{"name": "boiler too hot", "trigger_groups": [{"conditions": [{"type": "device", "source": {"kind": "device", "id": "00000000-0000-0000-0000-000000000001"}, "data": "telemetry", "key": "temperature", "operator": ">", "value": 40, "duration_secs": 30}]}], "actions": [{"type": "raise_alarm", "severity": "major", "title": "Boiler too hot"}, {"type": "telemetry_control", "target": {"kind": "triggering_device"}, "values": {"switch": false}}]}"#,
    ),
    ("UpdateRuleRequest", r#"{"enabled": false}"#),
    (
        "CreateSceneRequest",
        r#"{"name": "all off", "actions": [{"type": "command", "target": {"kind": "device", "id": "00000000-0000-0000-0000-000000000001"}, "method": "SetPower", "params": {"on": false}}]}"#,
    ),
    (
        "UpdateSceneRequest",
        r#"{"description": "every boiler off"}"#,
    ),
    ("TenantRequest", r#"{"name": "Acme Heating"}"#),
    (
        "CreateAdminRequest",
        r#"{"email": "admin@acme.example", "name": "Acme admin", "password": "a long passphrase"}"#,
    ),
    (
        "CreateUserRequest",
        r#"{"email": "ops@acme.example", "name": "Operator", "password": "a long passphrase", "role": "TENANT_USER"}"#,
    ),
    ("UpdateUserRequest", r#"{"name": "Night operator"}"#),
    (
        "CreatePackageRequest",
        r#"{"name": "boiler firmware", "version": "1.2.0", "module": "MCU", "description": "fixes the pump relay", "ext_data": {"channel": "stable"}}"#,
    ),
    (
        "UpdatePackageRequest",
        r#"{"description": "fixes the pump relay and the display"}"#,
    ),
    (
        "CreateTaskRequest",
        r#"{"package_id": "00000000-0000-0000-0000-000000000001", "device_ids": ["00000000-0000-0000-0000-000000000002"], "name": "boilers to 1.2.0"}"#,
    ),
    (
        "TemplateRequest",
        r#"{"name": "Thermostat", "validation": "reject", "telemetry": [{"identifier": "temp", "name": "Temperature", "data_type": "float", "unit": "°C", "min": -40, "max": 125, "step": 0.5}], "attributes": [{"identifier": "mode", "name": "Mode", "data_type": "enum", "enum_values": [{"value": "auto", "description": "Automatic"}, {"value": "off"}], "access": "read_write"}], "events": [{"identifier": "overheat", "name": "Overheated", "params": [{"identifier": "temp", "name": "Temperature", "data_type": "float", "unit": "°C"}]}], "commands": [{"identifier": "set_target", "name": "Set target", "params": [{"identifier": "target", "name": "Target", "data_type": "int", "unit": "°C", "min": 5, "max": 30}]}]}"#,
    ),
    ("CopyTemplateRequest", r#"{"name": "Thermostat v2"}"#),
    (
        "CreateScriptRequest",
        r#"{"profile_id": "5f0c2a6e-8d1b-4c3a-9e2f-0a1b2c3d4e5f", "script_type": "telemetry_up", "name": "decode packed frame", "content": "local json = require(\"json\")\nfunction encodeInp(msg, topic)\n  local hi, lo = string.byte(msg, 1, 2)\n  return json.encode({temperature = (hi * 256 + lo) / 10})\nend", "enabled": true}"#,
    ),
    ("UpdateScriptRequest", r#"{"enabled": false}"#),
    (
        "DashboardRequest",
        r##"{"name": "Boiler room", "home": true, "widgets": [{"id": "temp-chart", "title": "Temperature", "x": 0, "y": 0, "w": 8, "h": 4, "config": {"type": "chart", "device_id": "00000000-0000-0000-0000-000000000001", "keys": ["temperature"], "range_secs": 86400, "aggregation": "avg", "style": "area"}}, {"id": "temp-now", "x": 8, "y": 0, "w": 4, "h": 2, "config": {"type": "value", "device_id": "00000000-0000-0000-0000-000000000001", "key": "temperature", "unit": "°C", "thresholds": [{"from": 60, "color": "#d9534f"}]}}, {"id": "power", "x": 8, "y": 2, "w": 4, "h": 2, "config": {"type": "switch", "device_id": "00000000-0000-0000-0000-000000000001", "key": "switch", "target": "telemetry_control"}}, {"id": "alarms", "x": 0, "y": 4, "w": 12, "h": 4, "config": {"type": "alarms", "limit": 10}}]}"##,
    ),
    (
        "TestScriptRequest",
        r#"{"payload_hex": "0105", "topic": "devices/telemetry"}"#,
    ),
];

/// Puts [`REQUEST_EXAMPLES`] on their schemas.
fn add_request_examples(doc: &mut serde_json::Value) {
    for (name, example) in REQUEST_EXAMPLES {
        let example: serde_json::Value = serde_json::from_str(example).unwrap_or_default();
        if let Some(schema) = doc
            .pointer_mut(&format!("/components/schemas/{name}"))
            .and_then(serde_json::Value::as_object_mut)
        {
            schema.insert("example".to_owned(), example);
        }
    }
}

/// Operations that answer 422 (`unprocessable`, naming the field) for a well-formed
/// request they cannot act on, and why. Rules and scenes document theirs inline.
const UNPROCESSABLE: &[(&str, &str)] = &[
    (
        "create_device",
        "`profile_id` or `parent_id` is not a device/profile of the tenant, the gateway placement does not hold (`sub_device_addr` without a parent, a cycle, too deep), or the chosen credentials do not fit the voucher type",
    ),
    (
        "rotate_credentials",
        "The chosen credentials do not fit the voucher type (a username without a password, a token with a username)",
    ),
    (
        "update_device",
        "`profile_id` or `parent_id` is not a device/profile of the tenant, or the gateway placement does not hold (`sub_device_addr` without a parent, a cycle, too deep)",
    ),
    ("create_user", "`role_id` is not a role of the tenant"),
    (
        "create_profile",
        "`template_id` is not a template of the tenant",
    ),
    (
        "update_profile",
        "`template_id` is not a template of the tenant",
    ),
    (
        "update_user",
        "`role_id` is not a role of the tenant, or a new `password` for oneself (that is `PUT /api/v1/auth/password`)",
    ),
    (
        "create_api_key",
        "`role_id` is not a role of the tenant, or `expires_at` is not in the future",
    ),
    (
        "create_channel",
        "The URL or a recipient address is not usable",
    ),
    (
        "update_channel",
        "A field of the other channel type, or the URL or a recipient address is not usable",
    ),
    (
        "import_devices",
        "The CSV holds no device rows, or more than 1000",
    ),
    ("delete_telemetry", "`end` is not after `start`"),
    (
        "send_command",
        "The device's template defines the command and `params` do not fit it: an unknown parameter, a wrong type, a value out of range or not among the enum values (the field names the parameter, `params.<identifier>`); with `strict_keys` also a command the template does not define",
    ),
    (
        "set_attributes",
        "The device's template defines an attribute as read-only, or the value does not fit its type, range or enum values (the field names it, `values.<identifier>`)",
    ),
    ("events", "`end` is not after `start`"),
    ("status_history", "`end` is before `start`"),
];

/// The tagged unions of the rule model and the property that names each member.
/// The third element: the members refuse unknown fields (serde `deny_unknown_fields`),
/// which the derive does not write for enum members.
const TAGGED_UNIONS: [(&str, &str, bool); 7] = [
    ("WidgetConfig", "type", true),
    ("CreateChannelRequest", "type", true),
    ("Condition", "type", false),
    ("Action", "type", false),
    ("ScheduleKind", "type", false),
    ("DeviceSource", "kind", false),
    ("ActionTarget", "kind", false),
];

/// Turns each tagged union of [`TAGGED_UNIONS`] (a `oneOf` of inline objects, as the
/// derive writes serde's internally and adjacently tagged enums) into a `oneOf` of
/// named schemas, one per kind (`ConditionDevice`, `ActionRaiseAlarm`, ...), with a
/// `discriminator` mapping each tag value to its schema, so generated clients get
/// one type per kind and pick it by the tag instead of trying each in turn.
fn add_discriminators(doc: &mut serde_json::Value) {
    use serde_json::{Map, Value, json};
    let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let mut added = Map::new();
    for (name, tag, closed) in TAGGED_UNIONS {
        let Some(members) = schemas
            .get_mut(name)
            .and_then(|s| s.get_mut("oneOf"))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        let mut mapping = Map::new();
        for member in members.iter_mut() {
            // A unit or struct variant is one object; a newtype variant is an
            // `allOf` of the inner type and an object holding only the tag.
            let parts = match member.get("allOf").and_then(Value::as_array) {
                Some(parts) => parts.clone(),
                None => vec![member.clone()],
            };
            let Some(kind) = parts.iter().find_map(|p| {
                p.pointer(&format!("/properties/{tag}/enum/0"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            }) else {
                continue;
            };
            if closed && let Some(object) = member.as_object_mut() {
                object.insert("additionalProperties".to_owned(), Value::Bool(false));
            }
            let member_name = format!("{name}{}", pascal_case(&kind));
            let reference = format!("#/components/schemas/{member_name}");
            added.insert(
                member_name,
                std::mem::replace(member, json!({ "$ref": reference })),
            );
            mapping.insert(kind, Value::String(reference));
        }
        if let Some(union) = schemas.get_mut(name).and_then(Value::as_object_mut) {
            union.insert(
                "discriminator".to_owned(),
                json!({ "propertyName": tag, "mapping": mapping }),
            );
        }
    }
    schemas.extend(added);
}

/// Where a schema lists the combinations of its fields the server accepts (cross-field
/// rules: a condition's value by operator, a definition's range by data type): an
/// array of JSON Schemas of which the request must match at least one, i.e. an
/// `anyOf`. Kept under an extension because client generators (openapi-python-client)
/// cannot model an object that carries `anyOf` beside its `properties` and drop the
/// whole operation; property-based testers read it as `anyOf` (scripts/api-fuzz-seed.py
/// lifts it).
const VALID_COMBINATIONS: &str = "x-valid-combinations";

/// Request fields that go together or exclude each other (what the OTA routes
/// check): a package's `sign` and `sign_method` both or neither; a task targets
/// either `device_ids` or a `profile_id`.
fn add_field_pairing_rules(doc: &mut serde_json::Value) {
    use serde_json::json;
    let rules = [
        (
            "CreatePackageRequest",
            json!([
                {"description": "unsigned",
                 "properties": {"sign": {"type": "null"}, "sign_method": {"type": "null"}}},
                {"description": "signed: `sign` with its `sign_method`",
                 "required": ["sign", "sign_method"],
                 "properties": {"sign": {"type": "string"}, "sign_method": {"type": "string"}}},
            ]),
        ),
        (
            "CreateTaskRequest",
            json!([
                {"description": "for devices",
                 "required": ["device_ids"],
                 "properties": {"device_ids": {"type": "array"}, "profile_id": {"type": "null"}}},
                {"description": "for the devices of a profile",
                 "required": ["profile_id"],
                 "properties": {"profile_id": {"type": "string"}, "device_ids": {"type": "null"}}},
            ]),
        ),
    ];
    for (name, any_of) in rules {
        if let Some(schema) = doc
            .pointer_mut(&format!("/components/schemas/{name}"))
            .and_then(serde_json::Value::as_object_mut)
        {
            schema.insert(VALID_COMBINATIONS.to_owned(), any_of);
        }
    }
}

/// A text with a character Rust's `trim` keeps (its white space spelled out, as the
/// server checks it, rather than ECMA's `\s`).
const RUST_NON_BLANK: &str =
    r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";

/// What `tp_core::thing_model` checks on each telemetry, attribute or parameter
/// definition beyond single fields: a range only on `int`/`float`, enum values
/// required on `enum` and only there, names that are not blank.
fn add_definition_rules(doc: &mut serde_json::Value) {
    use serde_json::json;
    let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(serde_json::Value::as_object_mut)
    else {
        return;
    };
    let no_range = json!({"min": {"type": "null"}, "max": {"type": "null"}});
    let typed = json!([
        {
            "description": "int and float: a range (min <= max), no enum values",
            "properties": {
                "data_type": {"enum": ["int", "float"]},
                "enum_values": {"maxItems": 0},
            },
        },
        {
            "description": "enum: at least one value (each listed once), no range",
            "properties": {
                "data_type": {"enum": ["enum"]},
                "enum_values": {"minItems": 1},
                "min": no_range["min"],
                "max": no_range["max"],
            },
            "required": ["enum_values"],
        },
        {
            "description": "bool, string and json: neither a range nor enum values",
            "properties": {
                "data_type": {"enum": ["bool", "string", "json"]},
                "enum_values": {"maxItems": 0},
                "min": no_range["min"],
                "max": no_range["max"],
            },
        },
    ]);
    for name in ["Property", "Param"] {
        if let Some(schema) = schemas
            .get_mut(name)
            .and_then(serde_json::Value::as_object_mut)
        {
            schema.insert(VALID_COMBINATIONS.to_owned(), typed.clone());
        }
    }
    // Identifiers (and enum values) must not repeat, so neither may whole items.
    for (name, field) in [
        ("TemplateRequest", "telemetry"),
        ("TemplateRequest", "attributes"),
        ("TemplateRequest", "events"),
        ("TemplateRequest", "commands"),
        ("EventDef", "params"),
        ("CommandDef", "params"),
        ("Property", "enum_values"),
        ("Param", "enum_values"),
    ] {
        if let Some(list) = schemas
            .get_mut(name)
            .and_then(|s| s.pointer_mut(&format!("/properties/{field}")))
            .and_then(serde_json::Value::as_object_mut)
        {
            list.insert("uniqueItems".to_owned(), json!(true));
        }
    }
    for (name, field) in [
        ("Property", "name"),
        ("Param", "name"),
        ("EventDef", "name"),
        ("CommandDef", "name"),
        ("EnumValue", "value"),
    ] {
        if let Some(text) = schemas
            .get_mut(name)
            .and_then(|s| s.pointer_mut(&format!("/properties/{field}")))
            .and_then(serde_json::Value::as_object_mut)
        {
            text.insert("pattern".to_owned(), json!(RUST_NON_BLANK));
        }
    }
}

/// A device condition's `value` depends on its `data` and `operator` (what
/// `tp_core::rules::validate` checks): one `anyOf` member per fitting combination,
/// so clients and testers can build a valid condition from the document alone.
fn add_condition_value_rules(doc: &mut serde_json::Value) {
    use serde_json::json;
    let Some(condition) = doc
        .pointer_mut("/components/schemas/ConditionDevice")
        .and_then(serde_json::Value::as_object_mut)
    else {
        return;
    };
    let key = json!({"type": "string", "pattern": RUST_NON_BLANK});
    let valued = |operators: serde_json::Value, value: serde_json::Value| {
        json!({
            "properties": {
                "data": {"enum": ["telemetry", "attribute", "event"]},
                "key": key,
                "operator": {"enum": operators},
                "value": value,
            },
            "required": ["key"],
        })
    };
    let number = json!({"type": "number"});
    condition.insert(
        VALID_COMBINATIONS.to_owned(),
        json!([
            {
                "description": "Online state: = or != to \"online\", \"offline\", true or false",
                "properties": {
                    "data": {"enum": ["status"]},
                    "operator": {"enum": ["=", "!="]},
                    "value": {"anyOf": [{"type": "boolean"}, {"enum": ["online", "offline"]}]},
                },
            },
            valued(json!(["=", "!="]), json!({"type": ["number", "string", "boolean"]})),
            valued(json!([">", "<", ">=", "<="]), number.clone()),
            valued(
                json!(["between"]),
                json!({"type": "array", "items": number, "minItems": 2, "maxItems": 2,
                       "description": "[lo, hi] with lo <= hi"}),
            ),
            valued(json!(["in"]), json!({"type": "array", "minItems": 1})),
            {
                "description": "An event as the trigger itself (any operator, value null)",
                "properties": {
                    "data": {"enum": ["event"]},
                    "key": key,
                    "value": {"type": "null"},
                },
                "required": ["key"],
            },
        ]),
    );
}

/// `raise_alarm` -> `RaiseAlarm`.
fn pascal_case(snake: &str) -> String {
    snake
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Second path ids of operations under a created resource that come from the create
/// request: (collection, parameter, runtime expression).
const LINKED_REQUEST_IDS: &[(&str, &str, &str)] = &[(
    "/api/v1/ota/tasks",
    "device_id",
    "$request.body#/device_ids/0",
)];

/// Adds OpenAPI links from every create (`POST /x` answering 201 with the new
/// resource's `id`) to the operations on that resource (`/x/{id}` and below), so
/// stateful testers and client generators can chain create -> get/update/delete.
fn add_links(doc: &mut serde_json::Value) {
    use serde_json::{Map, Value, json};
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return;
    };
    let mut links: Vec<(String, Map<String, Value>)> = Vec::new();
    for collection in paths.keys() {
        let creates = paths[collection].pointer("/post/responses/201").is_some();
        if !creates {
            continue;
        }
        let item = format!("{collection}/{{id}}");
        let mut targets = Map::new();
        for (path, ops) in paths {
            if path != &item && !path.starts_with(&format!("{item}/")) {
                continue;
            }
            // Paths whose sole parameter is the new resource's id, or whose second
            // one the create request names ([`LINKED_REQUEST_IDS`]).
            let mut parameters = json!({ "id": "$response.body#/id" });
            match path.matches('{').count() {
                1 => {}
                2 => match LINKED_REQUEST_IDS
                    .iter()
                    .find(|(c, param, _)| c == collection && path.contains(&format!("{{{param}}}")))
                {
                    Some((_, param, expression)) => {
                        parameters[*param] = json!(expression);
                    }
                    None => continue,
                },
                _ => continue,
            }
            for op in ops.as_object().into_iter().flat_map(|o| o.values()) {
                if let Some(id) = op.get("operationId").and_then(Value::as_str) {
                    targets.insert(
                        id.to_owned(),
                        json!({
                            "operationId": id,
                            "parameters": parameters,
                        }),
                    );
                }
            }
        }
        if !targets.is_empty() {
            links.push((collection.clone(), targets));
        }
    }
    for (collection, targets) in links {
        if let Some(created) = doc
            .pointer_mut(&format!(
                "/paths/{}/post/responses/201",
                collection.replace('~', "~0").replace('/', "~1")
            ))
            .and_then(Value::as_object_mut)
        {
            created.insert("links".to_owned(), Value::Object(targets));
        }
    }
}

/// Adds the answers the request extractors give on every route, so no handler has to
/// repeat them: 400 for a path parameter that does not parse (a malformed id), and
/// for a JSON body 400 (malformed JSON or a wrong field), 413 (over the body limit)
/// and 415 (not `application/json`). Existing entries are kept.
fn document_extractor_errors(op: &mut Operation) {
    let error = |description: &str| -> RefOr<Response> {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build(),
        )
    };
    let has_param = |place: ParameterIn| {
        op.parameters.as_ref().is_some_and(|ps| {
            ps.iter()
                .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == place))
        })
    };
    let (path_param, query_param) = (has_param(ParameterIn::Path), has_param(ParameterIn::Query));
    let unprocessable = op
        .operation_id
        .as_deref()
        .and_then(|id| UNPROCESSABLE.iter().find(|(op_id, _)| *op_id == id))
        .map(|(_, why)| *why);
    let responses = &mut op.responses.responses;
    if path_param {
        responses
            .entry("400".to_owned())
            .or_insert_with(|| error("A path parameter is malformed (e.g. not a UUID)"));
    }
    if query_param {
        responses
            .entry("400".to_owned())
            .or_insert_with(|| error("A query parameter is malformed or out of range"));
    }
    if let Some(why) = unprocessable {
        responses
            .entry("422".to_owned())
            .or_insert_with(|| error(why));
    }
    if op.request_body.is_some() {
        responses
            .entry("400".to_owned())
            .or_insert_with(|| error("Malformed JSON or an invalid field"));
        responses
            .entry("413".to_owned())
            .or_insert_with(|| error("The body exceeds the size limit"));
        responses
            .entry("415".to_owned())
            .or_insert_with(|| error("The body is not `application/json`"));
    }
}

#[cfg(test)]
mod tests {
    /// Every JSON request body has an example, and every example belongs to a
    /// request schema that exists (a renamed type would silently lose it).
    #[test]
    fn every_request_body_has_an_example() {
        let doc = super::openapi();
        let schemas = &doc["components"]["schemas"];
        for (name, _) in super::REQUEST_EXAMPLES {
            assert!(schemas[name].is_object(), "no schema {name}");
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let Some(schema) = op.pointer("/requestBody/content/application~1json/schema")
                else {
                    continue;
                };
                let reference = schema["$ref"]
                    .as_str()
                    .or_else(|| schema.pointer("/oneOf/0/$ref").and_then(|r| r.as_str()))
                    .unwrap_or_else(|| panic!("{method} {path}: body is not a named schema"));
                let name = reference.rsplit('/').next().unwrap();
                assert!(
                    schemas[name].get("example").is_some(),
                    "{method} {path}: {name} has no example"
                );
            }
        }
    }
}

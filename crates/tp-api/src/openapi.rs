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
        description = "Devices, telemetry and platform operations. Sign in with `POST /api/v1/auth/login` and send `Authorization: Bearer <token>`, or send an API key as `X-API-Key`. Each operation's security requirement lists, as its scopes, the permission it needs (`device:read`, `device:write`, `device:command`, `user:manage`, `role:manage`, `apikey:manage`, `group:write`, `profile:write`, `audit:read`, `rule:read`, `rule:write`, `alarm:read`) or `SYS_ADMIN`; an empty list means any authenticated caller. Another tenant's resources answer 404."
    ),
    modifiers(&SecurityAddon),
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

/// The OpenAPI document of every route served by [`crate::router`].
pub fn openapi() -> utoipa::openapi::OpenApi {
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
    doc
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
    let has_path_param = op.parameters.as_ref().is_some_and(|ps| {
        ps.iter()
            .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == ParameterIn::Path))
    });
    let responses = &mut op.responses.responses;
    if has_path_param {
        responses
            .entry("400".to_owned())
            .or_insert_with(|| error("A path parameter is malformed (e.g. not a UUID)"));
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

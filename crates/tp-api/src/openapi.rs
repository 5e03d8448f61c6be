//! The OpenAPI description of the API.

use utoipa::Modify;
use utoipa::OpenApi;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// Where the OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// Name of the bearer-JWT security scheme.
pub const BEARER_SCHEME: &str = "bearer";

/// Static part of the document; paths come from the route table.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "ThingsPanel (Rust) API",
        description = "Devices, telemetry and platform operations. Sign in with `POST /api/v1/auth/login` and send `Authorization: Bearer <token>`."
    ),
    modifiers(&SecurityAddon),
    tags(
        (name = "auth", description = "Sign in and the current user"),
        (name = "devices", description = "Device registry and MQTT credentials"),
        (name = "telemetry", description = "Telemetry, attributes and events of a device"),
        (name = "downlink", description = "Commands, attribute set/get and telemetry control to a device, and their log"),
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
    doc
}

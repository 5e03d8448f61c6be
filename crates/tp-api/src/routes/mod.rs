//! Route table, request middleware and fallbacks.

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::error::{ApiError, ErrorDetail};
use crate::openapi::{ApiDoc, OPENAPI_PATH};
use crate::state::AppState;

mod alarms;
mod auth;
mod channels;
mod dashboards;
mod devices;
pub(crate) mod downlink;
mod extract;
mod groups;
mod names;
mod ota;
mod profiles;
mod provision;
mod roles;
mod rules;
mod scenes;
mod scripts;
mod stats;
pub(crate) mod stream;
mod support;
mod system;
mod telemetry;
mod templates;
mod users;

/// Every documented route, with its OpenAPI description (state not yet applied).
pub(crate) fn api_router() -> OpenApiRouter<AppState> {
    let v1 = OpenApiRouter::new()
        .routes(routes!(auth::login))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::change_password))
        .routes(routes!(auth::me))
        .routes(routes!(users::create_tenant, users::list_tenants))
        .routes(routes!(
            users::get_tenant,
            users::update_tenant,
            users::delete_tenant
        ))
        .routes(routes!(users::create_tenant_admin))
        .routes(routes!(users::create_user, users::list_users))
        .routes(routes!(
            users::get_user,
            users::update_user,
            users::delete_user
        ))
        .routes(routes!(roles::create_role, roles::list_roles))
        .routes(routes!(
            roles::get_role,
            roles::update_role,
            roles::delete_role
        ))
        .routes(routes!(roles::create_api_key, roles::list_api_keys))
        .routes(routes!(roles::delete_api_key))
        .routes(routes!(groups::create_group, groups::list_groups))
        .routes(routes!(groups::group_tree))
        .routes(routes!(
            groups::get_group,
            groups::update_group,
            groups::delete_group
        ))
        .routes(routes!(
            groups::add_group_device,
            groups::remove_group_device
        ))
        .routes(routes!(groups::list_group_devices))
        .routes(routes!(profiles::create_profile, profiles::list_profiles))
        .routes(routes!(
            profiles::get_profile,
            profiles::update_profile,
            profiles::delete_profile
        ))
        .routes(routes!(profiles::list_audit))
        .routes(routes!(devices::create_device, devices::list_devices))
        .routes(routes!(
            devices::get_device,
            devices::update_device,
            devices::delete_device
        ))
        .routes(routes!(devices::rotate_credentials))
        .routes(routes!(devices::import_devices))
        .routes(routes!(devices::status_history))
        .routes(routes!(provision::provision))
        .routes(routes!(telemetry::latest_telemetry))
        .routes(routes!(stream::telemetry_stream))
        .routes(routes!(
            telemetry::telemetry_history,
            telemetry::delete_telemetry
        ))
        .routes(routes!(telemetry::attributes, downlink::set_attributes))
        .routes(routes!(telemetry::events))
        .routes(routes!(downlink::send_command, downlink::list_commands))
        .routes(routes!(downlink::get_attributes))
        .routes(routes!(downlink::telemetry_control))
        .routes(routes!(rules::create_rule, rules::list_rules))
        .routes(routes!(
            rules::get_rule,
            rules::update_rule,
            rules::delete_rule
        ))
        .routes(routes!(scenes::create_scene, scenes::list_scenes))
        .routes(routes!(
            scenes::get_scene,
            scenes::update_scene,
            scenes::delete_scene
        ))
        .routes(routes!(scenes::run_scene))
        .routes(routes!(alarms::list_alarms))
        .routes(routes!(alarms::alarm_counts))
        .routes(routes!(alarms::get_alarm))
        .routes(routes!(alarms::alarm_history))
        .routes(routes!(alarms::acknowledge_alarm))
        .routes(routes!(alarms::clear_alarm))
        .routes(routes!(alarms::comment_alarm))
        .routes(routes!(channels::create_channel, channels::list_channels))
        .routes(routes!(
            channels::get_channel,
            channels::update_channel,
            channels::delete_channel
        ))
        .routes(routes!(channels::list_notifications))
        .routes(routes!(ota::create_package, ota::list_packages))
        .routes(routes!(
            ota::get_package,
            ota::update_package,
            ota::delete_package
        ))
        .routes(ota_upload())
        .routes(routes!(ota::create_task, ota::list_tasks))
        .routes(routes!(ota::get_task, ota::delete_task))
        .routes(routes!(ota::cancel_task))
        .routes(routes!(ota::retry_task))
        .routes(routes!(ota::list_task_devices))
        .routes(routes!(ota::cancel_task_device))
        .routes(routes!(ota::retry_task_device))
        .routes(routes!(
            templates::create_template,
            templates::list_templates
        ))
        .routes(routes!(
            templates::get_template,
            templates::update_template,
            templates::delete_template
        ))
        .routes(routes!(templates::copy_template))
        .routes(routes!(templates::device_thing_model))
        .routes(routes!(scripts::create_script, scripts::list_scripts))
        .routes(routes!(
            scripts::get_script,
            scripts::update_script,
            scripts::delete_script
        ))
        .routes(routes!(scripts::test_script))
        .routes(routes!(
            dashboards::create_dashboard,
            dashboards::list_dashboards
        ))
        .routes(routes!(dashboards::home_dashboard))
        .routes(routes!(
            dashboards::get_dashboard,
            dashboards::update_dashboard,
            dashboards::delete_dashboard
        ))
        .routes(routes!(dashboards::dashboard_stream))
        .routes(routes!(telemetry::export_telemetry))
        .routes(routes!(stats::message_trend))
        .routes(routes!(stats::online_trend))
        .routes(routes!(stats::alarm_trend))
        .routes(routes!(stats::top_devices));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", v1)
        .routes(routes!(system::healthz))
        .routes(routes!(system::readyz))
        .routes(routes!(system::metrics))
        .routes(routes!(system::openapi_json))
}

/// The package upload route, without axum's default body limit: it streams to disk
/// under its own limit (`ota.max_package_bytes`).
fn ota_upload() -> utoipa_axum::router::UtoipaMethodRouter<AppState> {
    let (schemas, paths, method) = routes!(ota::upload_package);
    (
        schemas,
        paths,
        method.layer(axum::extract::DefaultBodyLimit::disable()),
    )
}

/// The complete application: every route, the Swagger UI at `/docs`, JSON fallbacks,
/// request metrics and error logging, with `state` applied.
pub fn router(state: AppState) -> Router {
    let (api, _spec) = api_router().split_for_parts();
    let docs: Router<AppState> = SwaggerUi::new("/docs")
        .config(Config::new([OPENAPI_PATH]))
        .into();
    let app = api.merge(docs);
    #[cfg(feature = "console")]
    let app = app.merge(crate::console::router());
    app.fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

/// Health, readiness and metrics only (with the same fallbacks and request
/// metrics): the HTTP surface of a node that runs the broker role without the API
/// role, so a load balancer can check it without the REST API being exposed there.
pub fn system_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", axum::routing::get(system::healthz))
        .route("/readyz", axum::routing::get(system::readyz))
        .route("/metrics", axum::routing::get(system::metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

async fn no_route() -> ApiError {
    ApiError::http(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::http(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// Counts requests by method and status, and logs server-side failures with their detail.
async fn observe(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    let status = resp.status();
    metrics::counter!(
        "tp_http_requests_total",
        "method" => method.as_str().to_owned(),
        "status" => status.as_str().to_owned(),
    )
    .increment(1);
    if let Some(ErrorDetail(detail)) = resp.extensions().get::<ErrorDetail>() {
        tracing::error!(%method, %path, status = status.as_u16(), error = %detail, "Request failed.");
    }
    resp.into_response()
}

#[cfg(test)]
mod tests;

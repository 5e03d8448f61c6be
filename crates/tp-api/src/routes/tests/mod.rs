//! Router tests: requests through `oneshot`, no sockets.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value as Json, json};
use tower::ServiceExt;
use tp_core::{
    AccessStoreRef, CacheRef, DeviceEvent, DeviceId, KeyValue, MetadataStoreRef, Role,
    TelemetryPoint, Tenant, TenantId, TimeSeriesStoreRef, User, UserId, Value, now_ms,
};

use crate::auth::{AuthConfig, bootstrap_admin, hash_password};
use crate::state::{AppState, ReadinessCheck, device_cred_cache_key};

mod matrix;
mod mem;
mod rules;
mod sessions;
mod trends;
use mem::SwitchableCache;
use tp_storage::memory::MemoryCache;
use tp_storage::sqlite::{SqliteMetadataStore, SqliteTimeSeriesStore};

async fn sqlite_meta() -> Result<MetadataStoreRef> {
    Ok(Arc::new(SqliteMetadataStore::in_memory().await?))
}

/// One in-memory SQLite database as the metadata and the access store.
async fn sqlite_stores() -> Result<(MetadataStoreRef, AccessStoreRef)> {
    let store = Arc::new(SqliteMetadataStore::in_memory().await?);
    Ok((store.clone(), store))
}

async fn sqlite_ts() -> Result<TimeSeriesStoreRef> {
    Ok(Arc::new(SqliteTimeSeriesStore::in_memory().await?))
}

const SECRET: &str = "test-secret-test-secret-test-secret";
const ADMIN_EMAIL: &str = "admin@example.com";
const ADMIN_PASSWORD: &str = "correct horse battery staple";

struct Harness {
    app: Router,
    state: AppState,
    meta: MetadataStoreRef,
    access: AccessStoreRef,
    ts: TimeSeriesStoreRef,
    cache: CacheRef,
    /// Token of the bootstrap SYS_ADMIN of tenant "default".
    token: String,
}

fn auth_config() -> AuthConfig {
    AuthConfig {
        jwt_secret: SECRET.into(),
        token_ttl_secs: 3600,
        ..AuthConfig::default()
    }
}

fn state(
    meta: &MetadataStoreRef,
    access: &AccessStoreRef,
    ts: &TimeSeriesStoreRef,
    cache: &CacheRef,
) -> AppState {
    // The permission matrix creates far more rows per tenant than the default limits
    // allow; the limits themselves are tested over real sockets (tp-node hardening).
    AppState::new(
        meta.clone(),
        access.clone(),
        ts.clone(),
        cache.clone(),
        auth_config(),
    )
    .with_limits(crate::quota::TenantLimits {
        max_devices: 0,
        max_rules: 0,
        max_channels: 0,
        max_streams: 0,
    })
}

impl Harness {
    /// The API over in-memory SQLite stores and the moka cache.
    async fn new() -> Result<Self> {
        Self::with(|s| s).await
    }

    async fn with(customize: impl FnOnce(AppState) -> AppState) -> Result<Self> {
        let cache: CacheRef = Arc::new(MemoryCache::new(10_000));
        // One database behind the metadata, access and rule stores.
        let store = Arc::new(SqliteMetadataStore::in_memory().await?);
        let rules: tp_core::rules::RuleStoreRef = store.clone();
        let scripts: tp_core::script::ScriptStoreRef = store.clone();
        let dashboards: tp_core::dashboard::DashboardStoreRef = store.clone();
        let trends: tp_core::trends::TrendStoreRef = store.clone();
        let ota = crate::ota::OtaService::new(
            store.clone(),
            std::env::temp_dir().join(format!("tp-api-test-ota-{}", uuid::Uuid::new_v4())),
        );
        let templates = Arc::new(tp_core::thing_model::TemplateCache::new(
            store.clone(),
            std::time::Duration::from_secs(5),
        ));
        let stores: (MetadataStoreRef, AccessStoreRef) = (store.clone(), store);
        Self::over(stores, sqlite_ts().await?, cache, move |s| {
            customize(
                s.with_rules(rules)
                    .with_ota(ota)
                    .with_thing_models(templates)
                    .with_scripts(scripts)
                    .with_dashboards(dashboards)
                    .with_trends(trends)
                    .with_traffic(Arc::new(crate::TenantTraffic::new())),
            )
        })
        .await
    }

    async fn over(
        (meta, access): (MetadataStoreRef, AccessStoreRef),
        ts: TimeSeriesStoreRef,
        cache: CacheRef,
        customize: impl FnOnce(AppState) -> AppState,
    ) -> Result<Self> {
        let created = bootstrap_admin(
            meta.as_ref(),
            Some(ADMIN_EMAIL.into()),
            Some(ADMIN_PASSWORD.into()),
        )
        .await?;
        assert_eq!(created, Some((ADMIN_EMAIL.to_owned(), None)));
        let state = customize(state(&meta, &access, &ts, &cache));
        let app = crate::router(state.clone());
        let mut h = Self {
            app,
            state,
            meta,
            access,
            ts,
            cache,
            token: String::new(),
        };
        h.token = h.login(ADMIN_EMAIL, ADMIN_PASSWORD).await?;
        Ok(h)
    }

    async fn login(&self, email: &str, password: &str) -> Result<String> {
        let (status, body) = self
            .call(
                "POST",
                "/api/v1/auth/login",
                None,
                Some(json!({"email": email, "password": password})),
            )
            .await?;
        if status != StatusCode::OK {
            bail!("login failed: {status} {body}");
        }
        Ok(body["token"].as_str().context("token")?.to_owned())
    }

    /// A user of a new tenant, with a token.
    async fn other_tenant_user(&self, role: Role) -> Result<(TenantId, String)> {
        self.user_in(None, role).await
    }

    async fn user_in(&self, tenant: Option<TenantId>, role: Role) -> Result<(TenantId, String)> {
        let tenant_id = match tenant {
            Some(t) => t,
            None => {
                let t = Tenant {
                    id: TenantId::new(),
                    name: "other".into(),
                    created_at: now_ms(),
                };
                self.meta.create_tenant(&t).await?;
                t.id
            }
        };
        let email = format!("{}@example.com", UserId::new());
        let user = User {
            id: UserId::new(),
            tenant_id,
            email: email.clone(),
            name: "Other".into(),
            password_hash: hash_password("pw-other".into()).await?,
            role,
            created_at: now_ms(),
        };
        self.meta.create_user(&user).await?;
        Ok((tenant_id, self.login(&email, "pw-other").await?))
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Json>,
    ) -> Result<(StatusCode, Json)> {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&b)?))?,
            None => req.body(Body::empty())?,
        };
        self.send(req).await
    }

    async fn send(&self, req: Request<Body>) -> Result<(StatusCode, Json)> {
        let resp = self.app.clone().oneshot(req).await?;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await?;
        let body = if bytes.is_empty() {
            Json::Null
        } else {
            serde_json::from_slice(&bytes)
                .with_context(|| format!("non-JSON body: {}", String::from_utf8_lossy(&bytes)))?
        };
        Ok((status, body))
    }

    async fn get(&self, uri: &str) -> Result<(StatusCode, Json)> {
        self.call("GET", uri, Some(&self.token), None).await
    }

    async fn create_device(&self, body: Json) -> Result<Json> {
        let (status, body) = self
            .call("POST", "/api/v1/devices", Some(&self.token), Some(body))
            .await?;
        if status != StatusCode::CREATED {
            bail!("create failed: {status} {body}");
        }
        Ok(body)
    }
}

fn device_id(device: &Json) -> Result<DeviceId> {
    Ok(device["id"].as_str().context("id")?.parse()?)
}

fn keys_of(v: &Json) -> Vec<String> {
    let mut keys: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

/// Asserts a JSON error with this status, code and (for 400) field.
#[track_caller]
fn assert_error(got: &(StatusCode, Json), status: u16, code: &str, field: Option<&str>) {
    let (s, body) = got;
    assert_eq!(s.as_u16(), status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    if let Some(field) = field {
        assert_eq!(body["error"]["field"], field, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(field),
            "message names the field: {body}"
        );
    }
}

#[tokio::test]
async fn api_routes_need_a_valid_bearer_token() -> Result<()> {
    let h = Harness::new().await?;
    for (method, uri) in [
        ("GET", "/api/v1/auth/me"),
        ("GET", "/api/v1/devices"),
        ("POST", "/api/v1/devices"),
        (
            "GET",
            "/api/v1/devices/00000000-0000-0000-0000-000000000000",
        ),
        (
            "GET",
            "/api/v1/devices/00000000-0000-0000-0000-000000000000/telemetry/latest",
        ),
    ] {
        let got = h.call(method, uri, None, None).await?;
        assert_error(&got, 401, "unauthenticated", None);
        let got = h.call(method, uri, Some("not.a.jwt"), None).await?;
        assert_error(&got, 401, "unauthenticated", None);
    }
    // Signed with another secret.
    let meta = sqlite_meta().await?;
    let other = crate::auth::AuthKeys::new(&AuthConfig {
        jwt_secret: "another-secret".into(),
        token_ttl_secs: 60,
        ..AuthConfig::default()
    });
    let user = User {
        id: UserId::new(),
        tenant_id: TenantId::new(),
        email: "x@y.z".into(),
        name: "x".into(),
        password_hash: String::new(),
        role: Role::SysAdmin,
        created_at: 0,
    };
    meta.create_user(&user).await?;
    let (forged, _) = other.issue(&user)?;
    let got = h
        .call("GET", "/api/v1/devices", Some(&forged), None)
        .await?;
    assert_error(&got, 401, "unauthenticated", None);
    // Wrong scheme.
    let req = Request::get("/api/v1/devices")
        .header(header::AUTHORIZATION, format!("Basic {}", h.token))
        .body(Body::empty())?;
    let resp = h.app.clone().oneshot(req).await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
    Ok(())
}

#[tokio::test]
async fn login_issues_tokens_and_does_not_enumerate_users() -> Result<()> {
    let h = Harness::new().await?;
    let (status, body) = h
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "  ADMIN@example.com ", "password": ADMIN_PASSWORD})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        keys_of(&body),
        ["expires_in", "refresh_expires_in", "refresh_token", "token"]
    );
    assert_eq!(body["expires_in"], 3600);

    let wrong_pw = h
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": ADMIN_EMAIL, "password": "nope"})),
        )
        .await?;
    let no_user = h
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "ghost@example.com", "password": "nope"})),
        )
        .await?;
    assert_error(&wrong_pw, 401, "unauthenticated", None);
    assert_eq!(wrong_pw.1, no_user.1);
    assert_eq!(wrong_pw.0, no_user.0);

    let missing = h
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": ADMIN_EMAIL})),
        )
        .await?;
    assert_error(&missing, 400, "invalid_input", Some("password"));

    let (status, me) = h.get("/api/v1/auth/me").await?;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(
        keys_of(&me),
        [
            "email",
            "id",
            "name",
            "permissions",
            "role",
            "role_id",
            "tenant_id"
        ]
    );
    assert_eq!(me["email"], ADMIN_EMAIL);
    assert_eq!(me["role"], "SYS_ADMIN");
    let user = h
        .meta
        .get_user_by_email(ADMIN_EMAIL)
        .await?
        .context("user")?;
    assert_eq!(me["id"], user.id.to_string());
    assert_eq!(me["tenant_id"], user.tenant_id.to_string());
    assert!(user.password_hash.starts_with("$argon2id$"));
    Ok(())
}

#[tokio::test]
async fn bootstrap_generates_a_password_once() -> Result<()> {
    let meta = sqlite_meta().await?;
    let meta = meta.as_ref();
    let (email, password) = bootstrap_admin(meta, None, None)
        .await?
        .context("created")?;
    assert_eq!(email, "admin@thingspanel.local");
    let password = password.context("generated password")?;
    assert!(password.len() >= 16);
    let user = meta.get_user_by_email(&email).await?.context("user")?;
    assert_eq!(user.role, Role::SysAdmin);
    let tenant = meta.get_tenant(user.tenant_id).await?.context("tenant")?;
    assert_eq!(tenant.name, "default");
    assert!(crate::auth::verify_password(password, Some(user.password_hash)).await?);
    assert_eq!(bootstrap_admin(meta, None, None).await?, None);
    assert_eq!(meta.count_users().await?, 1);
    Ok(())
}

#[tokio::test]
async fn device_crud_round_trip() -> Result<()> {
    let h = Harness::new().await?;
    let created = h
        .create_device(json!({"name": "Boiler", "device_number": "boiler-1", "label": "basement"}))
        .await?;
    assert_eq!(
        keys_of(&created),
        [
            "created_at",
            "credentials",
            "device_number",
            "enabled",
            "id",
            "label",
            "last_seen",
            "name",
            "online",
            "parent_id",
            "profile_id",
            "sub_device_addr",
            "updated_at"
        ]
    );
    assert_eq!(created["name"], "Boiler");
    assert_eq!(created["device_number"], "boiler-1");
    assert_eq!(created["label"], "basement");
    assert_eq!(created["enabled"], true);
    assert_eq!(created["online"], false);
    assert_eq!(created["last_seen"], Json::Null);
    assert_eq!(created["parent_id"], Json::Null);
    assert_eq!(created["sub_device_addr"], Json::Null);
    assert_eq!(
        keys_of(&created["credentials"]),
        ["password", "username", "voucher_type"]
    );
    assert_eq!(created["credentials"]["voucher_type"], "BASIC");
    let id = device_id(&created)?;
    let stored = h.meta.get_device_by_id(id).await?.context("stored")?;
    assert!(
        stored
            .credentials
            .verify(created["credentials"]["password"].as_str().context("pw")?)
    );
    assert_eq!(
        stored.credentials.username,
        created["credentials"]["username"]
    );
    assert_ne!(
        stored.credentials.password_hash,
        created["credentials"]["password"]
    );

    // Generated device number.
    let auto = h.create_device(json!({"name": "Auto"})).await?;
    assert_eq!(auto["device_number"].as_str().map(str::len), Some(32));

    let (status, got) = h.get(&format!("/api/v1/devices/{id}")).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys_of(&got["credentials"]), ["username", "voucher_type"]);
    let mut expected = created.clone();
    expected["credentials"] = json!({
        "username": created["credentials"]["username"],
        "voucher_type": "BASIC",
    });
    assert_eq!(got, expected);

    let (status, list) = h.get("/api/v1/devices").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 2);
    // Both devices may be created in the same millisecond; the list orders by
    // (created_at, id), so which comes first is not creation order.
    let listed = list["items"]
        .as_array()
        .and_then(|items| items.iter().find(|d| d["id"] == expected["id"]))
        .context("the device is listed")?;
    assert_eq!(listed, &expected);
    let (_, list) = h.get("/api/v1/devices?page=2&page_size=1").await?;
    assert_eq!(
        (
            list["total"].clone(),
            list["items"].as_array().map(Vec::len)
        ),
        (json!(2), Some(1))
    );
    // The two one-item pages hold the two devices (in (created_at, id) order).
    let (_, first) = h.get("/api/v1/devices?page=1&page_size=1").await?;
    let mut names = [
        first["items"][0]["name"].clone(),
        list["items"][0]["name"].clone(),
    ];
    names.sort_by_key(|n| n.to_string());
    assert_eq!(names, [json!("Auto"), json!("Boiler")]);
    let (_, list) = h.get("/api/v1/devices?search=BOIL").await?;
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["id"], id.to_string());

    // PATCH: change name and enabled; the broker's cached copy is dropped.
    let cache_key = device_cred_cache_key(&stored.credentials.username);
    h.cache.set(&cache_key, b"{}", None).await?;
    let (status, patched) = h
        .call(
            "PATCH",
            &format!("/api/v1/devices/{id}"),
            Some(&h.token),
            Some(json!({"name": "Boiler 2", "enabled": false})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["name"], "Boiler 2");
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["label"], "basement");
    assert!(h.cache.get(&cache_key).await?.is_none());
    let stored = h.meta.get_device_by_id(id).await?.context("stored")?;
    assert_eq!((stored.name.as_str(), stored.enabled), ("Boiler 2", false));
    // `null` clears the label; absent fields stay.
    let (_, patched) = h
        .call(
            "PATCH",
            &format!("/api/v1/devices/{id}"),
            Some(&h.token),
            Some(json!({"label": null})),
        )
        .await?;
    assert_eq!(patched["label"], Json::Null);
    assert_eq!(patched["name"], "Boiler 2");

    // DELETE drops the cache entry too.
    h.cache.set(&cache_key, b"{}", None).await?;
    let (status, body) = h
        .call(
            "DELETE",
            &format!("/api/v1/devices/{id}"),
            Some(&h.token),
            None,
        )
        .await?;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Json::Null));
    assert!(h.cache.get(&cache_key).await?.is_none());
    assert_error(
        &h.get(&format!("/api/v1/devices/{id}")).await?,
        404,
        "not_found",
        None,
    );
    let got = h
        .call(
            "DELETE",
            &format!("/api/v1/devices/{id}"),
            Some(&h.token),
            None,
        )
        .await?;
    assert_error(&got, 404, "not_found", None);
    Ok(())
}

#[tokio::test]
async fn device_input_is_validated_with_the_field_named() -> Result<()> {
    let h = Harness::new().await?;
    let post = |body: Json| h.call("POST", "/api/v1/devices", Some(&h.token), Some(body));
    assert_error(
        &post(json!({"name": ""})).await?,
        400,
        "invalid_input",
        Some("name"),
    );
    assert_error(
        &post(json!({"name": "x".repeat(256)})).await?,
        400,
        "invalid_input",
        Some("name"),
    );
    assert_error(
        &post(json!({"name": 5})).await?,
        400,
        "invalid_input",
        Some("name"),
    );
    assert_error(&post(json!({})).await?, 400, "invalid_input", Some("name"));
    assert_error(
        &post(json!({"name": "a", "device_number": "a/b"})).await?,
        400,
        "invalid_input",
        Some("device_number"),
    );
    assert_error(
        &post(json!({"name": "a", "colour": "red"})).await?,
        400,
        "invalid_input",
        Some("colour"),
    );
    h.create_device(json!({"name": "a", "device_number": "dup"}))
        .await?;
    assert_error(
        &post(json!({"name": "b", "device_number": "dup"})).await?,
        409,
        "already_exists",
        None,
    );

    // Malformed JSON and a missing content type.
    let req = Request::post("/api/v1/devices")
        .header(header::AUTHORIZATION, format!("Bearer {}", h.token))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"name\": "))?;
    assert_error(&h.send(req).await?, 400, "invalid_input", Some("body"));
    let req = Request::post("/api/v1/devices")
        .header(header::AUTHORIZATION, format!("Bearer {}", h.token))
        .body(Body::from("{\"name\":\"a\"}"))?;
    assert_error(&h.send(req).await?, 415, "unsupported_media_type", None);

    // Path and query.
    assert_error(
        &h.get("/api/v1/devices/not-a-uuid").await?,
        400,
        "invalid_input",
        Some("id"),
    );
    assert_error(
        &h.get("/api/v1/devices/not-a-uuid/telemetry/latest").await?,
        400,
        "invalid_input",
        Some("id"),
    );
    for (q, field) in [
        ("page_size=0", "page_size"),
        ("page_size=1001", "page_size"),
        ("page_size=abc", "page_size"),
        ("page=0", "page"),
        ("page=-1", "page"),
    ] {
        assert_error(
            &h.get(&format!("/api/v1/devices?{q}")).await?,
            400,
            "invalid_input",
            Some(field),
        );
    }
    let (status, _) = h.get("/api/v1/devices?page_size=1000").await?;
    assert_eq!(status, StatusCode::OK);

    // PATCH validation.
    let id = device_id(&h.create_device(json!({"name": "p"})).await?)?;
    let got = h
        .call(
            "PATCH",
            &format!("/api/v1/devices/{id}"),
            Some(&h.token),
            Some(json!({"enabled": "yes"})),
        )
        .await?;
    assert_error(&got, 400, "invalid_input", Some("enabled"));
    let got = h
        .call(
            "PATCH",
            &format!("/api/v1/devices/{id}"),
            Some(&h.token),
            Some(json!({"name": " "})),
        )
        .await?;
    assert_error(&got, 400, "invalid_input", Some("name"));
    Ok(())
}

#[tokio::test]
async fn other_tenants_devices_are_not_found() -> Result<()> {
    let h = Harness::new().await?;
    let device = h.create_device(json!({"name": "mine"})).await?;
    let id = device_id(&device)?;
    h.ts.write(&[TelemetryPoint {
        device_id: id,
        key: "t".into(),
        ts: 1,
        value: Value::Integer(1),
    }])
    .await?;
    let (_, other) = h.other_tenant_user(Role::TenantAdmin).await?;
    let other = Some(other.as_str());
    for (method, uri) in [
        ("GET", format!("/api/v1/devices/{id}")),
        ("PATCH", format!("/api/v1/devices/{id}")),
        ("DELETE", format!("/api/v1/devices/{id}")),
        ("POST", format!("/api/v1/devices/{id}/credentials")),
        ("GET", format!("/api/v1/devices/{id}/telemetry/latest")),
        (
            "GET",
            format!("/api/v1/devices/{id}/telemetry?start=0&end=10"),
        ),
        (
            "DELETE",
            format!("/api/v1/devices/{id}/telemetry?start=0&end=10"),
        ),
        ("GET", format!("/api/v1/devices/{id}/attributes")),
        ("GET", format!("/api/v1/devices/{id}/events")),
    ] {
        let body = (method == "PATCH").then(|| json!({"name": "stolen"}));
        let got = h.call(method, &uri, other, body).await?;
        assert_error(&got, 404, "not_found", None);
    }
    let (status, list) = h.call("GET", "/api/v1/devices", other, None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!({"items": [], "total": 0}));
    // Nothing changed.
    let stored = h.meta.get_device_by_id(id).await?.context("still there")?;
    assert_eq!(stored.name, "mine");
    assert_eq!(h.ts.latest(id, None).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn tenant_users_read_but_do_not_change() -> Result<()> {
    let h = Harness::new().await?;
    let id = device_id(&h.create_device(json!({"name": "d"})).await?)?;
    let admin = h
        .meta
        .get_user_by_email(ADMIN_EMAIL)
        .await?
        .context("admin")?;
    let (_, user) = h.user_in(Some(admin.tenant_id), Role::TenantUser).await?;
    let user = Some(user.as_str());
    let (status, _) = h
        .call("GET", &format!("/api/v1/devices/{id}"), user, None)
        .await?;
    assert_eq!(status, StatusCode::OK);
    let got = h
        .call("POST", "/api/v1/devices", user, Some(json!({"name": "x"})))
        .await?;
    assert_error(&got, 403, "permission_denied", None);
    let got = h
        .call("DELETE", &format!("/api/v1/devices/{id}"), user, None)
        .await?;
    assert_error(&got, 403, "permission_denied", None);
    let got = h
        .call(
            "POST",
            &format!("/api/v1/devices/{id}/credentials"),
            user,
            None,
        )
        .await?;
    assert_error(&got, 403, "permission_denied", None);
    Ok(())
}

#[tokio::test]
async fn rotating_credentials_invalidates_the_old_ones() -> Result<()> {
    let h = Harness::new().await?;
    let created = h.create_device(json!({"name": "d"})).await?;
    let id = device_id(&created)?;
    let old_username = created["credentials"]["username"]
        .as_str()
        .context("username")?
        .to_owned();
    let old_key = device_cred_cache_key(&old_username);
    h.cache.set(&old_key, b"{}", None).await?;

    let (status, creds) = h
        .call(
            "POST",
            &format!("/api/v1/devices/{id}/credentials"),
            Some(&h.token),
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{creds}");
    assert_eq!(keys_of(&creds), ["password", "username", "voucher_type"]);
    assert!(h.cache.get(&old_key).await?.is_none());
    assert!(
        h.meta
            .get_device_by_username(&old_username)
            .await?
            .is_none()
    );
    let stored = h
        .meta
        .get_device_by_username(creds["username"].as_str().context("username")?)
        .await?
        .context("new username resolves")?;
    assert_eq!(stored.id, id);
    assert!(
        stored
            .credentials
            .verify(creds["password"].as_str().context("pw")?)
    );
    assert!(
        !stored
            .credentials
            .verify(created["credentials"]["password"].as_str().context("pw")?)
    );
    Ok(())
}

#[tokio::test]
async fn telemetry_reads_return_what_was_written() -> Result<()> {
    let h = Harness::new().await?;
    let id = device_id(&h.create_device(json!({"name": "sensor"})).await?)?;
    let mut points = Vec::new();
    for i in 0..6i64 {
        points.push(TelemetryPoint {
            device_id: id,
            key: "temp".into(),
            ts: 1000 + i * 100,
            value: Value::Float(20.0 + i as f64),
        });
        points.push(TelemetryPoint {
            device_id: id,
            key: "on".into(),
            ts: 1000 + i * 100,
            value: Value::Bool(i % 2 == 0),
        });
    }
    points.push(TelemetryPoint {
        device_id: id,
        key: "fw".into(),
        ts: 1200,
        value: Value::String("1.2.3".into()),
    });
    h.ts.write(&points).await?;
    let base = format!("/api/v1/devices/{id}");

    let (status, latest) = h.get(&format!("{base}/telemetry/latest")).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        latest,
        json!({"items": [
            {"key": "fw", "ts": 1200, "value": "1.2.3"},
            {"key": "on", "ts": 1500, "value": false},
            {"key": "temp", "ts": 1500, "value": 25.0},
        ]})
    );
    let (_, latest) = h
        .get(&format!("{base}/telemetry/latest?keys=temp,fw"))
        .await?;
    assert_eq!(latest["items"].as_array().map(Vec::len), Some(2));

    let (_, raw) = h
        .get(&format!("{base}/telemetry?keys=temp&start=1100&end=1400"))
        .await?;
    assert_eq!(
        raw,
        json!({"items": [
            {"key": "temp", "ts": 1100, "value": 21.0},
            {"key": "temp", "ts": 1200, "value": 22.0},
            {"key": "temp", "ts": 1300, "value": 23.0},
        ]})
    );
    let (_, desc) = h
        .get(&format!(
            "{base}/telemetry?keys=temp&start=0&end=10000&order=desc&limit=2"
        ))
        .await?;
    assert_eq!(
        desc,
        json!({"items": [
            {"key": "temp", "ts": 1500, "value": 25.0},
            {"key": "temp", "ts": 1400, "value": 24.0},
        ]})
    );
    let (_, all) = h
        .get(&format!("{base}/telemetry?start=0&end=10000"))
        .await?;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(13));
    let expected =
        h.ts.query(&tp_core::TsQuery {
            device_id: id,
            keys: vec![],
            start: 0,
            end: 10_000,
            aggregation: None,
            limit: Some(10_000),
            order: tp_core::Order::Asc,
        })
        .await?;
    assert_eq!(all["items"], serde_json::to_value(rows_json(&expected))?);

    let (_, avg) = h
        .get(&format!(
            "{base}/telemetry?keys=temp&start=1000&end=1600&agg=avg&interval=300"
        ))
        .await?;
    assert_eq!(
        avg,
        json!({"items": [
            {"key": "temp", "ts": 1000, "value": 21.0},
            {"key": "temp", "ts": 1300, "value": 24.0},
        ]})
    );
    let (_, count) = h
        .get(&format!(
            "{base}/telemetry?keys=on&start=1000&end=1600&agg=count&interval=600"
        ))
        .await?;
    assert_eq!(
        count,
        json!({"items": [{"key": "on", "ts": 1000, "value": 6}]})
    );
    // `agg` alone: one bucket over the range; `interval` alone: averages.
    let (_, whole) = h
        .get(&format!(
            "{base}/telemetry?keys=on&start=1000&end=1600&agg=count"
        ))
        .await?;
    assert_eq!(whole, count);
    let (_, averaged) = h
        .get(&format!(
            "{base}/telemetry?keys=temp&start=1000&end=1600&interval=300"
        ))
        .await?;
    assert_eq!(averaged, avg);

    // Deletion.
    let (status, deleted) = h
        .call(
            "DELETE",
            &format!("{base}/telemetry?keys=temp&start=1000&end=1300"),
            Some(&h.token),
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted, json!({"deleted": 3}));
    let (_, raw) = h
        .get(&format!("{base}/telemetry?keys=temp&start=0&end=10000"))
        .await?;
    assert_eq!(raw["items"].as_array().map(Vec::len), Some(3));
    Ok(())
}

fn rows_json(rows: &[KeyValue]) -> Vec<Json> {
    rows.iter()
        .map(|kv| json!({"key": kv.key, "ts": kv.ts, "value": kv.value.to_json()}))
        .collect()
}

#[tokio::test]
async fn telemetry_queries_are_validated() -> Result<()> {
    let h = Harness::new().await?;
    let id = device_id(&h.create_device(json!({"name": "sensor"})).await?)?;
    let base = format!("/api/v1/devices/{id}/telemetry");
    // What breaks the documented parameters is a 400. No combination of valid
    // parameters is refused: a range that ends before it starts is empty, `agg`
    // and `interval` each have a meaning alone, and only buckets with data count.
    for (q, field) in [
        ("end=10", "start"),
        ("start=0", "end"),
        ("start=x&end=10", "start"),
        ("start=0&end=10&agg=median&interval=5", "agg"),
        ("start=0&end=10&agg=avg&interval=0", "interval"),
        ("start=0&end=10&agg=avg&interval=-5", "interval"),
        ("start=0&end=10&limit=0", "limit"),
        ("start=0&end=10&limit=100001", "limit"),
        ("start=0&end=10&order=up", "order"),
    ] {
        assert_error(
            &h.get(&format!("{base}?{q}")).await?,
            400,
            "invalid_input",
            Some(field),
        );
    }
    for q in [
        "start=0&end=100000&agg=avg&interval=1",
        "start=0&end=100001&agg=avg&interval=1",
        "start=-9223372036854775808&end=9223372036854775807&agg=sum&interval=1",
        "start=-9223372036854775808&end=9223372036854775807&agg=max",
        "start=0&end=10&agg=avg",
        "start=0&end=10&interval=5",
        "start=0&end=10&limit=100000&order=desc",
    ] {
        let (status, body) = h.get(&format!("{base}?{q}")).await?;
        assert_eq!(status, StatusCode::OK, "{q}: {body}");
    }
    // A range that ends where (or before) it starts holds no time: empty, not an error.
    for q in ["start=10&end=10", "start=20&end=10"] {
        let (status, body) = h.get(&format!("{base}?{q}")).await?;
        assert_eq!(status, StatusCode::OK, "{q}: {body}");
        assert_eq!(body["items"], json!([]), "{q}: {body}");
    }
    let (status, body) = h
        .call(
            "DELETE",
            &format!("{base}?start=5&end=1"),
            Some(&h.token),
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["deleted"], 0, "{body}");
    let got = h.call("DELETE", &base, Some(&h.token), None).await?;
    assert_error(&got, 400, "invalid_input", Some("start"));
    let got = h
        .get(&format!("/api/v1/devices/{id}/events?limit=0"))
        .await?;
    assert_error(&got, 400, "invalid_input", Some("limit"));
    Ok(())
}

#[tokio::test]
async fn attributes_and_events() -> Result<()> {
    let h = Harness::new().await?;
    let id = device_id(&h.create_device(json!({"name": "d"})).await?)?;
    h.meta
        .upsert_attributes(
            id,
            &[
                KeyValue {
                    key: "fw".into(),
                    ts: 5,
                    value: Value::String("1.0".into()),
                },
                KeyValue {
                    key: "cfg".into(),
                    ts: 6,
                    value: Value::Json(json!({"a": 1})),
                },
            ],
        )
        .await?;
    let (status, attrs) = h.get(&format!("/api/v1/devices/{id}/attributes")).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        attrs,
        json!({"items": [
            {"key": "cfg", "ts": 6, "value": {"a": 1}},
            {"key": "fw", "ts": 5, "value": "1.0"},
        ]})
    );
    let (_, attrs) = h
        .get(&format!("/api/v1/devices/{id}/attributes?keys=fw"))
        .await?;
    assert_eq!(attrs["items"].as_array().map(Vec::len), Some(1));

    let now = now_ms();
    let event = |ts: i64, m: &str| DeviceEvent {
        device_id: id,
        ts,
        message_id: m.into(),
        method: "alarm".into(),
        params: json!({"level": m}),
    };
    h.ts.write_events(&[
        event(now - 1000, "a"),
        event(now - 500, "b"),
        event(now - 2 * 86_400_000, "old"),
    ])
    .await?;
    let (status, events) = h.get(&format!("/api/v1/devices/{id}/events")).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        events,
        json!({"items": [
            {"ts": now - 500, "message_id": "b", "method": "alarm", "params": {"level": "b"}},
            {"ts": now - 1000, "message_id": "a", "method": "alarm", "params": {"level": "a"}},
        ]})
    );
    let (_, events) = h
        .get(&format!(
            "/api/v1/devices/{id}/events?start=0&end={now}&order=asc&limit=2"
        ))
        .await?;
    let ids: Vec<&str> = events["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|e| e["message_id"].as_str())
        .collect();
    assert_eq!(ids, ["old", "a"]);
    Ok(())
}

#[tokio::test]
async fn health_readiness_and_metrics() -> Result<()> {
    let failing: ReadinessCheck = Arc::new(|| {
        Box::pin(async {
            Err(tp_core::Error::Unavailable {
                backend: "mqtt",
                source: "listener down".into(),
            })
        })
    });
    let passing: ReadinessCheck = Arc::new(|| Box::pin(async { Ok(()) }));
    let cache = Arc::new(SwitchableCache::new());
    let h = Harness::over(
        sqlite_stores().await?,
        sqlite_ts().await?,
        cache.clone(),
        |s| s.with_readiness_check("broker", passing),
    )
    .await?;

    let (status, body) = h.call("GET", "/healthz", None, None).await?;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, body) = h.call("GET", "/readyz", None, None).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"status": "ready", "checks": {"broker": "ok", "cache": "ok", "metadata": "ok", "timeseries": "ok"}})
    );
    cache.down.store(true, Ordering::SeqCst);
    // Anyone sees that the cache failed, not why (backend errors name internals).
    let (status, body) = h.call("GET", "/readyz", None, None).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["metadata"], "ok");
    assert_eq!(body["checks"]["cache"], "failed", "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(body["error"]["message"], "cache: failed", "{body}");

    let h = Harness::with(|s| s.with_readiness_check("broker", failing)).await?;
    let (status, body) = h.call("GET", "/readyz", None, None).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["checks"]["broker"], "failed", "{body}");
    // The installation's admin sees why.
    let (status, body) = h.call("GET", "/readyz", Some(&h.token), None).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["checks"]["broker"]
            .as_str()
            .unwrap_or("")
            .contains("listener down"),
        "{body}"
    );

    let resp = h
        .app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty())?)
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()[header::CONTENT_TYPE]
            .to_str()?
            .starts_with("text/plain")
    );

    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let h = Harness::with(|s| s.with_metrics(handle)).await?;
    let resp = h
        .app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty())?)
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() -> Result<()> {
    let h = Harness::new().await?;
    assert_error(
        &h.call("GET", "/nope", None, None).await?,
        404,
        "not_found",
        None,
    );
    assert_error(
        &h.call("PUT", "/healthz", None, None).await?,
        405,
        "method_not_allowed",
        None,
    );
    Ok(())
}

#[tokio::test]
async fn openapi_lists_every_route_and_docs_render() -> Result<()> {
    let h = Harness::new().await?;
    let (status, spec) = h.call("GET", "/api/v1/openapi.json", None, None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(spec, crate::openapi());
    let paths = spec["paths"].as_object().context("paths")?;
    // Every path is in the matrix table (see matrix.rs); here: every operation states
    // its auth requirement, and the scopes name what it needs.
    let public = [
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
        "/api/v1/device/provision",
        "/api/v1/openapi.json",
        "/healthz",
        "/readyz",
        "/metrics",
        "/docs",
    ];
    let known: Vec<&str> = crate::authz::Permission::ALL
        .iter()
        .map(|p| p.as_str())
        .chain(["SYS_ADMIN"])
        .collect();
    let mut operations = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().context("path item")? {
            operations += 1;
            let what = format!("{method} {path}");
            if public.contains(&path.as_str()) {
                if path != "/docs" {
                    assert_eq!(op["security"], json!([{}]), "{what} is public");
                }
                continue;
            }
            let security = op["security"].as_array().context("security")?;
            let schemes: Vec<&str> = security
                .iter()
                .flat_map(|s| s.as_object().into_iter().flat_map(|o| o.keys()))
                .map(String::as_str)
                .collect();
            let scopes: Vec<&Json> = security
                .iter()
                .flat_map(|s| s.as_object().into_iter().flat_map(|o| o.values()))
                .collect();
            assert!(
                scopes.windows(2).all(|w| w[0] == w[1]),
                "{what}: {security:?}"
            );
            let scope: Vec<&str> = scopes[0]
                .as_array()
                .context("scopes")?
                .iter()
                .filter_map(Json::as_str)
                .collect();
            assert!(scope.len() <= 1, "{what}");
            assert!(scope.iter().all(|s| known.contains(s)), "{what}: {scope:?}");
            if path.starts_with("/api/v1/tenants") {
                assert_eq!(schemes, ["bearer"], "{what}");
                assert_eq!(scope, ["SYS_ADMIN"], "{what}");
            } else {
                assert_eq!(schemes, ["bearer", "api_key"], "{what}");
            }
            let responses = op["responses"].as_object().context("responses")?;
            assert!(responses.contains_key("401"), "{what} documents 401");
            if !scope.is_empty() {
                assert!(responses.contains_key("403"), "{what} documents 403");
            }
        }
    }
    assert!(operations >= 60, "{operations}");
    assert_eq!(
        spec["components"]["securitySchemes"]["api_key"],
        json!({"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "An API key created with POST /api/v1/api-keys"})
    );
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(spec["components"]["schemas"]["ErrorBody"].is_object());

    let resp = h
        .app
        .clone()
        .oneshot(Request::get("/docs").body(Body::empty())?)
        .await?;
    assert!(resp.status().is_redirection());
    assert_eq!(resp.headers()[header::LOCATION], "/docs/");
    let resp = h
        .app
        .clone()
        .oneshot(Request::get("/docs/").body(Body::empty())?)
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let html = axum::body::to_bytes(resp.into_body(), usize::MAX).await?;
    let html = String::from_utf8_lossy(&html);
    assert!(html.contains("swagger-ui"), "{html}");
    let resp = h
        .app
        .clone()
        .oneshot(Request::get("/docs/swagger-initializer.js").body(Body::empty())?)
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let js = axum::body::to_bytes(resp.into_body(), usize::MAX).await?;
    assert!(String::from_utf8_lossy(&js).contains("/api/v1/openapi.json"));
    Ok(())
}

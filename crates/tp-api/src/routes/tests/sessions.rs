//! Sessions across API nodes, lockout, refresh rotation, password change, API keys
//! and permission changes, end to end through the router.

use tp_core::testing::eventually;
use tp_core::{ApiKey, ApiKeyId, hash_secret};

use super::*;

impl Harness {
    async fn with_auth(auth: AuthConfig) -> Result<Self> {
        let (meta, access) = sqlite_stores().await?;
        let cache: CacheRef = Arc::new(MemoryCache::new(10_000));
        let ts = sqlite_ts().await?;
        let h = Self::over(
            (meta.clone(), access.clone()),
            ts.clone(),
            cache.clone(),
            |_| AppState::new(meta, access, ts, cache, auth),
        )
        .await?;
        Ok(h)
    }

    /// A second API node over the same stores and cache.
    fn second_node(&self) -> Router {
        crate::router(state(&self.meta, &self.access, &self.ts, &self.cache))
    }

    async fn login_pair(&self, email: &str, password: &str) -> Result<Json> {
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
        Ok(body)
    }

    async fn call_on(
        app: &Router,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Json>,
    ) -> Result<(StatusCode, Json)> {
        let h = Request::builder().method(method).uri(uri);
        let h = match token {
            Some(t) => h.header(header::AUTHORIZATION, format!("Bearer {t}")),
            None => h,
        };
        let req = match body {
            Some(b) => h
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&b)?))?,
            None => h.body(Body::empty())?,
        };
        let resp = app.clone().oneshot(req).await?;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await?;
        let body = if bytes.is_empty() {
            Json::Null
        } else {
            serde_json::from_slice(&bytes)?
        };
        Ok((status, body))
    }

    async fn with_key(
        &self,
        method: &str,
        uri: &str,
        key: &str,
        body: Option<Json>,
    ) -> Result<(StatusCode, Json)> {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("x-api-key", key);
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&b)?))?,
            None => req.body(Body::empty())?,
        };
        self.send(req).await
    }

    /// Creates a user through the API as the bootstrap admin; returns its id.
    async fn api_user(&self, email: &str, extra: Json) -> Result<String> {
        let mut body = json!({"email": email, "name": "u", "password": "user password"});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (status, user) = self
            .call("POST", "/api/v1/users", Some(&self.token), Some(body))
            .await?;
        if status != StatusCode::CREATED {
            bail!("create user: {status} {user}");
        }
        Ok(user["id"].as_str().context("id")?.to_owned())
    }
}

#[tokio::test]
async fn logout_and_user_deletion_hold_on_a_second_node() -> Result<()> {
    let h = Harness::new().await?;
    let node_b = h.second_node();

    // A token issued by node A works on node B until it is revoked on node A.
    let pair = h.login_pair(ADMIN_EMAIL, ADMIN_PASSWORD).await?;
    let token = pair["token"].as_str().context("token")?;
    let refresh = pair["refresh_token"].as_str().context("refresh")?;
    let (status, _) =
        Harness::call_on(&node_b, "GET", "/api/v1/devices", Some(token), None).await?;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h
        .call("POST", "/api/v1/auth/logout", Some(token), None)
        .await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let got = Harness::call_on(&node_b, "GET", "/api/v1/devices", Some(token), None).await?;
    assert_error(&got, 401, "unauthenticated", None);
    let got = Harness::call_on(
        &node_b,
        "POST",
        "/api/v1/auth/refresh",
        None,
        Some(json!({"refresh_token": refresh})),
    )
    .await?;
    assert_error(&got, 401, "unauthenticated", None);
    // The admin's other session is unaffected.
    let (status, _) =
        Harness::call_on(&node_b, "GET", "/api/v1/devices", Some(&h.token), None).await?;
    assert_eq!(status, StatusCode::OK);

    // A deleted user's token (cached on node B by a first request) is refused on B.
    let id = h.api_user("gone@example.com", json!({})).await?;
    let user_token = h.login("gone@example.com", "user password").await?;
    let (status, _) =
        Harness::call_on(&node_b, "GET", "/api/v1/devices", Some(&user_token), None).await?;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h
        .call(
            "DELETE",
            &format!("/api/v1/users/{id}"),
            Some(&h.token),
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let got = Harness::call_on(&node_b, "GET", "/api/v1/devices", Some(&user_token), None).await?;
    assert_error(&got, 401, "unauthenticated", None);
    let got = Harness::call_on(&node_b, "GET", "/api/v1/auth/me", Some(&user_token), None).await?;
    assert_error(&got, 401, "unauthenticated", None);
    Ok(())
}

#[tokio::test]
async fn a_role_change_applies_at_once_on_every_node() -> Result<()> {
    let h = Harness::new().await?;
    let node_b = h.second_node();
    let id = h.api_user("viewer@example.com", json!({})).await?;
    let token = h.login("viewer@example.com", "user password").await?;
    let group = json!({"name": "g"});
    let got = Harness::call_on(
        &node_b,
        "POST",
        "/api/v1/groups",
        Some(&token),
        Some(group.clone()),
    )
    .await?;
    assert_error(&got, 403, "permission_denied", None);
    // Give the user a custom role with group:write.
    let (status, role) = h
        .call(
            "POST",
            "/api/v1/roles",
            Some(&h.token),
            Some(json!({"name": "grouper", "permissions": ["group:write"]})),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{role}");
    let (status, user) = h
        .call(
            "PATCH",
            &format!("/api/v1/users/{id}"),
            Some(&h.token),
            Some(json!({"role_id": role["id"]})),
        )
        .await?;
    assert_eq!((status, &user["role_id"]), (StatusCode::OK, &role["id"]));
    let (status, body) =
        Harness::call_on(&node_b, "POST", "/api/v1/groups", Some(&token), Some(group)).await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Taking the permission out of the role applies at once too.
    let (status, _) = h
        .call(
            "PATCH",
            &format!("/api/v1/roles/{}", role["id"].as_str().context("id")?),
            Some(&h.token),
            Some(json!({"permissions": ["alarm:ack"]})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    let got = Harness::call_on(
        &node_b,
        "POST",
        "/api/v1/groups",
        Some(&token),
        Some(json!({"name": "g2"})),
    )
    .await?;
    assert_error(&got, 403, "permission_denied", None);
    // A role in use cannot be deleted.
    let got = h
        .call(
            "DELETE",
            &format!("/api/v1/roles/{}", role["id"].as_str().context("id")?),
            Some(&h.token),
            None,
        )
        .await?;
    assert_error(&got, 409, "conflict", None);
    let (_, me) = Harness::call_on(&node_b, "GET", "/api/v1/auth/me", Some(&token), None).await?;
    assert_eq!(me["permissions"], json!(["device:read", "alarm:ack"]));
    Ok(())
}

#[tokio::test]
async fn repeated_failures_lock_an_email_until_the_lock_expires() -> Result<()> {
    let h = Harness::with_auth(AuthConfig {
        lockout_secs: 1,
        ..auth_config()
    })
    .await?;
    let attempt = |email: &'static str, password: &'static str| {
        let h = &h;
        async move {
            h.call(
                "POST",
                "/api/v1/auth/login",
                None,
                Some(json!({"email": email, "password": password})),
            )
            .await
        }
    };
    for _ in 0..5 {
        assert_error(
            &attempt(ADMIN_EMAIL, "wrong").await?,
            401,
            "unauthenticated",
            None,
        );
        assert_error(
            &attempt("ghost@example.com", "wrong").await?,
            401,
            "unauthenticated",
            None,
        );
    }
    // Locked, even with the right password; an unknown email answers the same.
    let locked = attempt(ADMIN_EMAIL, ADMIN_PASSWORD).await?;
    assert_error(&locked, 429, "too_many_attempts", None);
    let ghost = attempt("ghost@example.com", "wrong").await?;
    assert_error(&ghost, 429, "too_many_attempts", None);
    // Existing sessions keep working; only sign-in is locked.
    let (status, _) = h.get("/api/v1/devices").await?;
    assert_eq!(status, StatusCode::OK);
    // Unlocked once the lock key expires.
    eventually("unlock", || async {
        attempt(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap().0 == StatusCode::OK
    })
    .await;
    // A success clears the count: four more failures do not lock.
    for _ in 0..4 {
        assert_error(
            &attempt(ADMIN_EMAIL, "wrong").await?,
            401,
            "unauthenticated",
            None,
        );
    }
    assert_eq!(
        attempt(ADMIN_EMAIL, ADMIN_PASSWORD).await?.0,
        StatusCode::OK
    );
    Ok(())
}

#[tokio::test]
async fn refresh_tokens_rotate_and_are_single_use() -> Result<()> {
    let h = Harness::new().await?;
    let first = h.login_pair(ADMIN_EMAIL, ADMIN_PASSWORD).await?;
    let refresh = |token: &Json| {
        let body = json!({"refresh_token": token});
        let h = &h;
        async move {
            h.call("POST", "/api/v1/auth/refresh", None, Some(body))
                .await
        }
    };
    let (status, second) = refresh(&first["refresh_token"]).await?;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_ne!(second["token"], first["token"]);
    let t2 = second["token"].as_str().context("token")?;
    let (status, _) = h.call("GET", "/api/v1/auth/me", Some(t2), None).await?;
    assert_eq!(status, StatusCode::OK);
    // The new refresh token works once.
    let (status, third) = refresh(&second["refresh_token"]).await?;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &refresh(&json!("garbage")).await?,
        401,
        "unauthenticated",
        None,
    );
    // Logging out ends the session's current refresh token too.
    let t3 = third["token"].as_str().context("token")?;
    let (status, _) = h
        .call("POST", "/api/v1/auth/logout", Some(t3), None)
        .await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_error(
        &refresh(&third["refresh_token"]).await?,
        401,
        "unauthenticated",
        None,
    );
    let got = h.call("GET", "/api/v1/auth/me", Some(t3), None).await?;
    assert_error(&got, 401, "unauthenticated", None);
    Ok(())
}

/// A refresh token presented a second time means two holders (one of them a thief,
/// and which cannot be told): the whole session ends, the legitimate successor's
/// tokens included.
#[tokio::test]
async fn a_reused_refresh_token_revokes_its_whole_session() -> Result<()> {
    let h = Harness::new().await?;
    let first = h.login_pair(ADMIN_EMAIL, ADMIN_PASSWORD).await?;
    let refresh = |token: &Json| {
        let body = json!({"refresh_token": token});
        let h = &h;
        async move {
            h.call("POST", "/api/v1/auth/refresh", None, Some(body))
                .await
        }
    };
    let (status, second) = refresh(&first["refresh_token"]).await?;
    assert_eq!(status, StatusCode::OK, "{second}");
    let t2 = second["token"].as_str().context("token")?;
    assert_error(
        &refresh(&first["refresh_token"]).await?,
        401,
        "unauthenticated",
        None,
    );
    assert_error(
        &refresh(&second["refresh_token"]).await?,
        401,
        "unauthenticated",
        None,
    );
    let got = h.call("GET", "/api/v1/auth/me", Some(t2), None).await?;
    assert_error(&got, 401, "unauthenticated", None);
    // Other sessions of the user are not affected.
    let (status, _) = h
        .call("GET", "/api/v1/auth/me", Some(&h.token), None)
        .await?;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn a_password_change_revokes_the_other_sessions() -> Result<()> {
    let h = Harness::new().await?;
    let other = h.login_pair(ADMIN_EMAIL, ADMIN_PASSWORD).await?;
    let change = |current: &str, new: &str| {
        let body = json!({"current_password": current, "new_password": new});
        let h = &h;
        async move {
            h.call("PUT", "/api/v1/auth/password", Some(&h.token), Some(body))
                .await
        }
    };
    assert_error(
        &change("wrong", "new password 1").await?,
        403,
        "permission_denied",
        None,
    );
    assert_error(
        &change(ADMIN_PASSWORD, "short").await?,
        400,
        "invalid_input",
        Some("new_password"),
    );
    let (status, pair) = change(ADMIN_PASSWORD, "new password 1").await?;
    assert_eq!(status, StatusCode::OK, "{pair}");
    for old in [&h.token, other["token"].as_str().context("token")?] {
        let got = h.call("GET", "/api/v1/auth/me", Some(old), None).await?;
        assert_error(&got, 401, "unauthenticated", None);
    }
    let got = h
        .call(
            "POST",
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": other["refresh_token"]})),
        )
        .await?;
    assert_error(&got, 401, "unauthenticated", None);
    let (status, _) = h
        .call("GET", "/api/v1/auth/me", pair["token"].as_str(), None)
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert!(h.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.is_err());
    h.login(ADMIN_EMAIL, "new password 1").await?;
    Ok(())
}

#[tokio::test]
async fn api_keys_authenticate_until_deleted_or_expired() -> Result<()> {
    let h = Harness::new().await?;
    let (status, role) = h
        .call(
            "POST",
            "/api/v1/roles",
            Some(&h.token),
            Some(json!({"name": "writer", "permissions": ["device:write"]})),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED);
    let (status, created) = h
        .call(
            "POST",
            "/api/v1/api-keys",
            Some(&h.token),
            Some(json!({"name": "erp", "role_id": role["id"]})),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().context("key")?.to_owned();
    assert_eq!(created["role"], "TENANT_USER");
    // Listed without the key.
    let (_, list) = h.get("/api/v1/api-keys").await?;
    assert_eq!(list["total"], 1);
    assert!(!list.to_string().contains(&key));
    assert!(list["items"][0].get("key").is_none());
    // Authenticates as the tenant with its role's permissions.
    let (status, _) = h.with_key("GET", "/api/v1/devices", &key, None).await?;
    assert_eq!(status, StatusCode::OK);
    let (status, device) = h
        .with_key(
            "POST",
            "/api/v1/devices",
            &key,
            Some(json!({"name": "from-erp"})),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{device}");
    let got = h.with_key("GET", "/api/v1/users", &key, None).await?;
    assert_error(&got, 403, "permission_denied", None);
    let got = h.with_key("GET", "/api/v1/auth/me", &key, None).await?;
    assert_error(&got, 403, "permission_denied", None);
    let (_, audit) = h.get("/api/v1/audit").await?;
    assert_eq!(audit["items"][0]["actor"], "api-key:erp");
    assert_eq!(audit["items"][0]["action"], "device.create");
    assert_eq!(audit["items"][0]["resource_id"], device["id"]);
    assert!(!audit.to_string().contains(&key));
    // A wrong key is refused.
    let got = h
        .with_key("GET", "/api/v1/devices", "tpk_wrong", None)
        .await?;
    assert_error(&got, 401, "unauthenticated", None);
    // Deleted: refused at once.
    let (status, _) = h
        .call(
            "DELETE",
            &format!("/api/v1/api-keys/{}", created["id"].as_str().context("id")?),
            Some(&h.token),
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let got = h.with_key("GET", "/api/v1/devices", &key, None).await?;
    assert_error(&got, 401, "unauthenticated", None);

    // Expired keys are refused: one stored already expired, one expiring soon.
    let admin = h
        .meta
        .get_user_by_email(ADMIN_EMAIL)
        .await?
        .context("admin")?;
    let expired = "tpk_expired_key_for_the_test";
    h.access
        .create_api_key(&ApiKey {
            id: ApiKeyId::new(),
            tenant_id: admin.tenant_id,
            name: "old".into(),
            key_hash: hash_secret(expired),
            role: Role::TenantAdmin,
            role_id: None,
            created_by: admin.id,
            created_at: now_ms() - 10_000,
            expires_at: Some(now_ms() - 1),
        })
        .await?;
    let got = h.with_key("GET", "/api/v1/devices", expired, None).await?;
    assert_error(&got, 401, "unauthenticated", None);
    let got = h
        .call(
            "POST",
            "/api/v1/api-keys",
            Some(&h.token),
            Some(json!({"name": "past", "expires_at": now_ms() - 1})),
        )
        .await?;
    assert_error(&got, 422, "unprocessable", Some("expires_at"));
    let (status, soon) = h
        .call(
            "POST",
            "/api/v1/api-keys",
            Some(&h.token),
            Some(json!({"name": "soon", "expires_at": now_ms() + 1500})),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED);
    let soon = soon["key"].as_str().context("key")?.to_owned();
    eventually("key expiry", || async {
        let (status, _) = h
            .with_key("GET", "/api/v1/devices", &soon, None)
            .await
            .unwrap();
        status == StatusCode::UNAUTHORIZED
    })
    .await;
    Ok(())
}

#[tokio::test]
async fn nobody_grants_more_than_it_has() -> Result<()> {
    let h = Harness::new().await?;
    let (_, role) = h
        .call(
            "POST",
            "/api/v1/roles",
            Some(&h.token),
            Some(json!({"name": "hr", "permissions": ["user:manage", "role:manage", "apikey:manage"]})),
        )
        .await?;
    h.api_user("hr@example.com", json!({"role_id": role["id"]}))
        .await?;
    let hr = h.login("hr@example.com", "user password").await?;
    let hr = Some(hr.as_str());
    // Unknown permission names are invalid input.
    let got = h
        .call(
            "POST",
            "/api/v1/roles",
            hr,
            Some(json!({"name": "x", "permissions": ["root"]})),
        )
        .await?;
    assert_error(&got, 400, "invalid_input", Some("permissions"));
    // A role, user or key with more rights than the caller is refused.
    let got = h
        .call(
            "POST",
            "/api/v1/roles",
            hr,
            Some(json!({"name": "x", "permissions": ["device:write"]})),
        )
        .await?;
    assert_error(&got, 403, "permission_denied", None);
    let got = h
        .call(
            "POST",
            "/api/v1/users",
            hr,
            Some(json!({"email": "boss@example.com", "name": "b", "password": "boss password", "role": "TENANT_ADMIN"})),
        )
        .await?;
    assert_error(&got, 403, "permission_denied", None);
    let got = h
        .call(
            "POST",
            "/api/v1/api-keys",
            hr,
            Some(json!({"name": "k", "role": "TENANT_ADMIN"})),
        )
        .await?;
    assert_error(&got, 403, "permission_denied", None);
    let admin = h
        .meta
        .get_user_by_email(ADMIN_EMAIL)
        .await?
        .context("admin")?;
    let got = h
        .call("DELETE", &format!("/api/v1/users/{}", admin.id), hr, None)
        .await?;
    assert_error(&got, 403, "permission_denied", None);
    // Within its rights it may act.
    let (status, _) = h
        .call(
            "POST",
            "/api/v1/users",
            hr,
            Some(json!({"email": "clerk@example.com", "name": "c", "password": "clerk password"})),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED);
    // Nobody creates a SYS_ADMIN through /users, and nobody deletes itself.
    let got = h
        .call(
            "POST",
            "/api/v1/users",
            Some(&h.token),
            Some(json!({"email": "root@example.com", "name": "r", "password": "root password", "role": "SYS_ADMIN"})),
        )
        .await?;
    assert_error(&got, 400, "invalid_input", Some("role"));
    let got = h
        .call(
            "DELETE",
            &format!("/api/v1/users/{}", admin.id),
            Some(&h.token),
            None,
        )
        .await?;
    assert_error(&got, 409, "conflict", None);
    Ok(())
}

#[tokio::test]
async fn tenants_and_their_admins() -> Result<()> {
    let h = Harness::new().await?;
    let (status, tenant) = h
        .call(
            "POST",
            "/api/v1/tenants",
            Some(&h.token),
            Some(json!({"name": "acme"})),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{tenant}");
    let tid = tenant["id"].as_str().context("id")?.to_owned();
    let (status, admin) = h
        .call(
            "POST",
            &format!("/api/v1/tenants/{tid}/admins"),
            Some(&h.token),
            Some(
                json!({"email": "boss@acme.example", "name": "Boss", "password": "boss password"}),
            ),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{admin}");
    assert_eq!(
        (admin["role"].as_str(), admin["tenant_id"].as_str()),
        (Some("TENANT_ADMIN"), Some(tid.as_str()))
    );
    let boss = h.login("boss@acme.example", "boss password").await?;
    // The tenant admin works inside its tenant only.
    let (status, device) = h
        .call(
            "POST",
            "/api/v1/devices",
            Some(&boss),
            Some(json!({"name": "acme-1"})),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED);
    let (_, mine) = h.get("/api/v1/devices").await?;
    assert_eq!(
        mine["total"], 0,
        "the SYS_ADMIN's tenant has no acme device"
    );
    let got = h.call("GET", "/api/v1/tenants", Some(&boss), None).await?;
    assert_error(&got, 403, "permission_denied", None);
    // The SYS_ADMIN cannot delete its own tenant; deleting acme ends its sessions.
    let me = h
        .meta
        .get_user_by_email(ADMIN_EMAIL)
        .await?
        .context("admin")?;
    let got = h
        .call(
            "DELETE",
            &format!("/api/v1/tenants/{}", me.tenant_id),
            Some(&h.token),
            None,
        )
        .await?;
    assert_error(&got, 409, "conflict", None);
    let (status, _) = h
        .call(
            "DELETE",
            &format!("/api/v1/tenants/{tid}"),
            Some(&h.token),
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let got = h.call("GET", "/api/v1/devices", Some(&boss), None).await?;
    assert_error(&got, 401, "unauthenticated", None);
    let id: tp_core::DeviceId = device["id"].as_str().context("id")?.parse()?;
    assert!(h.meta.get_device_by_id(id).await?.is_none());
    let got = h
        .call(
            "GET",
            &format!("/api/v1/tenants/{tid}"),
            Some(&h.token),
            None,
        )
        .await?;
    assert_error(&got, 404, "not_found", None);
    Ok(())
}

#[tokio::test]
async fn group_trees_and_members() -> Result<()> {
    let h = Harness::new().await?;
    let create = |body: Json| {
        let h = &h;
        async move {
            h.call("POST", "/api/v1/groups", Some(&h.token), Some(body))
                .await
        }
    };
    let (_, site) = create(json!({"name": "site"})).await?;
    let (_, floor) = create(json!({"name": "floor", "parent_id": site["id"]})).await?;
    let (_, other) = create(json!({"name": "annex"})).await?;
    let got = create(json!({"name": "floor", "parent_id": site["id"]})).await?;
    assert_error(&got, 409, "already_exists", None);
    let (status, tree) = h.get("/api/v1/groups/tree").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tree["items"][0]["name"], "annex");
    assert_eq!(tree["items"][1]["name"], "site");
    assert_eq!(tree["items"][1]["children"][0]["name"], "floor");
    // Moving a group under its own descendant conflicts; a parent with children
    // cannot be deleted.
    let site_id = site["id"].as_str().context("id")?;
    let got = h
        .call(
            "PATCH",
            &format!("/api/v1/groups/{site_id}"),
            Some(&h.token),
            Some(json!({"parent_id": floor["id"]})),
        )
        .await?;
    assert_error(&got, 409, "conflict", None);
    let got = h
        .call(
            "DELETE",
            &format!("/api/v1/groups/{site_id}"),
            Some(&h.token),
            None,
        )
        .await?;
    assert_error(&got, 409, "conflict", None);
    // Members.
    let device = h.create_device(json!({"name": "d"})).await?;
    let floor_id = floor["id"].as_str().context("id")?;
    let member = format!(
        "/api/v1/groups/{floor_id}/devices/{}",
        device["id"].as_str().context("id")?
    );
    for _ in 0..2 {
        let (status, _) = h.call("PUT", &member, Some(&h.token), None).await?;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let (_, members) = h.get(&format!("/api/v1/groups/{floor_id}/devices")).await?;
    assert_eq!(members["total"], 1);
    assert_eq!(members["items"][0]["id"], device["id"]);
    // Removal is idempotent like adding; only a device the tenant lacks is a 404.
    for _ in 0..2 {
        let (status, _) = h.call("DELETE", &member, Some(&h.token), None).await?;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let (_, members) = h.get(&format!("/api/v1/groups/{floor_id}/devices")).await?;
    assert_eq!(members["total"], 0);
    let unknown = format!("/api/v1/groups/{floor_id}/devices/{}", uuid::Uuid::new_v4());
    let got = h.call("DELETE", &unknown, Some(&h.token), None).await?;
    assert_error(&got, 404, "not_found", None);
    let (status, _) = h
        .call(
            "PATCH",
            &format!("/api/v1/groups/{floor_id}"),
            Some(&h.token),
            Some(json!({"parent_id": other["id"]})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    let (_, tree) = h.get("/api/v1/groups/tree").await?;
    assert_eq!(tree["items"][0]["children"][0]["name"], "floor");
    Ok(())
}

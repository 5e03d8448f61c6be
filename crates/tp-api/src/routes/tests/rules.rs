//! Rules, scenes, alarms and notification channels through the router: validation
//! errors naming the field, tenant scoping, the alarm lifecycle, write-only webhook
//! secrets and the rule engine being told about changes.

use std::sync::Mutex;

use tp_core::rules::{
    ActionOutcome, Alarm, AlarmEventKind, AlarmId, AlarmSeverity, AlarmStatus, ChannelId,
    ChannelKind, NotificationId, NotificationRecord, NotificationStatus, RuleEngineControl, RuleId,
    SceneId,
};

use uuid::Uuid;

use super::*;

/// A rule engine that records what the API told it.
#[derive(Debug, Default)]
struct FakeEngine {
    changed: Mutex<Vec<TenantId>>,
    runs: Mutex<Vec<(TenantId, SceneId)>>,
}

#[async_trait::async_trait]
impl RuleEngineControl for FakeEngine {
    async fn rules_changed(&self, tenant: TenantId) {
        self.changed.lock().unwrap().push(tenant);
    }

    async fn run_scene(
        &self,
        tenant: TenantId,
        scene: SceneId,
    ) -> tp_core::Result<Vec<ActionOutcome>> {
        self.runs.lock().unwrap().push((tenant, scene));
        Ok(vec![ActionOutcome {
            index: 0,
            ok: true,
            detail: "command queued".into(),
        }])
    }
}

fn store(h: &Harness) -> &tp_core::rules::RuleStoreRef {
    h.state.rules().expect("the harness has a rule store")
}

fn schedule_rule(name: &str) -> Json {
    json!({
        "name": name,
        "trigger_groups": [{"conditions": [
            {"type": "schedule", "kind": {"type": "cron", "expression": "0 */5 * * * *"}}
        ]}],
        "actions": [{"type": "raise_alarm", "severity": "minor", "title": "tick"}],
    })
}

fn alarm(tenant: TenantId, device: Option<DeviceId>, severity: AlarmSeverity) -> Alarm {
    Alarm {
        id: AlarmId::new(),
        tenant_id: tenant,
        rule_id: Some(RuleId::new()),
        device_id: device,
        severity,
        status: AlarmStatus::Active,
        title: "Too hot".into(),
        description: None,
        occurrences: 1,
        details: json!({"temp": 41.5}),
        created_at: now_ms(),
        updated_at: now_ms(),
        acknowledged_at: None,
        acknowledged_by: None,
        cleared_at: None,
    }
}

#[track_caller]
fn assert_invalid(status: StatusCode, body: &Json, field: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_input", "{body}");
    assert_eq!(body["error"]["field"], field, "{body}");
}

/// Well-formed but not usable (a reference outside the tenant, a value that does
/// not fit its operator): 422 naming the field.
fn assert_unprocessable(status: StatusCode, body: &Json, field: &str) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "unprocessable", "{body}");
    assert_eq!(body["error"]["field"], field, "{body}");
}

#[tokio::test]
async fn every_route_needs_a_token() -> Result<()> {
    let h = Harness::new().await?;
    let id = Uuid::new_v4();
    for (method, uri) in [
        ("GET", "/api/v1/rules".to_owned()),
        ("POST", "/api/v1/rules".to_owned()),
        ("GET", format!("/api/v1/scenes/{id}")),
        ("POST", format!("/api/v1/scenes/{id}/run")),
        ("GET", "/api/v1/alarms".to_owned()),
        ("GET", "/api/v1/alarms/counts".to_owned()),
        ("POST", format!("/api/v1/alarms/{id}/acknowledge")),
        ("GET", "/api/v1/notification-channels".to_owned()),
        ("GET", "/api/v1/notifications".to_owned()),
    ] {
        let (status, body) = h.call(method, &uri, None, None).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}: {body}");
        assert_eq!(body["error"]["code"], "unauthenticated");
    }
    Ok(())
}

#[tokio::test]
async fn without_a_rule_store_the_routes_answer_503() -> Result<()> {
    let cache: CacheRef = Arc::new(MemoryCache::new(100));
    let h = Harness::over(sqlite_stores().await?, sqlite_ts().await?, cache, |s| s).await?;
    let (status, body) = h.call("GET", "/api/v1/rules", Some(&h.token), None).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "rules_unavailable");
    Ok(())
}

#[tokio::test]
async fn rule_validation_names_the_field() -> Result<()> {
    let h = Harness::new().await?;
    let (_, token) = h.other_tenant_user(Role::TenantAdmin).await?;
    let t = Some(token.as_str());
    let (_, foreign_token) = h.other_tenant_user(Role::TenantAdmin).await?;
    // A device of another tenant.
    let (status, foreign_device) = h
        .call(
            "POST",
            "/api/v1/devices",
            Some(&foreign_token),
            Some(json!({"name": "theirs"})),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{foreign_device}");
    let foreign_device = foreign_device["id"].as_str().context("id")?.to_owned();

    let device_rule = |source: Json, operator: &str, value: Json| {
        json!({
            "name": "r",
            "trigger_groups": [{"conditions": [{
                "type": "device", "source": source, "data": "telemetry", "key": "temp",
                "operator": operator, "value": value,
            }]}],
            "actions": [{"type": "clear_alarm"}],
        })
    };
    let cases: Vec<(Json, &str)> = vec![
        (
            json!({"name": "r", "trigger_groups": [], "actions": [{"type": "clear_alarm"}]}),
            "trigger_groups",
        ),
        (
            json!({"name": "r", "trigger_groups": [{"conditions": []}], "actions": [{"type": "clear_alarm"}]}),
            "trigger_groups[0].conditions",
        ),
        (
            device_rule(
                json!({"kind": "device", "id": foreign_device}),
                "between",
                json!(5),
            ),
            "trigger_groups[0].conditions[0].value",
        ),
        (
            device_rule(
                json!({"kind": "device", "id": foreign_device}),
                "between",
                json!([1, 2, 3]),
            ),
            "trigger_groups[0].conditions[0].value",
        ),
        (
            device_rule(
                json!({"kind": "device", "id": foreign_device}),
                ">",
                json!("hot"),
            ),
            "trigger_groups[0].conditions[0].value",
        ),
        (
            device_rule(
                json!({"kind": "device", "id": foreign_device}),
                ">",
                json!(40),
            ),
            "trigger_groups[0].conditions[0].source",
        ),
        (
            device_rule(
                json!({"kind": "profile", "id": Uuid::new_v4()}),
                "in",
                json!([1, 2]),
            ),
            "trigger_groups[0].conditions[0].source",
        ),
        (
            json!({
                "name": "r",
                "trigger_groups": [{"conditions": [
                    {"type": "schedule", "kind": {"type": "cron", "expression": "every tuesday"}}
                ]}],
                "actions": [{"type": "clear_alarm"}],
            }),
            "trigger_groups[0].conditions[0].kind.expression",
        ),
        (
            json!({
                "name": "r",
                "trigger_groups": [{"conditions": [
                    {"type": "time_range", "start_minute": 1500, "end_minute": 10}
                ]}],
                "actions": [{"type": "clear_alarm"}],
            }),
            "trigger_groups[0].conditions[0].start_minute",
        ),
        (
            {
                let mut r = schedule_rule("r");
                r["actions"] = json!([]);
                r
            },
            "actions",
        ),
        (
            {
                let mut r = schedule_rule("r");
                r["actions"] = json!([{"type": "raise_alarm", "severity": "major", "title": "x",
                    "channels": [Uuid::new_v4()]}]);
                r
            },
            "actions[0].channels[0]",
        ),
        (
            {
                let mut r = schedule_rule("r");
                r["actions"] = json!([{"type": "run_scene", "scene": Uuid::new_v4()}]);
                r
            },
            "actions[0].scene",
        ),
        (
            {
                let mut r = schedule_rule("r");
                r["actions"] = json!([{"type": "set_attributes",
                    "target": {"kind": "triggering_device"}, "values": 3}]);
                r
            },
            "actions[0].values",
        ),
        (
            {
                let mut r = schedule_rule("  ");
                r["name"] = json!("  ");
                r
            },
            "name",
        ),
    ];
    // What the document declares is a 400; what no schema can say is a 422.
    let declared = [
        "trigger_groups",
        "trigger_groups[0].conditions",
        "trigger_groups[0].conditions[0].start_minute",
        "actions",
        "actions[0].values",
        "name",
    ];
    for (body, field) in cases {
        let (status, resp) = h
            .call("POST", "/api/v1/rules", t, Some(body.clone()))
            .await?;
        if declared.contains(&field) {
            assert_invalid(status, &resp, field);
        } else {
            assert_unprocessable(status, &resp, field);
        }
    }
    // Shapes serde refuses are 400 too, naming where.
    let mut bad = schedule_rule("r");
    bad["trigger_groups"][0]["conditions"][0]["type"] = json!("moon_phase");
    let (status, resp) = h.call("POST", "/api/v1/rules", t, Some(bad)).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    assert!(
        resp["error"]["field"]
            .as_str()
            .is_some_and(|f| f.starts_with("trigger_groups")),
        "{resp}"
    );
    assert_eq!(store(&h).list_enabled_rules().await?.len(), 0);
    Ok(())
}

#[tokio::test]
async fn rule_crud_tells_the_engine_and_audits() -> Result<()> {
    let engine = Arc::new(FakeEngine::default());
    let e = engine.clone();
    let h = Harness::with(move |s| s.with_rule_engine(e)).await?;
    let (tenant, token) = h.other_tenant_user(Role::TenantAdmin).await?;
    let t = Some(token.as_str());

    // A device rule on the tenant's own device, alarming through its own channel.
    let (_, device) = h
        .call(
            "POST",
            "/api/v1/devices",
            t,
            Some(json!({"name": "boiler"})),
        )
        .await?;
    let (status, channel) = h
        .call(
            "POST",
            "/api/v1/notification-channels",
            t,
            Some(json!({"name": "ops", "type": "email", "to": ["ops@example.com"]})),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{channel}");
    let body = json!({
        "name": "too hot",
        "trigger_groups": [{"conditions": [{
            "type": "device", "source": {"kind": "device", "id": device["id"]},
            "data": "telemetry", "key": "temp", "operator": "between", "value": [40, 90],
            "duration_secs": 30,
        }]}],
        "actions": [{"type": "raise_alarm", "severity": "major", "title": "Boiler hot",
            "channels": [channel["id"]]}],
    });
    let (status, rule) = h
        .call("POST", "/api/v1/rules", t, Some(body.clone()))
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{rule}");
    assert_eq!(rule["enabled"], true);
    assert_eq!(rule["trigger_groups"], body["trigger_groups"]);
    let id = rule["id"].as_str().context("id")?.to_owned();

    let (status, dup) = h.call("POST", "/api/v1/rules", t, Some(body)).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{dup}");

    let (status, updated) = h
        .call(
            "PUT",
            &format!("/api/v1/rules/{id}"),
            t,
            Some(json!({"enabled": false})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["enabled"], false);
    assert_eq!(updated["name"], "too hot");
    let stored = store(&h)
        .get_rule(tenant, RuleId(id.parse()?))
        .await?
        .context("stored")?;
    assert!(!stored.enabled);

    let (status, list) = h.call("GET", "/api/v1/rules", t, None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 1);

    // Another tenant sees nothing of it.
    let (_, other) = h.other_tenant_user(Role::TenantAdmin).await?;
    let (status, _) = h
        .call("GET", &format!("/api/v1/rules/{id}"), Some(&other), None)
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h
        .call("DELETE", &format!("/api/v1/rules/{id}"), Some(&other), None)
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _) = h
        .call("DELETE", &format!("/api/v1/rules/{id}"), t, None)
        .await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = h
        .call("GET", &format!("/api/v1/rules/{id}"), t, None)
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // channel create, rule create, rule update, rule delete.
    assert_eq!(*engine.changed.lock().unwrap(), vec![tenant; 4]);
    let log = h
        .access
        .list_audit(tenant, tp_core::Page::default())
        .await?;
    let actions: Vec<&str> = log.items.iter().map(|e| e.action.as_str()).collect();
    for a in [
        "rule.create",
        "rule.update",
        "rule.delete",
        "channel.create",
    ] {
        assert!(actions.contains(&a), "{a} not audited: {actions:?}");
    }
    Ok(())
}

#[tokio::test]
async fn scenes_run_through_the_engine() -> Result<()> {
    let engine = Arc::new(FakeEngine::default());
    let e = engine.clone();
    let h = Harness::with(move |s| s.with_rule_engine(e)).await?;
    let (tenant, token) = h.other_tenant_user(Role::TenantAdmin).await?;
    let t = Some(token.as_str());
    let (status, scene) = h
        .call(
            "POST",
            "/api/v1/scenes",
            t,
            Some(json!({"name": "evening", "actions": [{"type": "clear_alarm"}]})),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{scene}");
    let id = scene["id"].as_str().context("id")?.to_owned();
    // A scene may not run itself.
    let (status, resp) = h
        .call(
            "PUT",
            &format!("/api/v1/scenes/{id}"),
            t,
            Some(json!({"actions": [{"type": "run_scene", "scene": id}]})),
        )
        .await?;
    assert_unprocessable(status, &resp, "actions[0].scene");

    let (status, run) = h
        .call("POST", &format!("/api/v1/scenes/{id}/run"), t, None)
        .await?;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["outcomes"][0]["ok"], true);
    assert_eq!(
        *engine.runs.lock().unwrap(),
        vec![(tenant, SceneId(id.parse()?))]
    );
    // Another tenant cannot run it.
    let (_, other) = h.other_tenant_user(Role::TenantAdmin).await?;
    let (status, _) = h
        .call(
            "POST",
            &format!("/api/v1/scenes/{id}/run"),
            Some(&other),
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(engine.runs.lock().unwrap().len(), 1);

    // Without an engine: 503 with a JSON body.
    let h2 = Harness::new().await?;
    let (_, token2) = h2.other_tenant_user(Role::TenantAdmin).await?;
    let (_, scene2) = h2
        .call(
            "POST",
            "/api/v1/scenes",
            Some(&token2),
            Some(json!({"name": "s", "actions": [{"type": "clear_alarm"}]})),
        )
        .await?;
    let (status, resp) = h2
        .call(
            "POST",
            &format!(
                "/api/v1/scenes/{}/run",
                scene2["id"].as_str().context("id")?
            ),
            Some(&token2),
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{resp}");
    assert_eq!(resp["error"]["code"], "rule_engine_unavailable");
    Ok(())
}

#[tokio::test]
async fn alarm_lifecycle_through_the_api() -> Result<()> {
    let h = Harness::new().await?;
    let (tenant, token) = h.other_tenant_user(Role::TenantAdmin).await?;
    let t = Some(token.as_str());
    let device = DeviceId::new();
    // Raised by the engine (here: straight into the store).
    let a1 = alarm(tenant, Some(device), AlarmSeverity::Critical);
    let mut a2 = alarm(tenant, None, AlarmSeverity::Warning);
    a2.created_at += 1;
    store(&h).create_alarm(&a1).await?;
    store(&h).create_alarm(&a2).await?;

    let (status, list) = h.call("GET", "/api/v1/alarms", t, None).await?;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["total"], 2);
    assert_eq!(list["items"][0]["id"], a2.id.to_string());
    let (_, list) = h
        .call(
            "GET",
            &format!("/api/v1/alarms?device_id={device}&status=active"),
            t,
            None,
        )
        .await?;
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["severity"], "critical");
    let (status, resp) = h.call("GET", "/api/v1/alarms?status=open", t, None).await?;
    assert_invalid(status, &resp, "status");
    let (status, resp) = h
        .call("GET", "/api/v1/alarms?severity=bad", t, None)
        .await?;
    assert_invalid(status, &resp, "severity");

    let uri = |what: &str| format!("/api/v1/alarms/{}{what}", a1.id);
    let (status, acked) = h.call("POST", &uri("/acknowledge"), t, None).await?;
    assert_eq!(status, StatusCode::OK, "{acked}");
    assert_eq!(acked["status"], "acknowledged");
    let user = acked["acknowledged_by"]
        .as_str()
        .context("acknowledged_by")?
        .to_owned();
    // Again: no change, no second history entry.
    let (status, again) = h.call("POST", &uri("/acknowledge"), t, None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["acknowledged_at"], acked["acknowledged_at"]);
    let (status, comment) = h
        .call(
            "POST",
            &uri("/comments"),
            t,
            Some(json!({"text": "on my way"})),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{comment}");
    let (status, resp) = h
        .call("POST", &uri("/comments"), t, Some(json!({"text": "   "})))
        .await?;
    assert_invalid(status, &resp, "text");

    let (_, counts) = h
        .call(
            "GET",
            &format!("/api/v1/alarms/counts?device_id={device}"),
            t,
            None,
        )
        .await?;
    assert_eq!(counts["acknowledged"], 1);
    assert_eq!(counts["open_by_severity"]["critical"], 1);

    let (status, cleared) = h
        .call(
            "POST",
            &uri("/clear"),
            t,
            Some(json!({"text": "fixed the valve"})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{cleared}");
    assert_eq!(cleared["status"], "cleared");
    let (status, resp) = h.call("POST", &uri("/acknowledge"), t, None).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{resp}");
    assert_eq!(resp["error"]["code"], "conflict");
    let (status, _) = h.call("POST", &uri("/clear"), t, None).await?;
    assert_eq!(status, StatusCode::CONFLICT);

    let (status, history) = h.call("GET", &uri("/history"), t, None).await?;
    assert_eq!(status, StatusCode::OK);
    let items = history["items"].as_array().context("items")?;
    let kinds: Vec<&str> = items.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["acknowledged", "comment", "cleared"]);
    assert!(items.iter().all(|e| e["user_id"] == user.as_str()));
    assert_eq!(items[1]["text"], "on my way");
    assert_eq!(items[2]["text"], "fixed the valve");

    let stored = store(&h).get_alarm(tenant, a1.id).await?.context("alarm")?;
    assert_eq!(stored.status, AlarmStatus::Cleared);
    assert_eq!(stored.acknowledged_by.map(|u| u.to_string()), Some(user));
    // The rule's key is free again: the engine may raise a new alarm.
    assert_eq!(
        store(&h)
            .get_open_alarm(a1.rule_id.context("rule")?, Some(device))
            .await?,
        None
    );
    Ok(())
}

#[tokio::test]
async fn disabling_or_deleting_a_rule_clears_its_open_alarms() -> Result<()> {
    let h = Harness::new().await?;
    let (tenant, token) = h.other_tenant_user(Role::TenantAdmin).await?;
    let t = Some(token.as_str());
    let mut ids = Vec::new();
    for name in ["first", "second"] {
        let (status, rule) = h
            .call("POST", "/api/v1/rules", t, Some(schedule_rule(name)))
            .await?;
        assert_eq!(status, StatusCode::CREATED, "{rule}");
        ids.push(RuleId(rule["id"].as_str().context("id")?.parse()?));
    }
    // Per rule: one active, one acknowledged, one already cleared alarm.
    let mut alarms = Vec::new();
    for rule in &ids {
        for status in [
            AlarmStatus::Active,
            AlarmStatus::Acknowledged,
            AlarmStatus::Cleared,
        ] {
            let mut a = alarm(tenant, Some(DeviceId::new()), AlarmSeverity::Major);
            a.rule_id = Some(*rule);
            a.status = status;
            store(&h).create_alarm(&a).await?;
            alarms.push(a);
        }
    }
    // An unrelated rule's open alarm stays open.
    let unrelated = alarm(tenant, None, AlarmSeverity::Minor);
    store(&h).create_alarm(&unrelated).await?;
    let status_of = |id| {
        let store = store(&h).clone();
        async move { anyhow::Ok(store.get_alarm(tenant, id).await?.context("alarm")?.status) }
    };

    let state = |rule: RuleId, scope: &str| tp_core::rules::RuleState {
        rule_id: rule,
        scope: scope.to_owned(),
        state: json!({"firing": true}),
        updated_at: now_ms(),
    };
    store(&h).put_rule_state(&state(ids[0], "device:a")).await?;
    store(&h).put_rule_state(&state(ids[1], "device:b")).await?;

    // Renaming keeps them open; disabling clears the first rule's open ones.
    let (status, _) = h
        .call(
            "PUT",
            &format!("/api/v1/rules/{}", ids[0].0),
            t,
            Some(json!({"name": "renamed"})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(status_of(alarms[0].id).await?, AlarmStatus::Active);
    let (status, body) = h
        .call(
            "PUT",
            &format!("/api/v1/rules/{}", ids[0].0),
            t,
            Some(json!({"enabled": false})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    for a in &alarms[..3] {
        assert_eq!(
            status_of(a.id).await?,
            AlarmStatus::Cleared,
            "{:?}",
            a.status
        );
    }
    assert_eq!(status_of(alarms[3].id).await?, AlarmStatus::Active);
    assert!(
        store(&h).list_rule_states(ids[0]).await?.is_empty(),
        "re-enabling starts afresh"
    );
    assert_eq!(store(&h).list_rule_states(ids[1]).await?.len(), 1);
    let events = store(&h).list_alarm_events(tenant, alarms[1].id).await?;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, AlarmEventKind::Cleared);
    assert_eq!(events[0].text.as_deref(), Some("the rule was disabled"));
    assert!(events[0].user_id.is_some(), "cleared by the caller");
    assert!(
        store(&h)
            .list_alarm_events(tenant, alarms[2].id)
            .await?
            .is_empty(),
        "an alarm cleared before is not cleared again"
    );

    // Deleting the second rule clears its open alarms; the unrelated one stays.
    let (status, _) = h
        .call("DELETE", &format!("/api/v1/rules/{}", ids[1].0), t, None)
        .await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for a in &alarms[3..] {
        assert_eq!(status_of(a.id).await?, AlarmStatus::Cleared);
    }
    let events = store(&h).list_alarm_events(tenant, alarms[3].id).await?;
    assert_eq!(events[0].text.as_deref(), Some("the rule was deleted"));
    assert_eq!(status_of(unrelated.id).await?, AlarmStatus::Active);
    Ok(())
}

#[tokio::test]
async fn another_tenants_alarm_is_404_and_unchanged() -> Result<()> {
    let h = Harness::new().await?;
    let (tenant, _) = h.other_tenant_user(Role::TenantAdmin).await?;
    let (_, other) = h.other_tenant_user(Role::TenantAdmin).await?;
    let a = alarm(tenant, None, AlarmSeverity::Major);
    store(&h).create_alarm(&a).await?;
    let id = a.id;
    for (method, uri, body) in [
        ("GET", format!("/api/v1/alarms/{id}"), None),
        ("GET", format!("/api/v1/alarms/{id}/history"), None),
        ("POST", format!("/api/v1/alarms/{id}/acknowledge"), None),
        ("POST", format!("/api/v1/alarms/{id}/clear"), None),
        (
            "POST",
            format!("/api/v1/alarms/{id}/comments"),
            Some(json!({"text": "hi"})),
        ),
    ] {
        let (status, body) = h.call(method, &uri, Some(&other), body).await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let (_, list) = h.call("GET", "/api/v1/alarms", Some(&other), None).await?;
    assert_eq!(list["total"], 0);
    assert_eq!(store(&h).get_alarm(tenant, id).await?, Some(a));
    assert!(store(&h).list_alarm_events(tenant, id).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn webhook_secrets_are_write_only() -> Result<()> {
    let h = Harness::new().await?;
    let (tenant, token) = h.other_tenant_user(Role::TenantAdmin).await?;
    let t = Some(token.as_str());
    let secret = "first-secret-0123456789";
    let (status, resp) = h
        .call(
            "POST",
            "/api/v1/notification-channels",
            t,
            Some(json!({"name": "hook", "type": "webhook", "url": "https://x.example/h", "secret": "short"})),
        )
        .await?;
    assert_invalid(status, &resp, "secret");
    let (status, resp) = h
        .call(
            "POST",
            "/api/v1/notification-channels",
            t,
            Some(json!({"name": "hook", "type": "webhook", "url": "ftp://x.example", "secret": secret})),
        )
        .await?;
    assert_unprocessable(status, &resp, "url");
    let (status, resp) = h
        .call(
            "POST",
            "/api/v1/notification-channels",
            t,
            Some(json!({"name": "mail", "type": "email", "to": ["not-an-address"]})),
        )
        .await?;
    assert_unprocessable(status, &resp, "to[0]");

    let (status, created) = h
        .call(
            "POST",
            "/api/v1/notification-channels",
            t,
            Some(json!({"name": "hook", "type": "webhook", "url": "https://x.example/h", "secret": secret})),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["has_secret"], true);
    assert!(!created.to_string().contains(secret), "{created}");
    let id = created["id"].as_str().context("id")?.to_owned();
    let uri = format!("/api/v1/notification-channels/{id}");
    let stored_secret = |c: Option<tp_core::rules::NotificationChannel>| match c.map(|c| c.kind) {
        Some(ChannelKind::Webhook { secret, .. }) => secret,
        other => panic!("not a webhook: {other:?}"),
    };
    let channel_id = ChannelId(id.parse()?);

    // Changing the URL keeps the secret.
    let (status, updated) = h
        .call("PUT", &uri, t, Some(json!({"url": "https://y.example/h"})))
        .await?;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["url"], "https://y.example/h");
    assert_eq!(
        stored_secret(store(&h).get_channel(tenant, channel_id).await?),
        secret
    );
    let (status, resp) = h
        .call("PUT", &uri, t, Some(json!({"to": ["a@b.example"]})))
        .await?;
    assert_unprocessable(status, &resp, "to");
    // Sending one replaces it.
    let (status, updated) = h
        .call(
            "PUT",
            &uri,
            t,
            Some(json!({"secret": "second-secret-0123456789"})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert!(!updated.to_string().contains("second-secret"), "{updated}");
    assert_eq!(
        stored_secret(store(&h).get_channel(tenant, channel_id).await?),
        "second-secret-0123456789"
    );
    let (_, got) = h.call("GET", &uri, t, None).await?;
    let (_, list) = h
        .call("GET", "/api/v1/notification-channels", t, None)
        .await?;
    for body in [&got, &list] {
        assert!(!body.to_string().contains("secret-0123456789"), "{body}");
    }
    let log = h
        .access
        .list_audit(tenant, tp_core::Page::default())
        .await?;
    assert!(!serde_json::to_string(&log)?.contains("secret-0123456789"));

    // The notification history of the tenant.
    let record = NotificationRecord {
        id: NotificationId::new(),
        tenant_id: tenant,
        channel_id,
        alarm_id: None,
        rule_id: None,
        subject: "Boiler hot".into(),
        body: "temp 95".into(),
        status: NotificationStatus::Sent,
        attempts: 2,
        detail: Some("HTTP 200".into()),
        created_at: now_ms(),
        updated_at: now_ms(),
    };
    store(&h).create_notification(&record).await?;
    let (status, history) = h.call("GET", "/api/v1/notifications", t, None).await?;
    assert_eq!(status, StatusCode::OK, "{history}");
    assert_eq!(history["total"], 1);
    assert_eq!(history["items"][0]["status"], "sent");
    assert_eq!(history["items"][0]["attempts"], 2);
    Ok(())
}

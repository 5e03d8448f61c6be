//! The streamed telemetry export and the home page's trend endpoints, plus two
//! measurements that are ignored by default (they seed a lot of data and print
//! numbers; nothing here asserts a time):
//!
//! ```text
//! cargo test -p tp-api --lib -- --ignored --nocapture measure_
//! ```

use futures_util::StreamExt;
use tp_core::rules::{Alarm, AlarmId, AlarmSeverity, AlarmStatus};
use tp_core::{DeviceStatusEvent, StatusReason};

use super::*;

/// Writes `n` points per key, one per second from `start`.
async fn seed_history(h: &Harness, device: DeviceId, keys: &[&str], start: i64, n: i64) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let points: Vec<TelemetryPoint> = chunk
            .iter()
            .flat_map(|i| {
                keys.iter().map(move |k| TelemetryPoint {
                    device_id: device,
                    key: (*k).into(),
                    ts: start + i * 1000,
                    value: Value::Float(*i as f64 / 2.0),
                })
            })
            .collect();
        h.ts.write(&points).await.unwrap();
    }
}

/// The export body, as text.
async fn export(h: &Harness, device: DeviceId, query: &str) -> (StatusCode, String, String) {
    let req = Request::builder()
        .uri(format!("/api/v1/devices/{device}/telemetry/export?{query}"))
        .header(header::AUTHORIZATION, format!("Bearer {}", h.token))
        .body(Body::empty())
        .unwrap();
    let resp = h.app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let kind = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, kind, String::from_utf8(bytes.to_vec()).unwrap())
}

/// A range several store chunks long comes out whole, in time order, merged across
/// keys that do not share every timestamp, as CSV and as JSON lines.
#[tokio::test]
async fn export_streams_a_long_range_in_time_order() -> Result<()> {
    let h = Harness::new().await?;
    let d = device_id(&h.create_device(json!({"name": "exported"})).await?)?;
    let n = 5_000; // 2.5 store chunks
    seed_history(&h, d, &["a"], 0, n).await;
    // `b` on every other second only, and one text value that needs quoting.
    let b: Vec<TelemetryPoint> = (0..n)
        .step_by(2)
        .map(|i| TelemetryPoint {
            device_id: d,
            key: "b".into(),
            ts: i * 1000,
            value: if i == 10 {
                Value::String("x, \"y\"".into())
            } else {
                Value::Integer(i)
            },
        })
        .collect();
    h.ts.write(&b).await?;

    let (status, kind, csv) = export(&h, d, &format!("keys=b,a&start=0&end={}", n * 1000)).await;
    assert_eq!(status, StatusCode::OK, "{csv}");
    assert!(kind.starts_with("text/csv"), "{kind}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "ts,a,b");
    assert_eq!(lines.len() as i64, n + 1);
    assert_eq!(lines[1], "0,0.0,0");
    assert_eq!(lines[2], "1000,0.5,");
    assert_eq!(lines[11], "10000,5.0,\"x, \"\"y\"\"\"");
    let ts: Vec<i64> = lines[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] < w[1]), "time order");
    assert_eq!(*ts.last().unwrap(), (n - 1) * 1000);

    let (status, kind, nd) = export(
        &h,
        d,
        &format!("keys=a,b&start=1000&end={}&format=ndjson", 4_001 * 1000),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kind, "application/x-ndjson");
    let rows: Vec<Json> = nd
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4_000);
    assert_eq!(rows[0], json!({"ts": 1000, "values": {"a": 0.5}}));
    assert_eq!(rows[1], json!({"ts": 2000, "values": {"a": 1.0, "b": 2}}));
    // Every key when none is named; an empty range is the header alone.
    let (_, _, all) = export(&h, d, "start=0&end=2000").await;
    assert_eq!(all, "ts,a,b\n0,0.0,0\n1000,0.5,\n");
    let (_, _, empty) = export(&h, d, "keys=a&start=5&end=5").await;
    assert_eq!(empty, "ts,a\n");
    // Another tenant's device is a 404; too many keys a 422.
    let (_, other) = h.other_tenant_user(Role::TenantAdmin).await?;
    let (status, _) = h
        .call(
            "GET",
            &format!("/api/v1/devices/{d}/telemetry/export?start=0&end=1"),
            Some(&other),
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let many: Vec<String> = (0..65).map(|i| format!("k{i}")).collect();
    let got = h
        .get(&format!(
            "/api/v1/devices/{d}/telemetry/export?start=0&end=1&keys={}",
            many.join(",")
        ))
        .await?;
    assert_error(&got, 422, "unprocessable", Some("keys"));
    Ok(())
}

/// The trend endpoints count the tenant's own messages, transitions and alarms.
#[tokio::test]
async fn trends_answer_from_counters_and_history() -> Result<()> {
    let h = Harness::new().await?;
    let traffic = h.state.traffic.clone().context("traffic")?;
    let d = h.create_device(json!({"name": "busy"})).await?;
    let (id, tenant) = (
        device_id(&d)?,
        h.meta
            .get_device_by_id(device_id(&d)?)
            .await?
            .context("device")?
            .tenant_id,
    );
    let now = now_ms();
    for _ in 0..4 {
        traffic.record(tenant, id, now);
    }
    traffic.record(TenantId::new(), id, now);
    let (status, m) = h.get("/api/v1/stats/messages").await?;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(m["counts"].as_array().unwrap().len(), 1440);
    assert_eq!(m["counts"][1439], 4);
    let (_, top) = h.get("/api/v1/stats/top-devices").await?;
    assert_eq!(top["items"][0]["name"], "busy");
    assert_eq!(top["items"][0]["messages"], 4);
    assert_error(
        &h.get("/api/v1/stats/top-devices?limit=0").await?,
        400,
        "invalid_input",
        Some("limit"),
    );

    // Online two hours ago, offline one hour ago, online again now.
    for (online, ago) in [(true, 2), (false, 1)] {
        h.meta
            .append_status(&DeviceStatusEvent {
                device_id: id,
                online,
                reason: StatusReason::Connect,
                at: now - ago * 3_600_000 - 60_000,
            })
            .await?;
    }
    h.meta
        .append_status(&DeviceStatusEvent {
            device_id: id,
            online: true,
            reason: StatusReason::Connect,
            at: now - 1_000,
        })
        .await?;
    let (_, online) = h.get("/api/v1/stats/online").await?;
    let counts: Vec<u64> = online["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["online"].as_u64().unwrap())
        .collect();
    assert_eq!(counts.len(), 25);
    assert_eq!(counts[0], 0, "{online}");
    assert_eq!(*counts.last().unwrap(), 1, "{online}");
    assert_eq!(counts[22], 1, "online in the hour two hours ago: {online}");
    assert_eq!(counts[23], 0, "offline in the hour before: {online}");

    // One alarm raised and cleared now, one raised 3 hours ago.
    let rules = h.state.rules().context("rules")?;
    for (ago, cleared) in [(0, true), (3, false)] {
        let at = now - ago * 3_600_000;
        rules
            .create_alarm(&Alarm {
                id: AlarmId::new(),
                tenant_id: tenant,
                rule_id: None,
                device_id: Some(id),
                severity: AlarmSeverity::Major,
                status: if cleared {
                    AlarmStatus::Cleared
                } else {
                    AlarmStatus::Active
                },
                title: format!("a{ago}"),
                description: None,
                occurrences: 1,
                details: json!({}),
                created_at: at,
                updated_at: at,
                acknowledged_at: None,
                acknowledged_by: None,
                cleared_at: cleared.then_some(at),
            })
            .await?;
    }
    let (_, alarms) = h.get("/api/v1/stats/alarms").await?;
    let items = alarms["items"].as_array().unwrap();
    assert_eq!(items.len(), 24);
    assert_eq!(items[23]["raised"], 1, "{alarms}");
    assert_eq!(items[23]["cleared"], 1, "{alarms}");
    assert_eq!(items[20]["raised"], 1, "{alarms}");
    Ok(())
}

/// Resident set size of this process, in KiB (Linux).
fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

/// Measurement: a 7-day history at 1 Hz (604,800 points per key, two keys) exported
/// as CSV, reading the body chunk by chunk; prints the RSS before, the highest seen
/// during, and after.
#[tokio::test]
#[ignore = "measurement: seeds 1.2 million points"]
async fn measure_export_memory_7_days_1hz() -> Result<()> {
    let h = Harness::new().await?;
    let d = device_id(&h.create_device(json!({"name": "week"})).await?)?;
    let n = 7 * 86_400;
    seed_history(&h, d, &["temperature", "humidity"], 0, n).await;
    let before = rss_kib();
    let started = std::time::Instant::now();
    let req = Request::builder()
        .uri(format!(
            "/api/v1/devices/{d}/telemetry/export?start=0&end={}",
            n * 1000
        ))
        .header(header::AUTHORIZATION, format!("Bearer {}", h.token))
        .body(Body::empty())?;
    let resp = h.app.clone().oneshot(req).await?;
    let mut body = resp.into_body().into_data_stream();
    let (mut bytes, mut lines, mut peak, mut chunks) = (0usize, 0usize, before, 0usize);
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        bytes += chunk.len();
        lines += chunk.iter().filter(|&&b| b == b'\n').count();
        chunks += 1;
        if chunks % 50 == 0 {
            peak = peak.max(rss_kib());
        }
    }
    assert_eq!(lines as i64, n + 1, "every row exported");
    eprintln!(
        "export of {n} rows x 2 keys: {bytes} bytes in {chunks} chunks, {:.1} s; \
         RSS before {before} KiB, peak during {peak} KiB (+{} KiB), after {} KiB",
        started.elapsed().as_secs_f64(),
        peak.saturating_sub(before),
        rss_kib()
    );
    Ok(())
}

/// Measurement: the four trend endpoints on a tenant of 1,000 devices with a day of
/// activity: 86.4 million messages counted (1 msg/s per device), two status
/// transitions per device per hour, 2,000 alarms. Prints each endpoint's median and
/// worst of 20 calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: counts 86.4 million messages"]
async fn measure_trend_endpoints_1000_devices() -> Result<()> {
    let h = Harness::new().await?;
    let traffic = h.state.traffic.clone().context("traffic")?;
    let tenant = h
        .meta
        .get_user_by_email(ADMIN_EMAIL)
        .await?
        .context("admin")?
        .tenant_id;
    let now = now_ms();
    let day = now - 86_400_000;
    let mut devices = Vec::new();
    for i in 0..1_000 {
        let (device, _) = tp_core::Device::new(tenant, format!("d{i}"), Some(format!("n{i}")));
        h.meta.create_device(&device).await?;
        devices.push(device.id);
    }
    let seeded = std::time::Instant::now();
    for s in 0..86_400i64 {
        let at = day + s * 1000;
        for d in &devices {
            traffic.record(tenant, *d, at);
        }
    }
    eprintln!(
        "counted 86.4 M messages in {:.1} s",
        seeded.elapsed().as_secs_f64()
    );
    let mut events = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        for hour in 0..24i64 {
            let at = day + hour * 3_600_000 + i as i64;
            events.push(DeviceStatusEvent {
                device_id: *d,
                online: false,
                reason: StatusReason::ConnectionLost,
                at,
            });
            events.push(DeviceStatusEvent {
                device_id: *d,
                online: true,
                reason: StatusReason::Connect,
                at: at + 60_000,
            });
        }
    }
    h.meta.append_statuses(&events).await?;
    let rules = h.state.rules().context("rules")?;
    for i in 0..2_000i64 {
        let at = day + i * 43_000;
        rules
            .create_alarm(&Alarm {
                id: AlarmId::new(),
                tenant_id: tenant,
                rule_id: None,
                device_id: Some(devices[(i % 1000) as usize]),
                severity: AlarmSeverity::Minor,
                status: AlarmStatus::Cleared,
                title: format!("a{i}"),
                description: None,
                occurrences: 1,
                details: json!({}),
                created_at: at,
                updated_at: at,
                acknowledged_at: None,
                acknowledged_by: None,
                cleared_at: Some(at + 600_000),
            })
            .await?;
    }
    for path in [
        "/api/v1/stats/messages",
        "/api/v1/stats/online",
        "/api/v1/stats/alarms",
        "/api/v1/stats/top-devices?limit=10",
    ] {
        let mut times = Vec::new();
        for _ in 0..20 {
            let started = std::time::Instant::now();
            let (status, body) = h.get(path).await?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        times.sort_by(f64::total_cmp);
        eprintln!(
            "{path}: median {:.2} ms, worst {:.2} ms (20 calls)",
            times[10], times[19]
        );
    }
    Ok(())
}

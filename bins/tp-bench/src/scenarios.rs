//! The scenarios: platform ingest, raw broker, idle connections, API queries, history.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::BufMut;
use futures_util::StreamExt;
use serde_json::json;

use crate::common::{
    Api, BenchDevice, Latency, Report, ServerProbe, now_ms, now_us, progress, sleep_until,
};
use crate::load::{
    Client, ConnectSpec, Counters, Schedule, connect, publish_loop, qos, wait_acked,
};

/// Options shared by the load scenarios.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LoadOpts {
    /// MQTT address of the server under test.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub(crate) mqtt: SocketAddr,
    /// Devices (publishers).
    #[arg(long, default_value_t = 1000)]
    pub(crate) devices: usize,
    /// Points (keys) per message.
    #[arg(long, default_value_t = 10)]
    pub(crate) points: usize,
    /// Total messages per second over all devices.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) rate: u64,
    /// QoS of the publishes (0 or 1).
    #[arg(long, default_value_t = 1)]
    pub(crate) qos: u8,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 30)]
    pub(crate) duration: u64,
    /// New connections per second while connecting.
    #[arg(long, default_value_t = 2000)]
    pub(crate) connect_rate: u64,
    /// PID of the server process, to report its RSS and CPU.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// Publish-to-stored latency samples to aim for (ingest): every
    /// `rate x duration / latency_samples`-th message is timed until it is stored.
    #[arg(long, default_value_t = 1_200)]
    pub(crate) latency_samples: u64,
}

/// Credentials of the platform's REST API.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ApiOpts {
    /// Base URL of the REST API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub(crate) api: String,
    /// Login email.
    #[arg(
        long,
        env = "TP_ADMIN_EMAIL",
        default_value = "admin@thingspanel.local"
    )]
    pub(crate) email: String,
    /// Login password.
    #[arg(long, env = "TP_ADMIN_PASSWORD")]
    pub(crate) password: String,
}

pub(crate) fn values_payload(ts: i64, points: usize, seq: u64) -> Vec<u8> {
    let mut s = format!("{{\"ts\":{ts},\"values\":{{");
    for k in 0..points {
        if k > 0 {
            s.push(',');
        }
        s.push_str(&format!("\"k{k}\":{}.{}", seq % 1000, k));
    }
    s.push_str("}}");
    s.into_bytes()
}

pub(crate) async fn connect_all(
    specs: Vec<ConnectSpec>,
    rate: u64,
    counters: &Arc<Counters>,
) -> anyhow::Result<(Vec<Arc<Client>>, f64)> {
    let bar = progress(specs.len() as u64, "connecting");
    let start = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let clients: Vec<anyhow::Result<Client>> =
        futures_util::stream::iter(specs.into_iter().enumerate())
            .map(|(i, spec)| {
                let counters = counters.clone();
                async move {
                    sleep_until(start + gap * i as u32).await;
                    connect(spec, counters).await
                }
            })
            // In spec order (not completion order): callers pair clients[i] with
            // their devices[i] (subscriptions, latency probes).
            .buffered(4096)
            .inspect(|_| bar.inc(1))
            .collect()
            .await;
    let secs = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let clients: Vec<Arc<Client>> = clients
        .into_iter()
        .map(|c| c.map(Arc::new))
        .collect::<anyhow::Result<_>>()?;
    Ok((clients, secs))
}

/// The writer's committed-points counter in the server's metrics.
const WRITTEN: &str = "tp_writer_points_written_total";

/// Publishes through the platform and verifies by counting in its store.
pub(crate) async fn ingest(load: LoadOpts, api_opts: ApiOpts) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "ingest",
        json!({"devices": load.devices, "points": load.points, "rate": load.rate, "qos": load.qos, "duration_s": load.duration}),
    );
    let api = Api::login(&api_opts.api, &api_opts.email, &api_opts.password).await?;
    let mut probe = ServerProbe::new(load.server_pid);
    let prefix = format!("bench{}", now_ms());
    let bar = progress(load.devices as u64, "provisioning");
    let devices = api.create_devices(&prefix, load.devices, 32, &bar).await?;
    bar.finish_and_clear();
    let rss_before = probe.rss_bytes();

    let counters = Arc::new(Counters::default());
    let specs = devices
        .iter()
        .map(|d| ConnectSpec {
            addr: load.mqtt,
            client_id: format!("mqtt_{}", d.number),
            credentials: Some((d.username.clone(), d.password.clone())),
            latency: None,
        })
        .collect();
    let (clients, connect_secs) = connect_all(specs, load.connect_rate, &counters).await?;
    report.add(
        "connect rate",
        clients.len() as f64 / connect_secs,
        "conn/s",
    );
    if let (Some(a), Some(b)) = (rss_before, probe.rss_bytes()) {
        report.add(
            "memory per connection",
            (b.saturating_sub(a)) as f64 / clients.len() as f64 / 1024.0,
            "KiB",
        );
    }

    probe.restart();
    let written_before = api.metric(WRITTEN).await.ok().flatten();
    let stop = Arc::new(AtomicBool::new(false));
    let period = Duration::from_secs_f64(load.devices as f64 / load.rate.max(1) as f64);
    // Publish-to-stored latency of a sample of the messages (see `probe`).
    let every = crate::probe::stride(load.rate * load.duration, load.latency_samples);
    let (sampler, prober) = crate::probe::start(api.clone(), Arc::new(devices.clone()), every);
    let t_start = now_ms();
    for (i, client) in clients.iter().enumerate() {
        let schedule = Schedule {
            qos: qos(load.qos),
            period,
            offset: period.mul_f64(i as f64 / clients.len() as f64),
            stop: stop.clone(),
            counters: counters.clone(),
            probe: Some((i, sampler.clone())),
        };
        let points = load.points;
        tokio::spawn(publish_loop(
            client.clone(),
            "devices/telemetry".into(),
            schedule,
            move |c, seq| {
                // strictly increasing device timestamps: every message is stored separately
                let ts = now_ms().max(c.last_ts.load(Ordering::Relaxed) + 1);
                c.last_ts.store(ts, Ordering::Relaxed);
                values_payload(ts, points, seq)
            },
        ));
    }

    // The publishers hold the sampler from here on; the prober ends after them.
    drop(sampler);

    let bar = progress(load.duration, "publishing");
    for _ in 0..load.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        bar.inc(1);
        bar.set_message(format!("{} sent", counters.sent.load(Ordering::Relaxed)));
    }
    stop.store(true, Ordering::Relaxed);
    bar.finish_and_clear();
    let publish_secs = (now_ms() - t_start) as f64 / 1000.0;
    // The drain is timed from the end of publishing, so waiting for the last
    // acknowledgements is part of it.
    let wait_start = Instant::now();
    wait_acked(&counters, Duration::from_secs(30)).await;
    let probed = prober.await.context("latency prober")?;
    let probe_secs = wait_start.elapsed().as_secs_f64() + publish_secs;
    let cpu = probe.cpu_percent();
    let sent = counters.sent.load(Ordering::Relaxed);
    let acked = counters.acked.load(Ordering::Relaxed);

    // The drain ends when the writer reports everything committed: its counter is
    // cheap to poll, while a count over every device's rows would compete with the
    // writer for the cores and lengthen the drain it measures. (Without the metric,
    // e.g. a server that does not export it, the store is counted until complete.)
    // At QoS 1 what was acknowledged must be stored; a publish the broker refused
    // (backpressure closes the connection before the PUBACK) may not be, so waiting
    // for every *sent* point would wait for points that never come. At QoS 0 nothing
    // is acknowledged: everything sent is expected.
    let expected = if load.qos == 0 { sent } else { acked } * load.points as u64;
    let t_end = now_ms() + 1;
    let drain_deadline = wait_start + Duration::from_secs(120);
    if let Some(before) = written_before {
        let mut last = (before, Instant::now());
        while Instant::now() < drain_deadline {
            let Some(now) = api.metric(WRITTEN).await.ok().flatten() else {
                break;
            };
            if now - before >= expected as f64 {
                break;
            }
            if now > last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(10) {
                break; // stalled: the count below tells what is missing
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut drain_secs = wait_start.elapsed().as_secs_f64();
    // Verified by counting in the store, not assumed.
    let mut stored = 0;
    for attempt in 0..60 {
        stored = count_all(&api, &devices, t_start, t_end).await?;
        if attempt > 0 || stored < expected {
            // The metric was missing or wrong: the drain lasts until the count is
            // complete (counting time included).
            drain_secs = wait_start.elapsed().as_secs_f64();
        }
        if stored >= expected || Instant::now() >= drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    report.add("sent", sent as f64 / publish_secs, "msg/s");
    report.add("acknowledged", acked as f64 / publish_secs, "msg/s");
    report.add("stored (counted in the store)", stored as f64, "points");
    report.add(
        "sustained store rate (stored / (publishing + drain))",
        stored as f64 / (publish_secs + drain_secs),
        "points/s",
    );
    report.add(
        if load.qos == 0 {
            "stored / sent"
        } else {
            "stored / acknowledged"
        },
        stored as f64 / expected.max(1) as f64,
        "ratio",
    );
    report.add("store drain after publishing", drain_secs, "s");
    report.add(
        "publish errors",
        counters.errors.load(Ordering::Relaxed) as f64,
        "count",
    );
    let (n, p50, p95, p99) = probed.latency.summary();
    report.add("publish-to-stored samples", n as f64, "count");
    report.add(
        "publish-to-stored samples skipped (too many in flight)",
        probed.skipped as f64,
        "count",
    );
    report.add(
        "publish-to-stored samples not stored within 30 s",
        probed.timed_out as f64,
        "count",
    );
    report.add(
        "latency polls (latest-value requests added)",
        probed.polls as f64 / probe_secs,
        "req/s",
    );
    report.add("publish-to-stored p50", p50, "ms");
    report.add("publish-to-stored p95", p95, "ms");
    report.add("publish-to-stored p99", p99, "ms");
    if let Some(cpu) = cpu {
        report.add("server CPU", cpu, "% of one core");
    }
    if let Some(rss) = probe.rss_bytes() {
        report.add("server RSS", rss as f64 / 1048576.0, "MiB");
    }
    Ok(report)
}

async fn count_all(
    api: &Api,
    devices: &[BenchDevice],
    start: i64,
    end: i64,
) -> anyhow::Result<u64> {
    let counts: Vec<anyhow::Result<u64>> = futures_util::stream::iter(devices)
        .map(|d| api.count_points(&d.id, start, end))
        .buffer_unordered(16)
        .collect()
        .await;
    counts.into_iter().sum()
}

/// Options of the raw-broker scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RawOpts {
    /// Subscriber connections; publisher i publishes on `bench/{i % subscribers}/{i}`.
    #[arg(long, default_value_t = 4)]
    pub(crate) subscribers: usize,
    /// Username for every connection, if the broker needs one.
    #[arg(long)]
    pub(crate) username: Option<String>,
    /// Password for every connection.
    #[arg(long)]
    pub(crate) password: Option<String>,
}

/// The same load against any MQTT broker: publishers -> broker -> subscribers.
pub(crate) async fn raw(load: LoadOpts, raw: RawOpts) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "raw-broker",
        json!({"devices": load.devices, "points": load.points, "rate": load.rate, "qos": load.qos, "duration_s": load.duration, "subscribers": raw.subscribers}),
    );
    let mut probe = ServerProbe::new(load.server_pid);
    let credentials = raw.username.clone().zip(raw.password.clone());
    let run = now_ms();
    let latency = Arc::new(Latency::new());
    let sub_counters = Arc::new(Counters::default());
    for j in 0..raw.subscribers {
        let sub = connect(
            ConnectSpec {
                addr: load.mqtt,
                client_id: format!("bench-sub-{run}-{j}"),
                credentials: credentials.clone(),
                latency: Some(latency.clone()),
            },
            sub_counters.clone(),
        )
        .await
        .context("subscriber")?;
        sub.client
            .subscribe(format!("bench/{j}/#"), qos(load.qos))
            .await?;
        std::mem::forget(sub); // keep the subscriber connected for the whole run
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counters = Arc::new(Counters::default());
    let specs = (0..load.devices)
        .map(|i| ConnectSpec {
            addr: load.mqtt,
            client_id: format!("bench-pub-{run}-{i}"),
            credentials: credentials.clone(),
            latency: None,
        })
        .collect();
    let (clients, connect_secs) = connect_all(specs, load.connect_rate, &counters).await?;
    report.add(
        "connect rate",
        clients.len() as f64 / connect_secs,
        "conn/s",
    );
    probe.restart();
    let stop = Arc::new(AtomicBool::new(false));
    let period = Duration::from_secs_f64(load.devices as f64 / load.rate.max(1) as f64);
    let body = values_payload(now_ms(), load.points, 0);
    let start = Instant::now();
    for (i, client) in clients.iter().enumerate() {
        let schedule = Schedule {
            qos: qos(load.qos),
            period,
            offset: period.mul_f64(i as f64 / clients.len() as f64),
            stop: stop.clone(),
            counters: counters.clone(),
            probe: None,
        };
        let body = body.clone();
        tokio::spawn(publish_loop(
            client.clone(),
            format!("bench/{}/{i}", i % raw.subscribers),
            schedule,
            move |_, _| {
                let mut b = Vec::with_capacity(8 + body.len());
                b.put_u64(now_us());
                b.extend_from_slice(&body);
                b
            },
        ));
    }
    let bar = progress(load.duration, "publishing");
    for _ in 0..load.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        bar.inc(1);
    }
    stop.store(true, Ordering::Relaxed);
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    wait_acked(&counters, Duration::from_secs(30)).await;
    let sent = counters.sent.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sub_counters.received.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = sub_counters.received.load(Ordering::Relaxed);
    report.add("sent", sent as f64 / secs, "msg/s");
    report.add(
        "acknowledged",
        counters.acked.load(Ordering::Relaxed) as f64 / secs,
        "msg/s",
    );
    report.add("received by subscribers", received as f64 / secs, "msg/s");
    report.add(
        "received / sent",
        received as f64 / sent.max(1) as f64,
        "ratio",
    );
    let (_, p50, p95, p99) = latency.summary();
    report.add("publish-to-subscriber p50", p50, "ms");
    report.add("publish-to-subscriber p95", p95, "ms");
    report.add("publish-to-subscriber p99", p99, "ms");
    if let Some(cpu) = probe.cpu_percent() {
        report.add("server CPU", cpu, "% of one core");
    }
    if let Some(rss) = probe.rss_bytes() {
        report.add("server RSS", rss as f64 / 1048576.0, "MiB");
    }
    Ok(report)
}

/// Options of the API scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct QueryOpts {
    /// Concurrent requests in flight.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 20)]
    pub(crate) duration: u64,
    /// Devices to spread the queries over.
    #[arg(long, default_value_t = 100)]
    pub(crate) devices: usize,
    /// MQTT address, to give the devices data first.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub(crate) mqtt: SocketAddr,
}

/// Latest-value and one-day-history queries under concurrent load.
pub(crate) async fn api(opts: QueryOpts, api_opts: ApiOpts) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "api",
        json!({"concurrency": opts.concurrency, "duration_s": opts.duration, "devices": opts.devices}),
    );
    let api = Api::login(&api_opts.api, &api_opts.email, &api_opts.password).await?;
    let bar = progress(opts.devices as u64, "provisioning");
    let devices = api
        .create_devices(&format!("api{}", now_ms()), opts.devices, 32, &bar)
        .await?;
    bar.finish_and_clear();

    // Give every device 10 keys, and the first one a day of 1 Hz history for one key.
    let counters = Arc::new(Counters::default());
    let day_start = (now_ms() / 86_400_000 - 1) * 86_400_000;
    for (i, d) in devices.iter().enumerate() {
        let c = connect(
            ConnectSpec {
                addr: opts.mqtt,
                client_id: format!("mqtt_{}", d.number),
                credentials: Some((d.username.clone(), d.password.clone())),
                latency: None,
            },
            counters.clone(),
        )
        .await?;
        c.client
            .publish(
                "devices/telemetry",
                qos(1),
                false,
                values_payload(now_ms(), 10, 1),
            )
            .await?;
        if i == 0 {
            for chunk in 0..(86_400 / 1000) {
                let batch: Vec<serde_json::Value> = (0..1000)
                    .map(|s| json!({"ts": day_start + (chunk * 1000 + s) * 1000, "values": {"temp": ((chunk * 1000 + s) % 100) as f64 / 4.0}}))
                    .collect();
                c.client
                    .publish(
                        "devices/telemetry",
                        qos(1),
                        false,
                        serde_json::to_vec(&batch)?,
                    )
                    .await?;
            }
            let rest: Vec<serde_json::Value> = (86_000..86_400)
                .map(|s| json!({"ts": day_start + s * 1000, "values": {"temp": 1.0}}))
                .collect();
            c.client
                .publish(
                    "devices/telemetry",
                    qos(1),
                    false,
                    serde_json::to_vec(&rest)?,
                )
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let history_path = format!(
        "/api/v1/devices/{}/telemetry?keys=temp&start={day_start}&end={}&agg=avg&interval=60000&limit=100000",
        devices[0].id,
        day_start + 86_400_000
    );
    for _ in 0..200 {
        let v = api.get(&history_path).await?;
        if v["items"].as_array().map(|a| a.len()) == Some(1440) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let latest = Arc::new(Latency::new());
    let stop = Instant::now() + Duration::from_secs(opts.duration);
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..opts.concurrency {
        let (api, devices, latest, done, errors) = (
            api.clone(),
            devices.clone(),
            latest.clone(),
            done.clone(),
            errors.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < stop {
                i = (i + 13) % devices.len();
                let t = Instant::now();
                match api
                    .get(&format!(
                        "/api/v1/devices/{}/telemetry/latest",
                        devices[i].id
                    ))
                    .await
                {
                    Ok(_) => {
                        latest.record_us(t.elapsed().as_micros() as u64);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let (_, p50, p95, p99) = latest.summary();
    report.add(
        "latest-value requests",
        done.load(Ordering::Relaxed) as f64 / opts.duration as f64,
        "req/s",
    );
    report.add("latest-value p50", p50, "ms");
    report.add("latest-value p95", p95, "ms");
    report.add("latest-value p99", p99, "ms");
    report.add("errors", errors.load(Ordering::Relaxed) as f64, "count");

    let history = Latency::new();
    for _ in 0..50 {
        let t = Instant::now();
        let v = api.get(&history_path).await?;
        history.record_us(t.elapsed().as_micros() as u64);
        anyhow::ensure!(
            v["items"].as_array().map(|a| a.len()) == Some(1440),
            "one day at 1-minute buckets must give 1440 rows"
        );
    }
    let (_, p50, _, p99) = history.summary();
    report.add("one-day 1-min avg (86,400 points) p50", p50, "ms");
    report.add("one-day 1-min avg (86,400 points) p99", p99, "ms");
    Ok(report)
}

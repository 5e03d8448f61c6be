//! Soak: devices publish a mix of telemetry, attributes and events for a long time;
//! attribute and event reports are acknowledged on per-message response topics
//! (`devices/attributes/response/{number}/{message_id}`, ...) that the devices
//! subscribe to. The server's anonymous RSS is sampled throughout: its memory must
//! follow the devices, not the messages (nothing consumed is retained, and no
//! per-topic state grows with the message ids).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rumqttc::QoS;
use serde_json::json;

use crate::common::{Api, Report, ServerProbe, now_ms, progress};
use crate::load::{ConnectSpec, Counters, Schedule, publish_loop};
use crate::scenarios::{ApiOpts, connect_all, values_payload};

/// Options of the soak scenario.
#[derive(clap::Args, Debug)]
pub(crate) struct SoakOpts {
    /// MQTT address of the platform.
    #[arg(long)]
    pub(crate) mqtt: SocketAddr,
    /// Devices, each publishing `per_device_rate` messages per second.
    #[arg(long, default_value_t = 1000)]
    pub(crate) devices: usize,
    /// Messages per second per device (telemetry, attributes and events in turn).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) per_device_rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 1800)]
    pub(crate) duration: u64,
    /// Seconds at the start not counted in the steady state.
    #[arg(long, default_value_t = 300)]
    pub(crate) warmup: u64,
    /// Seconds between two RSS samples.
    #[arg(long, default_value_t = 30)]
    pub(crate) sample: u64,
    /// PID of the server process (its /proc status is sampled).
    #[arg(long)]
    pub(crate) server_pid: u32,
}

pub(crate) async fn soak(opts: SoakOpts, api_opts: ApiOpts) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "soak",
        json!({"devices": opts.devices, "per_device_rate": opts.per_device_rate,
               "duration_s": opts.duration, "warmup_s": opts.warmup}),
    );
    let api = Api::login(&api_opts.api, &api_opts.email, &api_opts.password).await?;
    let probe = ServerProbe::new(Some(opts.server_pid));
    let bar = progress(opts.devices as u64, "provisioning");
    let devices = api
        .create_devices(&format!("soak{}", now_ms()), opts.devices, 32, &bar)
        .await?;
    bar.finish_and_clear();
    let anon_idle = probe.anon_rss_bytes().unwrap_or(0);

    let counters = Arc::new(Counters::default());
    let specs = devices
        .iter()
        .map(|d| ConnectSpec {
            addr: opts.mqtt,
            client_id: format!("mqtt_{}", d.number),
            credentials: Some((d.username.clone(), d.password.clone())),
            latency: None,
        })
        .collect();
    let (clients, _) = connect_all(specs, 1000, &counters).await?;
    for (client, d) in clients.iter().zip(&devices) {
        for filter in [
            format!("devices/attributes/response/{}/+", d.number),
            format!("devices/event/response/{}/+", d.number),
        ] {
            client.client.subscribe(filter, QoS::AtLeastOnce).await?;
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let period = Duration::from_secs_f64(1.0 / opts.per_device_rate.max(0.001));
    for (i, client) in clients.iter().enumerate() {
        let schedule = Schedule {
            qos: QoS::AtLeastOnce,
            period,
            offset: period.mul_f64(i as f64 / clients.len() as f64),
            stop: stop.clone(),
            counters: counters.clone(),
            probe: None,
        };
        // One loop per kind, each a third of the rate, so the topics rotate.
        for kind in 0..3u64 {
            let schedule = Schedule {
                period: period * 3,
                offset: schedule.offset + period * kind as u32,
                ..schedule.clone()
            };
            let client = client.clone();
            tokio::spawn(async move {
                match kind {
                    0 => {
                        publish_loop(client, "devices/telemetry".into(), schedule, |_, seq| {
                            values_payload(now_ms(), 10, seq)
                        })
                        .await
                    }
                    // A fresh message id per report: the response topic is new each time.
                    1 => {
                        publish_loop(
                            client,
                            "devices/attributes/m{seq}".into(),
                            schedule,
                            |_, seq| format!(r#"{{"fw":"1.0.{seq}","rssi":-60}}"#).into_bytes(),
                        )
                        .await
                    }
                    _ => {
                        publish_loop(client, "devices/event/m{seq}".into(), schedule, |_, seq| {
                            format!(r#"{{"method":"Tick","params":{{"n":{seq}}}}}"#).into_bytes()
                        })
                        .await
                    }
                }
            });
        }
    }

    let start = Instant::now();
    let mut samples: Vec<(u64, f64)> = Vec::new();
    let bar = progress(opts.duration, "soaking");
    while start.elapsed().as_secs() < opts.duration {
        tokio::time::sleep(Duration::from_secs(opts.sample.max(1))).await;
        let t = start.elapsed().as_secs();
        if let Some(anon) = probe.anon_rss_bytes() {
            samples.push((t, anon as f64 / 1048576.0));
            bar.set_message(format!("anon RSS {:.1} MiB", anon as f64 / 1048576.0));
        }
        bar.set_position(t);
    }
    stop.store(true, Ordering::Relaxed);
    bar.finish_and_clear();

    let steady: Vec<f64> = samples
        .iter()
        .filter(|(t, _)| *t >= opts.warmup)
        .map(|(_, m)| *m)
        .collect();
    let (min, max) = steady
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), m| (lo.min(*m), hi.max(*m)));
    let mean = steady.iter().sum::<f64>() / steady.len().max(1) as f64;
    report.add(
        "anonymous RSS before connecting",
        anon_idle as f64 / 1048576.0,
        "MiB",
    );
    report.add("steady-state anonymous RSS (mean)", mean, "MiB");
    report.add("steady-state min", min, "MiB");
    report.add("steady-state max", max, "MiB");
    report.add(
        "steady-state spread (max-min)/mean",
        100.0 * (max - min) / mean.max(1e-9),
        "%",
    );
    report.add(
        "anonymous RSS per 1,000 devices above idle",
        (mean - anon_idle as f64 / 1048576.0) * 1000.0 / opts.devices.max(1) as f64,
        "MiB",
    );
    for (t, m) in &samples {
        report.add(&format!("sample t={t}s"), *m, "MiB");
    }
    report.add(
        "messages sent",
        counters.sent.load(Ordering::Relaxed) as f64,
        "msgs",
    );
    report.add(
        "messages acknowledged",
        counters.acked.load(Ordering::Relaxed) as f64,
        "msgs",
    );
    report.add(
        "report acknowledgements received",
        counters.received.load(Ordering::Relaxed) as f64,
        "msgs",
    );
    report.add(
        "client errors",
        counters.errors.load(Ordering::Relaxed) as f64,
        "errors",
    );
    Ok(report)
}

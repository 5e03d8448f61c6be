//! Crash scenario: devices publish at QoS 1, the server is killed with SIGKILL in the
//! middle, restarted, and what it had acknowledged is compared with what it stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::common::{Api, Report, now_ms};
use crate::load::{ConnectSpec, Counters, Schedule, connect, publish_loop, qos};
use crate::scenarios::{ApiOpts, LoadOpts, values_payload};

/// Options of the crash scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CrashOpts {
    /// Seconds of publishing before the SIGKILL.
    #[arg(long, default_value_t = 10)]
    pub(crate) kill_after: u64,
    /// Shell command that starts the server again on the same data.
    #[arg(long)]
    pub(crate) restart_cmd: String,
}

pub(crate) async fn crash(
    load: LoadOpts,
    api_opts: ApiOpts,
    crash: CrashOpts,
) -> anyhow::Result<Report> {
    let pid = load.server_pid.context("--server-pid is required")?;
    let mut report = Report::new(
        "crash (SIGKILL during QoS 1 ingest)",
        json!({"devices": load.devices, "points": load.points, "rate": load.rate, "kill_after_s": crash.kill_after}),
    );
    let api = Api::login(&api_opts.api, &api_opts.email, &api_opts.password).await?;
    let bar = crate::common::progress(load.devices as u64, "provisioning");
    let devices = api
        .create_devices(&format!("crash{}", now_ms()), load.devices, 32, &bar)
        .await?;
    bar.finish_and_clear();

    // One counter set per device, so acknowledged messages can be compared per device.
    let stop = Arc::new(AtomicBool::new(false));
    let period = Duration::from_secs_f64(load.devices as f64 / load.rate.max(1) as f64);
    let t_start = now_ms();
    let mut per_device = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let counters = Arc::new(Counters::default());
        let spec = ConnectSpec {
            addr: load.mqtt,
            client_id: format!("mqtt_{}", d.number),
            credentials: Some((d.username.clone(), d.password.clone())),
            latency: None,
        };
        let client = Arc::new(connect(spec, counters.clone()).await?);
        let schedule = Schedule {
            qos: qos(1),
            period,
            offset: period.mul_f64(i as f64 / devices.len() as f64),
            stop: stop.clone(),
            counters: counters.clone(),
            probe: None,
        };
        let points = load.points;
        tokio::spawn(publish_loop(
            client,
            "devices/telemetry".into(),
            schedule,
            move |c, seq| {
                let ts = now_ms().max(c.last_ts.load(Ordering::Relaxed) + 1);
                c.last_ts.store(ts, Ordering::Relaxed);
                values_payload(ts, points, seq)
            },
        ));
        per_device.push(counters);
    }
    tokio::time::sleep(Duration::from_secs(crash.kill_after)).await;
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    let killed_at = Instant::now();
    // Acknowledgements still in flight at the kill are counted; then stop the devices.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<u64> = per_device
        .iter()
        .map(|c| c.acked.load(Ordering::Relaxed))
        .collect();
    let sent: u64 = per_device
        .iter()
        .map(|c| c.sent.load(Ordering::Relaxed))
        .sum();

    std::process::Command::new("sh")
        .args(["-c", &format!("{} &", crash.restart_cmd)])
        .status()?;
    let mut api = None;
    // Up to 10 minutes: the node answers only once its write-ahead log has replayed
    // (its /readyz says how far it is meanwhile).
    for _ in 0..6000 {
        if let Ok(a) = Api::login(&api_opts.api, &api_opts.email, &api_opts.password).await {
            api = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let api = api.context("the server did not come back")?;
    report.add("restart time", killed_at.elapsed().as_secs_f64(), "s");
    let t_end = now_ms();
    let mut lost_acked = 0u64;
    let mut stored_msgs = 0u64;
    for (d, acked) in devices.iter().zip(&acked) {
        let stored = api.count_points(&d.id, t_start, t_end).await? / load.points as u64;
        stored_msgs += stored;
        lost_acked += acked.saturating_sub(stored);
    }
    let acked_total: u64 = acked.iter().sum();
    report.add("published", sent as f64, "messages");
    report.add(
        "acknowledged before the kill",
        acked_total as f64,
        "messages",
    );
    report.add("stored after restart", stored_msgs as f64, "messages");
    report.add("acknowledged but lost", lost_acked as f64, "messages");
    report.add(
        "acknowledged but lost",
        100.0 * lost_acked as f64 / acked_total.max(1) as f64,
        "% of acknowledged",
    );
    Ok(report)
}

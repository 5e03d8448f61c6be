//! Idle authenticated connections: how many one node holds, how fast they connect,
//! and the server's memory per connection. Uses bare TCP sockets with an encoded
//! CONNECT (rumqttc's codec) so the load generator itself stays small per connection.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{
    Api, BenchDevice, Latency, Report, ServerProbe, now_ms, progress, sleep_until,
};
use crate::scenarios::ApiOpts;

/// Options of the connections scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ConnOpts {
    /// MQTT port of the server under test (connections spread over 127.0.0.1..N).
    #[arg(long, default_value_t = 1883)]
    pub(crate) port: u16,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) connections: usize,
    /// Distinct loopback destination addresses (each gives ~28k ephemeral ports).
    #[arg(long, default_value_t = 8)]
    pub(crate) addresses: u8,
    /// New connections per second.
    #[arg(long, default_value_t = 5000)]
    pub(crate) connect_rate: u64,
    /// Seconds to hold the connections open before measuring memory.
    #[arg(long, default_value_t = 10)]
    pub(crate) hold: u64,
    /// Seconds one connection may take from its TCP connect to its CONNACK before it
    /// counts as failed (a SYN dropped by a full accept queue is retried after 1, 2,
    /// 4... s, so without a bound a few stragglers decide the whole run's duration).
    #[arg(long, default_value_t = 15)]
    pub(crate) connect_timeout: u64,
    /// PID of the server process.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// Any MQTT broker that lets these clients in without provisioning (e.g. a
    /// Mosquitto with `allow_anonymous true`): no devices are created through the
    /// platform's API; each connection sends a made-up username and password.
    #[arg(long)]
    pub(crate) raw_broker: bool,
}

async fn open(addr: SocketAddr, device: &BenchDevice) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut connect = rumqttc::Connect::new(format!("mqtt_{}", device.number));
    connect.keep_alive = 600;
    connect.set_login(device.username.clone(), device.password.clone());
    let mut buf = BytesMut::new();
    connect
        .write(&mut buf)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    stream.write_all(&buf).await?;
    let mut ack = [0u8; 4];
    stream.read_exact(&mut ack).await?;
    anyhow::ensure!(ack[0] == 0x20 && ack[3] == 0, "CONNACK refused: {ack:?}");
    Ok(stream)
}

pub(crate) async fn connections(opts: ConnOpts, api_opts: ApiOpts) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "connections",
        json!({"connections": opts.connections, "connect_rate": opts.connect_rate}),
    );
    let run = now_ms();
    let devices = if opts.raw_broker {
        (0..opts.connections)
            .map(|i| BenchDevice {
                id: String::new(),
                number: format!("raw{run}-{i}"),
                username: format!("raw{i}"),
                password: "raw".into(),
            })
            .collect()
    } else {
        let api = Api::login(&api_opts.api, &api_opts.email, &api_opts.password).await?;
        let bar = progress(opts.connections as u64, "provisioning");
        let devices = api
            .create_devices(&format!("conn{run}"), opts.connections, 64, &bar)
            .await?;
        bar.finish_and_clear();
        devices
    };
    let probe = ServerProbe::new(opts.server_pid);
    let rss_before = probe.rss_bytes();

    let failed = Arc::new(AtomicU64::new(0));
    let bar = progress(opts.connections as u64, "connecting");
    let start = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / opts.connect_rate.max(1) as f64);
    let timeout = Duration::from_secs(opts.connect_timeout.max(1));
    let latency = Arc::new(Latency::new());
    // When the last successful CONNACK arrived (µs after the start).
    let last_ok = Arc::new(AtomicU64::new(0));
    let streams: Vec<Option<TcpStream>> = futures_util::stream::iter(devices.iter().enumerate())
        .map(|(i, d)| {
            let addr = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(
                    127,
                    0,
                    0,
                    1 + (i % opts.addresses.max(1) as usize) as u8,
                )),
                opts.port,
            );
            let (failed, latency, last_ok) = (failed.clone(), latency.clone(), last_ok.clone());
            async move {
                sleep_until(start + gap * i as u32).await;
                let began = Instant::now();
                match tokio::time::timeout(timeout, open(addr, d)).await {
                    Ok(Ok(s)) => {
                        latency.record_us(began.elapsed().as_micros() as u64);
                        last_ok.fetch_max(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                        Some(s)
                    }
                    Ok(Err(_)) | Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                }
            }
        })
        .buffer_unordered(8192)
        .inspect(|_| bar.inc(1))
        .collect()
        .await;
    let secs = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let open_count = streams.iter().filter(|s| s.is_some()).count();
    tokio::time::sleep(Duration::from_secs(opts.hold)).await;
    report.add("connected", open_count as f64, "connections");
    report.add(
        "failed",
        failed.load(Ordering::Relaxed) as f64,
        "connections",
    );
    // Connected over the time until the last of them was connected (failures that
    // ran into the timeout afterwards do not stretch it).
    let connect_secs = (last_ok.load(Ordering::Relaxed) as f64 / 1e6).max(1e-3);
    report.add("connect rate", open_count as f64 / connect_secs, "conn/s");
    report.add("connect phase incl. failures", secs, "s");
    let (_, p50, p95, p99) = latency.summary();
    report.add("connect-to-CONNACK p50", p50, "ms");
    report.add("connect-to-CONNACK p95", p95, "ms");
    report.add("connect-to-CONNACK p99", p99, "ms");
    if let (Some(a), Some(b)) = (rss_before, probe.rss_bytes()) {
        report.add("server RSS", b as f64 / 1048576.0, "MiB");
        report.add(
            "server memory per connection",
            b.saturating_sub(a) as f64 / open_count.max(1) as f64 / 1024.0,
            "KiB",
        );
    }
    drop(streams);
    Ok(report)
}

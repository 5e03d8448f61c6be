//! Template: an MQTT broker that stores what devices send in PostgreSQL, inside your
//! own `main`: no REST API, no web console, no Redis.
//!
//! ```text
//! TP_PG_URL=postgres://postgres@127.0.0.1:5432/postgres?schema=mqtt_demo \
//!   cargo run -p tp-example-mqtt-to-postgres
//! mosquitto_pub -p 1884 -u <username> -P <password> -t devices/telemetry -m '{"temp":21.5}'
//! ```
//!
//! It provisions one device in a new tenant and prints its credentials, serves MQTT
//! on `TP_MQTT_LISTEN` (default `127.0.0.1:1884`) and drains on Ctrl-C: everything
//! acknowledged is in PostgreSQL before it exits. `--once` stops right after start.

use std::sync::Arc;
use std::time::Duration;

use tp_broker::{BrokerConfig, BrokerDeps, EmbeddedBroker};
use tp_core::{Device, Tenant, TenantId, now_ms};
use tp_storage::writer::{BatchWriter, WriterConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let pg = std::env::var("TP_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres?schema=mqtt_demo".into());
    let listen = std::env::var("TP_MQTT_LISTEN").unwrap_or_else(|_| "127.0.0.1:1884".into());

    // Devices and their credentials, and the time-series tables, both in PostgreSQL.
    let metadata = tp_storage::open_metadata(&pg).await?;
    let timeseries = tp_storage::open_timeseries(&pg).await?;
    // The broker writes through tp-core's IngestSink; the batching writer is one.
    let writer = BatchWriter::spawn(timeseries.clone(), WriterConfig::default());
    let cache = tp_storage::open_cache("memory://").await?;

    let tenant = Tenant {
        id: TenantId::new(),
        name: "mqtt-demo".into(),
        created_at: now_ms(),
    };
    metadata.create_tenant(&tenant).await?;
    let (device, password) = Device::new(tenant.id, "demo sensor".into(), None);
    metadata.create_device(&device).await?;

    let config = BrokerConfig {
        listen: listen.parse()?,
        ..Default::default()
    };
    let deps = BrokerDeps {
        metadata,
        cache,
        writer: Arc::new(writer.clone()),
    };
    let broker = EmbeddedBroker::start(&config, deps).await?;
    println!("MQTT on {}", broker.local_addr());
    println!(
        "device {}: username {} password {password}",
        device.device_number, device.credentials.username
    );

    if !std::env::args().any(|a| a == "--once") {
        tp_broker::shutdown_signal().await;
    }
    // Refuse new publishes, store everything acknowledged, then stop the writer.
    let report = broker.drain(Duration::from_secs(30)).await?;
    writer.shutdown().await?;
    let latest = timeseries.latest(device.id, None).await?;
    println!(
        "stored {} accepted message(s); the device's latest values: {latest:?}",
        report.accepted
    );
    Ok(())
}

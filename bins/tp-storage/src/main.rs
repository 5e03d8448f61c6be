//! `tp-storage`: the time-series storage role of a cluster with an external MQTT
//! broker (VerneMQ, EMQX, Mosquitto). Subscribes with a shared subscription, stores
//! through the batching writer and acknowledges only what the store committed; run
//! several with the same `--share-group` to split the load. See
//! `tp_broker::external` for where device identity comes from and the trust it
//! assumes, and `tp_broker::hooks` for the broker side.

use anyhow::Context;
use clap::Parser;
use tp_broker::external::{ConsumerDeps, ExternalConfig, ExternalConsumer};
use tp_broker::shutdown_signal;
use tp_storage::writer::{BatchWriter, WriterConfig};

/// Consume device topics from an external MQTT cluster and write the time-series store.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// External broker, host:port (mqtt:// or tcp:// accepted).
    #[arg(long, env = "TP_STORAGE_BROKER", default_value = "127.0.0.1:1883")]
    broker: String,
    /// MQTT client id; unique and stable per instance (the broker keeps its session).
    #[arg(long, env = "TP_STORAGE_CLIENT_ID")]
    client_id: Option<String>,
    /// Service account user name (the hooks' `service_username`).
    #[arg(long, env = "TP_STORAGE_USERNAME")]
    username: Option<String>,
    /// Service account password (prefer the environment variable).
    #[arg(long, env = "TP_STORAGE_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Shared-subscription group; instances of one group split the messages.
    #[arg(long, env = "TP_STORAGE_SHARE_GROUP", default_value = "tp-storage")]
    share_group: String,
    /// Also consume ThingsPanel's broker-wrapped `devices/...` topics
    /// ({"device_id","values"}); only when the broker wraps every device publish.
    #[arg(long, env = "TP_STORAGE_THINGSPANEL_WRAPPED")]
    thingspanel_wrapped: bool,
    /// Metadata store URL (devices, attributes, command log).
    #[arg(long, env = "TP_STORAGE_METADATA")]
    metadata: String,
    /// Time-series store URL (postgres://, taos+ws://, sqlite://).
    #[arg(long, env = "TP_STORAGE_TIMESERIES")]
    timeseries: String,
    /// Commit (flush, then acknowledge) at the latest this long after a message (ms).
    #[arg(long, env = "TP_STORAGE_COMMIT_INTERVAL_MS", default_value_t = 50)]
    commit_interval_ms: u64,
}

impl std::fmt::Debug for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cli")
            .field("broker", &self.broker)
            .field("share_group", &self.share_group)
            .finish_non_exhaustive()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttc=warn".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();

    let metadata = tp_storage::open_metadata(&cli.metadata)
        .await
        .context("--metadata")?;
    let timeseries = tp_storage::open_timeseries(&cli.timeseries)
        .await
        .context("--timeseries")?;
    let writer = BatchWriter::spawn(timeseries, WriterConfig::default());
    let defaults = ExternalConfig::default();
    let config = ExternalConfig {
        broker: cli.broker,
        client_id: cli.client_id.unwrap_or(defaults.client_id),
        username: cli.username,
        password: cli.password,
        share_group: cli.share_group,
        thingspanel_wrapped: cli.thingspanel_wrapped,
        commit_interval_ms: cli.commit_interval_ms,
        ..defaults
    };
    let consumer = ExternalConsumer::start(
        &config,
        ConsumerDeps {
            metadata,
            writer: std::sync::Arc::new(writer.clone()),
        },
    )?;
    tracing::info!(broker = %config.broker, client_id = %config.client_id,
        share_group = %config.share_group, "tp-storage consuming");

    shutdown_signal().await;
    tracing::info!("stopping: committing and acknowledging what was received");
    let stats = consumer.stats();
    consumer.shutdown().await;
    writer
        .shutdown()
        .await
        .context("final flush of the time-series writer")?;
    tracing::info!(?stats, "stopped");
    Ok(())
}

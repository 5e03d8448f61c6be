//! `tp-broker`: the device-access role of a cluster. MQTT (and CoAP, the HTTP device
//! API) listeners, authentication, ingest into the shared stores and the rule
//! engine's uplink side; its HTTP port serves `/healthz`, `/readyz` and `/metrics`
//! for the load balancer (plus the device API and, with `hooks.secret`, the hooks),
//! not the REST API. Run several behind HAProxy/Nginx in TCP mode, all on the same
//! PostgreSQL and Redis: the REST API (`tp-api` nodes) reaches their devices through
//! the Redis backplane. Same configuration as `thingspanel` (`print-config`); the
//! role is fixed to `["broker"]`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tp_api::config::PlatformConfig;
use tp_api::platform::Platform;
use tp_api::platform::shutdown_signal;

/// Broker node of a ThingsPanel-compatible cluster.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// TOML config file (see `print-config` and deploy/tp-broker.toml).
    #[arg(long, env = "TP_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of the write-ahead log and generated secrets (one per node).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Health/metrics (and device API) listen address, e.g. 0.0.0.0:8081.
    #[arg(long)]
    http_listen: Option<String>,
    /// MQTT listen address, e.g. 0.0.0.0:1883.
    #[arg(long)]
    mqtt_listen: Option<String>,
    /// This node's id on the cluster backplane (random when unset).
    #[arg(long, env = "TP_NODE_ID")]
    node_id: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the default configuration as TOML.
    PrintConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::PrintConfig) = cli.command {
        print!("{}", PlatformConfig::default_toml());
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=warn".into()),
        )
        .init();

    let mut overrides = vec![("node.roles", r#"["broker"]"#.to_owned())];
    let flags = [
        ("data_dir", cli.data_dir.map(|d| d.display().to_string())),
        ("http.listen", cli.http_listen),
        ("mqtt.listen", cli.mqtt_listen),
        ("cluster.node_id", cli.node_id),
    ];
    overrides.extend(flags.into_iter().filter_map(|(k, v)| Some((k, v?))));
    let config = PlatformConfig::load(cli.config.as_deref(), &overrides)?;
    if config.storage.metadata.is_empty() {
        tracing::warn!(
            "storage.metadata is unset: this node uses its own SQLite files, which other nodes do not see"
        );
    }
    let platform = Platform::start(config)
        .await
        .context("cannot start the broker node")?;

    println!("tp-broker node is running");
    println!("  MQTT      mqtt://{}", platform.mqtt_addr());
    println!("  health    {}/readyz", platform.http_url());
    println!(
        "  backplane {}",
        match platform.backplane() {
            Some(bp) => format!("on (node {})", bp.node_id()),
            None => "off (downlink only from this node)".to_owned(),
        }
    );

    shutdown_signal().await;
    println!("Shutting down: storing every acknowledged message...");
    let report = platform.shutdown().await?;
    println!(
        "Stopped ({} messages accepted, {} processed).",
        report.accepted, report.consumed
    );
    Ok(())
}

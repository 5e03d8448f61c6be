//! `tp-broker`: the device-access role of a cluster. MQTT (and CoAP, the HTTP device
//! API) listeners, authentication, ingest into the shared stores and the rule
//! engine's uplink side; its HTTP port serves `/healthz`, `/readyz` and `/metrics`
//! for the load balancer (plus the device API and, with `hooks.secret`, the hooks),
//! not the REST API. Run several behind HAProxy/Nginx in TCP mode, all on the same
//! PostgreSQL and Redis: the REST API (`tp-api` nodes) reaches their devices through
//! the Redis backplane. Same configuration as `thingspanel` (`print-config`); the
//! role is fixed to `["broker"]`.

use anyhow::Context;
use clap::Parser;
use tp_node::cli::{NodeArgs, init_tracing, serve_until_signal};
use tp_node::{Platform, Role};

/// Broker node of a ThingsPanel-compatible cluster.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.node.run_command().await? {
        return Ok(());
    }
    let config = cli.node.load(Some(&[Role::Broker]))?;
    init_tracing(config.log.format);
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
    serve_until_signal(platform).await?;
    Ok(())
}

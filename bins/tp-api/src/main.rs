//! `tp-api`: the REST API role of a cluster. The REST API, OpenAPI docs and web
//! console on the shared PostgreSQL and Redis, with no MQTT listener: downlink goes
//! through the Redis backplane to the `tp-broker` node holding the device's
//! connection, so `storage.cache` must be a `redis://` URL. Run several behind
//! HAProxy/Nginx (HTTP mode, `/readyz` health checks) with one `auth.jwt_secret`,
//! so a token from one node is valid on all. Same configuration as `thingspanel`
//! (`print-config`); the role is fixed to `["api"]`.

use anyhow::Context;
use clap::Parser;
use tp_node::cli::{NodeArgs, init_tracing, serve_until_signal, sign_in_hint};
use tp_node::{Platform, Role};

/// REST API node of a ThingsPanel-compatible cluster.
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
    let config = cli.node.load(Some(&[Role::Api]))?;
    init_tracing(config.log.format);
    if config.auth.jwt_secret.is_none() {
        tracing::warn!(
            "auth.jwt_secret is unset: tokens issued here are not valid on other API nodes"
        );
    }
    let platform = Platform::start(config)
        .await
        .context("cannot start the API node")?;

    let api = platform.http_url();
    println!("tp-api node is running");
    println!("  REST API  {api}/api/v1   (docs: {api}/docs)");
    if let Some(bp) = platform.backplane() {
        println!("  backplane on (node {})", bp.node_id());
    }
    println!("  {}", sign_in_hint(&platform));
    serve_until_signal(platform).await?;
    Ok(())
}

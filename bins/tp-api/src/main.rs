//! `tp-api`: the REST API role of a cluster. The REST API, OpenAPI docs and web
//! console on the shared PostgreSQL and Redis, with no MQTT listener: downlink goes
//! through the Redis backplane to the `tp-broker` node holding the device's
//! connection, so `storage.cache` must be a `redis://` URL. Run several behind
//! HAProxy/Nginx (HTTP mode, `/readyz` health checks) with one `auth.jwt_secret`,
//! so a token from one node is valid on all. Same configuration as `thingspanel`
//! (`print-config`); the role is fixed to `["api"]`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tp_api::config::PlatformConfig;
use tp_api::platform::Platform;
use tp_api::platform::shutdown_signal;

/// REST API node of a ThingsPanel-compatible cluster.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// TOML config file (see `print-config` and deploy/tp-api.toml).
    #[arg(long, env = "TP_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of generated secrets (set `auth.jwt_secret` in a cluster instead).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// REST API listen address, e.g. 0.0.0.0:8080.
    #[arg(long)]
    http_listen: Option<String>,
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
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let mut overrides = vec![("node.roles", r#"["api"]"#.to_owned())];
    let flags = [
        ("data_dir", cli.data_dir.map(|d| d.display().to_string())),
        ("http.listen", cli.http_listen),
        ("cluster.node_id", cli.node_id),
    ];
    overrides.extend(flags.into_iter().filter_map(|(k, v)| Some((k, v?))));
    let config = PlatformConfig::load(cli.config.as_deref(), &overrides)?;
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
    if let Some(admin) = platform.bootstrap_admin() {
        match &admin.generated_password {
            Some(pw) => println!(
                "  Log in as {} with the generated password {pw} (shown once)",
                admin.email
            ),
            None => println!(
                "  Log in as {} with the password from TP_ADMIN_PASSWORD",
                admin.email
            ),
        }
    }

    shutdown_signal().await;
    println!("Shutting down...");
    platform.shutdown().await?;
    println!("Stopped.");
    Ok(())
}

//! `thingspanel`: the all-in-one node (MQTT broker + REST API + storage) on embedded
//! defaults. See `thingspanel --help` and `thingspanel print-config`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tp_api::config::PlatformConfig;
use tp_api::platform::Platform;
use tp_api::platform::shutdown_signal;

/// ThingsPanel-compatible IoT platform node.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// TOML config file (see `print-config`).
    #[arg(long, env = "TP_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the embedded databases and generated secrets.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// REST API listen address, e.g. 0.0.0.0:8080.
    #[arg(long)]
    http_listen: Option<String>,
    /// MQTT listen address, e.g. 0.0.0.0:1883.
    #[arg(long)]
    mqtt_listen: Option<String>,
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

    let mut overrides = Vec::new();
    if let Some(dir) = &cli.data_dir {
        overrides.push(("data_dir", dir.display().to_string()));
    }
    if let Some(addr) = cli.http_listen {
        overrides.push(("http.listen", addr));
    }
    if let Some(addr) = cli.mqtt_listen {
        overrides.push(("mqtt.listen", addr));
    }
    let config = PlatformConfig::load(cli.config.as_deref(), &overrides)?;
    let data_dir = config.data_dir.clone();
    let platform = Platform::start(config)
        .await
        .context("cannot start the node")?;

    println!(
        "ThingsPanel node is running (data in {})",
        data_dir.display()
    );
    let api = platform.http_url();
    println!("  REST API  {api}/api/v1   (docs: {api}/docs)");
    println!("  MQTT      mqtt://{}", platform.mqtt_addr());
    if let Some(addr) = platform.broker().v5_addr() {
        println!("  MQTT 5    mqtt://{addr}");
    }
    if let Some(addr) = platform.broker().ws_addr() {
        println!("  MQTT/WS   ws://{addr}/mqtt");
    }
    if let Some(addr) = platform.broker().tls_addr() {
        println!("  MQTTS     mqtts://{addr}");
    }
    if let Some(addr) = platform.broker().tls_v5_addr() {
        println!("  MQTTS 5   mqtts://{addr}");
    }
    if let Some(addr) = platform.broker().wss_addr() {
        println!("  MQTT/WSS  wss://{addr}/mqtt");
    }
    match platform.bootstrap_admin() {
        Some(admin) => match &admin.generated_password {
            Some(pw) => println!(
                "  Log in as {} with the generated password {pw} (shown once)",
                admin.email
            ),
            None => println!(
                "  Log in as {} with the password from TP_ADMIN_PASSWORD",
                admin.email
            ),
        },
        None => println!("  Log in with an existing user (POST /api/v1/auth/login)"),
    }

    shutdown_signal().await;
    println!("Shutting down: storing every acknowledged message...");
    let report = platform.shutdown().await?;
    println!(
        "Stopped ({} messages accepted, {} processed).",
        report.accepted, report.consumed
    );
    Ok(())
}

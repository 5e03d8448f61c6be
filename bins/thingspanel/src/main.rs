//! `thingspanel`: the all-in-one node (MQTT broker + REST API + storage) on embedded
//! defaults. See `thingspanel --help` and `thingspanel print-config`.

use anyhow::Context;
use clap::Parser;
use tp_node::Platform;
use tp_node::cli::{NodeArgs, init_tracing, serve_until_signal, sign_in_hint};

/// ThingsPanel-compatible IoT platform node.
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
    let config = cli.node.load(None)?;
    init_tracing(config.log.format);
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
    let broker = platform.broker();
    let extra = [
        ("MQTT 5   ", "mqtt", broker.v5_addr(), ""),
        ("MQTT/WS  ", "ws", broker.ws_addr(), "/mqtt"),
        ("MQTTS    ", "mqtts", broker.tls_addr(), ""),
        ("MQTTS 5  ", "mqtts", broker.tls_v5_addr(), ""),
        ("MQTT/WSS ", "wss", broker.wss_addr(), "/mqtt"),
    ];
    for (label, scheme, addr, path) in extra {
        if let Some(addr) = addr {
            println!("  {label} {scheme}://{addr}{path}");
        }
    }
    println!("  {}", sign_in_hint(&platform));
    serve_until_signal(platform).await?;
    Ok(())
}

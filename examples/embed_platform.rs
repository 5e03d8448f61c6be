//! Template: run the whole platform (MQTT broker + REST API + storage) from your own
//! `main`, with your own configuration and alongside your own code.
//!
//! `cargo run -p tp-examples --example embed_platform` serves on free loopback ports with
//! SQLite files in a temporary directory, then stops on Ctrl-C (or at once with `--once`).

use tp_node::config::PlatformConfig;
use tp_node::platform::Platform;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("info,rumqttd=warn")
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();

    let data_dir = tempfile_dir()?;
    // Start from the defaults (or PlatformConfig::load for file + env layering) and
    // override what your service needs.
    let mut config = PlatformConfig {
        data_dir: data_dir.clone(),
        ..Default::default()
    };
    config.http.listen = "127.0.0.1:0".parse()?;
    config.mqtt.listen = "127.0.0.1:0".parse()?;
    config.auth.admin_email = Some("ops@example.com".into());
    config.auth.admin_password = Some("change-me-please".into());

    let platform = Platform::start(config).await?;
    println!(
        "REST API on http://{} (docs at /docs)",
        platform.http_addr()
    );
    println!("MQTT on {}", platform.mqtt_addr());
    println!("log in as ops@example.com / change-me-please");

    // Your own code can use the same stores the platform uses.
    let tenants = platform.metadata().list_tenants(Default::default()).await?;
    println!("{} tenant(s)", tenants.total);

    if !std::env::args().any(|a| a == "--once") {
        tokio::signal::ctrl_c().await?;
    }
    let report = platform.shutdown().await?;
    println!("stopped after storing {} messages", report.consumed);
    std::fs::remove_dir_all(data_dir)?;
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("tp-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

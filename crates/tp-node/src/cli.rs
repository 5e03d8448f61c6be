//! The command line every node binary shares: the same flags and `print-config`,
//! layered over the TOML file and `TP_*` environment ([`PlatformConfig::load`]), with
//! the binary's role fixed on top.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::config::{ConfigError, LogFormat, PlatformConfig, Role};
use crate::platform::{Platform, PlatformError, shutdown_signal};

/// Flags of a node binary (`#[command(flatten)]` them into the binary's parser).
#[derive(Args, Debug, Clone, Default)]
pub struct NodeArgs {
    /// TOML config file (see `print-config` and deploy/*.toml).
    #[arg(long, env = "TP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the embedded databases, the write-ahead log and generated secrets.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address (REST API, or health/metrics on a broker node), e.g. 0.0.0.0:8080.
    #[arg(long)]
    pub http_listen: Option<String>,
    /// MQTT listen address, e.g. 0.0.0.0:1883 (nodes with the broker role).
    #[arg(long)]
    pub mqtt_listen: Option<String>,
    /// This node's id on the cluster backplane (random when unset).
    #[arg(long, env = "TP_NODE_ID")]
    pub node_id: Option<String>,
    #[command(subcommand)]
    /// What to do instead of running the node.
    pub command: Option<NodeCommand>,
}

/// Subcommands of a node binary.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum NodeCommand {
    /// Print the default configuration as TOML.
    PrintConfig,
}

impl NodeArgs {
    /// The configuration these flags select: defaults ← file ← `TP_*` env ← flags,
    /// with `roles` forced when given (a role binary), then validated.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, key and problem.
    pub fn load(&self, roles: Option<&[Role]>) -> Result<PlatformConfig, ConfigError> {
        let mut overrides = Vec::new();
        if let Some(roles) = roles {
            let names: Vec<String> = roles
                .iter()
                .map(|r| format!("\"{}\"", r.as_str()))
                .collect();
            overrides.push(("node.roles", format!("[{}]", names.join(","))));
        }
        let flags = [
            (
                "data_dir",
                self.data_dir.as_ref().map(|d| d.display().to_string()),
            ),
            ("http.listen", self.http_listen.clone()),
            ("mqtt.listen", self.mqtt_listen.clone()),
            ("cluster.node_id", self.node_id.clone()),
        ];
        overrides.extend(flags.into_iter().filter_map(|(k, v)| Some((k, v?))));
        PlatformConfig::load(self.config.as_deref(), &overrides)
    }

    /// Handles a subcommand; `true` when one ran and the binary should exit.
    pub fn run_command(&self) -> bool {
        match self.command {
            Some(NodeCommand::PrintConfig) => {
                print!("{}", PlatformConfig::default_toml());
                true
            }
            None => false,
        }
    }
}

/// Logs to stdout, filtered by `RUST_LOG` (default `info`): plain text with colour
/// codes only when stdout is a terminal (a log file or journal gets none), or one
/// JSON object per line with [`LogFormat::Json`] (`log.format = "json"`,
/// `TP_LOG__FORMAT=json`).
pub fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().with_ansi(false).init(),
        LogFormat::Text => builder.with_ansi(std::io::stdout().is_terminal()).init(),
    }
}

/// The sign-in line a node prints at start (the generated admin password appears
/// only here, once).
pub fn sign_in_hint(platform: &Platform) -> String {
    match platform.bootstrap_admin() {
        Some(admin) => match &admin.generated_password {
            Some(pw) => format!(
                "Log in as {} with the generated password {pw} (shown once)",
                admin.email
            ),
            None => format!(
                "Log in as {} with the password from TP_ADMIN_PASSWORD",
                admin.email
            ),
        },
        None => "Log in with an existing user (POST /api/v1/auth/login)".to_owned(),
    }
}

/// Waits for SIGINT/SIGTERM, then drains the node: every acknowledged message is
/// stored before this returns.
///
/// # Errors
/// [`PlatformError`] when the drain could not store everything.
pub async fn serve_until_signal(platform: Platform) -> Result<(), PlatformError> {
    shutdown_signal().await;
    println!("Shutting down: storing every acknowledged message...");
    let report = platform.shutdown().await?;
    println!(
        "Stopped ({} messages accepted, {} processed).",
        report.accepted, report.consumed
    );
    Ok(())
}

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
    #[arg(long, env = "TP_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Directory for the embedded databases, the write-ahead log and generated secrets.
    #[arg(long, global = true)]
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
    /// Import the time series an older version kept in SQLite
    /// (`<data_dir>/timeseries.db`) into the embedded engine (`<data_dir>/timeseries/`).
    /// A node on the default storage does this by itself on start; this runs it alone
    /// (with the node stopped). Idempotent and resumable; the SQLite file is left as is.
    MigrateTimeseries {
        /// The SQLite file to import (default `<data_dir>/timeseries.db`).
        #[arg(long)]
        from: Option<PathBuf>,
    },
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

    /// Handles a subcommand; `Ok(true)` when one ran and the binary should exit.
    ///
    /// # Errors
    /// [`PlatformError`] when the subcommand failed (configuration, storage).
    pub async fn run_command(&self) -> Result<bool, PlatformError> {
        match &self.command {
            Some(NodeCommand::PrintConfig) => {
                print!("{}", PlatformConfig::default_toml());
                Ok(true)
            }
            Some(NodeCommand::MigrateTimeseries { from }) => {
                let config = self.load(None)?;
                let report = migrate_timeseries(&config, from.as_deref()).await?;
                if report.already_done {
                    println!("nothing to do: the time series were imported before");
                } else {
                    println!(
                        "imported {} series, {} points and {} events into {}",
                        report.series,
                        report.points,
                        report.events,
                        config.timeseries_url()
                    );
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// `migrate-timeseries`: imports the SQLite time-series file `from` (default
/// `<data_dir>/timeseries.db`) into the configured embedded engine.
///
/// # Errors
/// [`PlatformError::Setting`] when the time-series store is not the embedded engine,
/// the file does not exist, or the import fails (it can be run again and resumes).
pub async fn migrate_timeseries(
    config: &PlatformConfig,
    from: Option<&std::path::Path>,
) -> Result<tp_storage::migrate::ImportReport, PlatformError> {
    let url = config.timeseries_url();
    let (target, options) =
        tp_storage::fjall::parse_url(&url, "storage.timeseries").map_err(|_| {
            PlatformError::Setting {
                setting: "storage.timeseries",
                message: format!(
                    "migrate-timeseries imports into the embedded engine (fjall://..), \
                     but the time-series store is {url:?}"
                ),
            }
        })?;
    let source = from.map_or_else(
        || config.data_dir.join(crate::config::LEGACY_TIMESERIES_FILE),
        std::path::Path::to_path_buf,
    );
    if !source.exists() {
        return Err(PlatformError::Setting {
            setting: "--from / --data-dir",
            message: format!("{} does not exist", source.display()),
        });
    }
    let store = tp_storage::fjall::open(target, options)
        .await
        .map_err(|e| PlatformError::Setting {
            setting: "storage.timeseries",
            message: format!("{e} (is a node running on this data dir? stop it first)"),
        })?;
    crate::platform::import_legacy_timeseries(&source, &store).await
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

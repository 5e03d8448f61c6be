//! `tp-bench`: load generator for the platform and, side by side, any MQTT broker.
//!
//! Scenarios: `ingest` (devices publish through the platform; stored points are
//! counted in its store), `raw` (publishers -> broker -> subscribers, for Mosquitto or
//! the platform's broker), `connections` (idle authenticated devices), `soak`
//! (memory under a long mixed load) and `api`
//! (latest-value and one-day-history queries). Each prints a markdown table and JSON.

mod common;
mod conns;
mod crash;
mod load;
mod probe;
mod scenarios;
mod soak;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Write the JSON result here instead of stdout.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Devices publish telemetry through the platform; verified by counting in its store.
    Ingest {
        #[command(flatten)]
        load: scenarios::LoadOpts,
        #[command(flatten)]
        api: scenarios::ApiOpts,
    },
    /// The same publish load against any MQTT broker, received by subscribers.
    Raw {
        #[command(flatten)]
        load: scenarios::LoadOpts,
        #[command(flatten)]
        raw: scenarios::RawOpts,
    },
    /// As many idle authenticated device connections as asked for.
    Connections {
        #[command(flatten)]
        conns: conns::ConnOpts,
        #[command(flatten)]
        api: scenarios::ApiOpts,
    },
    /// SIGKILL the server during QoS 1 ingest, restart it, compare acknowledged with stored.
    Crash {
        #[command(flatten)]
        load: scenarios::LoadOpts,
        #[command(flatten)]
        api: scenarios::ApiOpts,
        #[command(flatten)]
        crash: crash::CrashOpts,
    },
    /// Hours-long mixed load (telemetry, attributes, events acknowledged on
    /// per-message topics) while the server's anonymous RSS is sampled.
    Soak {
        #[command(flatten)]
        soak: soak::SoakOpts,
        #[command(flatten)]
        api: scenarios::ApiOpts,
    },
    /// Latest-value queries under concurrency, and one day of 1 Hz data aggregated.
    Api {
        #[command(flatten)]
        query: scenarios::QueryOpts,
        #[command(flatten)]
        api: scenarios::ApiOpts,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = match cli.scenario {
        Scenario::Ingest { load, api } => scenarios::ingest(load, api).await?,
        Scenario::Raw { load, raw } => scenarios::raw(load, raw).await?,
        Scenario::Connections { conns, api } => conns::connections(conns, api).await?,
        Scenario::Crash { load, api, crash } => crash::crash(load, api, crash).await?,
        Scenario::Soak { soak, api } => soak::soak(soak, api).await?,
        Scenario::Api { query, api } => scenarios::api(query, api).await?,
    };
    report.emit(cli.json.as_deref())
}

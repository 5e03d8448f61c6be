//! Conformance suites: every backend of a trait runs all of them.
//!
//! Each suite is a set of `pub async fn case(store: &dyn Trait)` functions plus a
//! macro that stamps out one `#[tokio::test]` per case for a backend constructor, so
//! a new backend gets the whole suite with one line and nextest reports each case.
//! Cases create their own tenants/devices (fresh UUIDs), so they run in parallel on
//! one shared database.

pub mod access;
pub mod cache;
pub mod metadata;
pub mod rules;
pub mod timeseries;
pub mod transport;

/// The path of an external command-line tool the test drives (`mosquitto_pub`, ...),
/// or `None` to skip the test when it is not on `PATH`. With `TP_REQUIRE_SERVICES`
/// set (CI) a missing tool panics instead, naming the Debian `package` to install.
pub fn command_path(name: &str, package: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        let required =
            std::env::var_os("TP_REQUIRE_SERVICES").is_some_and(|v| !v.is_empty() && v != "0");
        assert!(
            !required,
            "{name} is required (TP_REQUIRE_SERVICES is set) but not on PATH (Debian package {package})"
        );
        eprintln!("skipping: {name} not found (Debian package {package})");
    }
    found
}

/// A mosquitto command-line client (`mosquitto_pub`, `mosquitto_sub`), or `None` to
/// skip the test; see [`command_path`].
pub fn mosquitto_client(name: &str) -> Option<std::path::PathBuf> {
    command_path(name, "mosquitto-clients")
}

/// Polls `check` every 20 ms until it holds, panicking with `what` after 30 s: tests
/// wait for a state to be reached, never for a fixed time (no timing assertion, and
/// a bug fails instead of hanging).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened within 30 s: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The URL of an external test service from `var`, or `None` to skip the test.
///
/// When `TP_REQUIRE_SERVICES` is set (CI), a missing variable panics instead, so a
/// misconfigured CI cannot go green by skipping.
pub fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var_os("TP_REQUIRE_SERVICES").is_some() => {
            panic!("{var} is not set but TP_REQUIRE_SERVICES is: the test needs this service")
        }
        _ => {
            eprintln!("skipping: {var} is not set");
            None
        }
    }
}

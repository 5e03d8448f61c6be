//! Conformance suites: every backend of a trait runs all of them.
//!
//! Each suite is a set of `pub async fn case(store: &dyn Trait)` functions plus a
//! macro that stamps out one `#[tokio::test]` per case for a backend constructor, so
//! a new backend gets the whole suite with one line and nextest reports each case.
//! Cases create their own tenants/devices (fresh UUIDs), so they run in parallel on
//! one shared database.
//!
//! Besides the suites, the helpers every crate's tests share: [`eventually`] (wait for
//! a state, never for a time), [`service_url`] and [`command_path`] (skip without an
//! external service or tool, fail instead under `TP_REQUIRE_SERVICES`), [`free_port`]
//! and [`tls::self_signed`].

pub mod access;
pub mod cache;
pub mod dashboard;
pub mod metadata;
pub mod ota;
pub mod rules;
pub mod script;
pub mod thing_model;
pub mod timeseries;
pub mod tls;
pub mod transport;
pub mod trends;

/// The path of an external command-line tool the test drives (`mosquitto_pub`, ...),
/// or `None` to skip the test when it is not on `PATH`. With `TP_REQUIRE_SERVICES`
/// set (CI) a missing tool panics instead, naming the Debian `package` to install.
pub fn command_path(name: &str, package: &str) -> Option<std::path::PathBuf> {
    command_path_any(&[name], package)
}

/// [`command_path`] for a tool installed under one of several names (`chromium`,
/// `chromium-browser`, ...): the first found on `PATH`, directory by directory.
pub fn command_path_any(names: &[&str], package: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file());
    if found.is_none() {
        let name = names.join(" or ");
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

/// How long [`eventually`] and [`eventually_ok`] wait before failing.
const EVENTUALLY: std::time::Duration = std::time::Duration::from_secs(30);

/// Polls `check` every 20 ms until it holds, panicking with `what` after 30 s: tests
/// wait for a state to be reached, never for a fixed time (no timing assertion, and
/// a bug fails instead of hanging).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll(what, || {
        let held = check();
        async move { if held.await { Ok(()) } else { Err(None) } }
    })
    .await;
}

/// [`eventually`] for a check that yields what it saw: polls `check` every 20 ms
/// until it returns `Ok`, and returns that value; after 30 s it panics with `what`
/// and the last `Err` (the state that was reached instead).
pub async fn eventually_ok<T, E, F, Fut>(what: &str, mut check: F) -> T
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    poll(what, || {
        let seen = check();
        async move { seen.await.map_err(|last| Some(format!("{last:?}"))) }
    })
    .await
}

/// The loop of [`eventually`] and [`eventually_ok`]: `Err` carries the last state
/// seen, if the check reports one.
async fn poll<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Option<String>>>,
{
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(last) => last,
        };
        if tokio::time::Instant::now() >= deadline {
            match last {
                Some(last) => panic!("never happened within 30 s: {what}; last: {last}"),
                None => panic!("never happened within 30 s: {what}"),
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A loopback TCP port that was free a moment ago (bound to port 0, then released),
/// for a child process to listen on. Something else can take it in between under
/// load: a caller starting a process on it retries on another port when the start
/// fails.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

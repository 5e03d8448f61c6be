//! Shared pieces: the platform's REST API, the server's resource usage, latency
//! histograms, progress display and the result report.

use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};

/// Wall-clock milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Wall-clock microseconds since the epoch.
pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A provisioned device.
#[derive(Debug, Clone)]
pub(crate) struct BenchDevice {
    pub(crate) id: String,
    pub(crate) number: String,
    pub(crate) username: String,
    pub(crate) password: String,
}

/// Logged-in client of the platform's REST API.
#[derive(Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    pub(crate) async fn login(base: &str, email: &str, password: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?;
        let res = http
            .post(format!("{base}/api/v1/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .with_context(|| format!("cannot reach {base}"))?;
        if !res.status().is_success() {
            bail!(
                "login failed: {} {}",
                res.status(),
                res.text().await.unwrap_or_default()
            );
        }
        let token = res.json::<Value>().await?["token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok(Self {
            http,
            base: base.to_owned(),
            token,
        })
    }

    /// Creates `count` devices named `{prefix}-{i}`, `concurrency` requests at a time.
    pub(crate) async fn create_devices(
        &self,
        prefix: &str,
        count: usize,
        concurrency: usize,
        progress: &indicatif::ProgressBar,
    ) -> anyhow::Result<Vec<BenchDevice>> {
        let results: Vec<anyhow::Result<BenchDevice>> = futures_util::stream::iter(0..count)
            .map(|i| {
                let api = self.clone();
                let number = format!("{prefix}-{i}");
                async move {
                    let res = api
                        .http
                        .post(format!("{}/api/v1/devices", api.base))
                        .bearer_auth(&api.token)
                        .json(&json!({"name": number, "device_number": number}))
                        .send()
                        .await?;
                    if !res.status().is_success() {
                        bail!(
                            "create device: {} {}",
                            res.status(),
                            res.text().await.unwrap_or_default()
                        );
                    }
                    let v: Value = res.json().await?;
                    Ok(BenchDevice {
                        id: v["id"].as_str().unwrap_or_default().to_owned(),
                        number,
                        username: v["credentials"]["username"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        password: v["credentials"]["password"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    })
                }
            })
            .buffer_unordered(concurrency)
            .inspect(|_| progress.inc(1))
            .collect()
            .await;
        results.into_iter().collect()
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if !res.status().is_success() {
            bail!("GET {path}: {}", res.status());
        }
        Ok(res.json().await?)
    }

    /// Points the store holds for a device in `[start, end)`, counted by the store.
    pub(crate) async fn count_points(
        &self,
        device: &str,
        start: i64,
        end: i64,
    ) -> anyhow::Result<u64> {
        let v = self
            .get(&format!(
                "/api/v1/devices/{device}/telemetry?start={start}&end={end}&agg=count&interval={}",
                end - start
            ))
            .await?;
        Ok(v["items"]
            .as_array()
            .map(|a| a.iter().filter_map(|i| i["value"].as_u64()).sum())
            .unwrap_or(0))
    }

    /// The sum over all label sets of counter `name` in the server's Prometheus
    /// metrics (`GET /metrics`, no authentication); `None` when it is not exported.
    /// Cheap to poll, unlike counting in the store, which competes with the writer
    /// for the same cores.
    pub(crate) async fn metric(&self, name: &str) -> anyhow::Result<Option<f64>> {
        let res = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?;
        if !res.status().is_success() {
            bail!("GET /metrics: {}", res.status());
        }
        Ok(sum_metric(&res.text().await?, name))
    }

    /// Timestamp of the latest value of `key`.
    pub(crate) async fn latest_ts(&self, device: &str, key: &str) -> anyhow::Result<Option<i64>> {
        let v = self
            .get(&format!(
                "/api/v1/devices/{device}/telemetry/latest?keys={key}"
            ))
            .await?;
        Ok(v["items"].get(0).and_then(|i| i["ts"].as_i64()))
    }
}

/// Resident memory and CPU time of the server process, read from /proc.
pub(crate) struct ServerProbe {
    pid: Option<u32>,
    cpu_start: f64,
    wall_start: Instant,
}

impl ServerProbe {
    pub(crate) fn new(pid: Option<u32>) -> Self {
        let mut p = Self {
            pid,
            cpu_start: 0.0,
            wall_start: Instant::now(),
        };
        p.cpu_start = p.cpu_seconds().unwrap_or(0.0);
        p
    }

    pub(crate) fn rss_bytes(&self) -> Option<u64> {
        self.status_bytes("VmRSS:")
    }

    /// Anonymous resident memory (heap and stacks, not mapped files): what grows
    /// with the server's own state.
    pub(crate) fn anon_rss_bytes(&self) -> Option<u64> {
        self.status_bytes("RssAnon:")
    }

    fn status_bytes(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with(field))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid?)).ok()?;
        // fields after the ")" of the command name; utime and stime are fields 14 and 15
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0)
    }

    /// Server CPU use since `restart` as a percentage of one core.
    pub(crate) fn cpu_percent(&self) -> Option<f64> {
        let used = self.cpu_seconds()? - self.cpu_start;
        Some(100.0 * used / self.wall_start.elapsed().as_secs_f64())
    }

    pub(crate) fn restart(&mut self) {
        self.cpu_start = self.cpu_seconds().unwrap_or(0.0);
        self.wall_start = Instant::now();
    }
}

/// Thread-safe latency histogram in microseconds.
pub(crate) struct Latency(Mutex<Histogram<u64>>);

impl Latency {
    pub(crate) fn new() -> Self {
        Self(Mutex::new(
            Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
        ))
    }

    pub(crate) fn record_us(&self, us: u64) {
        let _ = self.0.lock().expect("histogram").record(us.max(1));
    }

    /// (count, p50, p95, p99) in milliseconds.
    pub(crate) fn summary(&self) -> (u64, f64, f64, f64) {
        let h = self.0.lock().expect("histogram");
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        (h.len(), ms(0.50), ms(0.95), ms(0.99))
    }
}

pub(crate) fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg:<12} [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// A scenario's outcome: parameters and measured values.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) scenario: String,
    pub(crate) command: String,
    pub(crate) params: Value,
    pub(crate) results: Vec<(String, f64, String)>,
}

impl Report {
    pub(crate) fn new(scenario: &str, params: Value) -> Self {
        Self {
            scenario: scenario.to_owned(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            params,
            results: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, name: &str, value: f64, unit: &str) {
        self.results.push((name.to_owned(), value, unit.to_owned()));
    }

    pub(crate) fn markdown(&self) -> String {
        let mut s = format!(
            "### {}\n\n`{}`\n\n| metric | value | unit |\n|---|---:|---|\n",
            self.scenario, self.command
        );
        for (name, value, unit) in &self.results {
            s.push_str(&format!("| {name} | {value:.2} | {unit} |\n"));
        }
        s
    }

    pub(crate) fn emit(&self, json_path: Option<&std::path::Path>) -> anyhow::Result<()> {
        println!("\n{}", self.markdown());
        let json = serde_json::to_string_pretty(self)?;
        match json_path {
            Some(p) => std::fs::write(p, json).with_context(|| format!("write {}", p.display()))?,
            None => println!("{json}"),
        }
        Ok(())
    }
}

pub(crate) fn sleep_until(deadline: Instant) -> tokio::time::Sleep {
    tokio::time::sleep(deadline.saturating_duration_since(Instant::now()))
}

/// Sums the samples of metric `name` (any labels) in a Prometheus text exposition.
pub(crate) fn sum_metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // `name 12` or `name{labels} 12`, not `name_suffix ...`
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::sum_metric;

    #[test]
    fn sums_every_label_set_of_one_metric_only() {
        let text = "# TYPE tp_writer_points_written_total counter\n\
                    tp_writer_points_written_total{backend=\"sqlite\"} 10\n\
                    tp_writer_points_written_total{backend=\"postgres\"} 5\n\
                    tp_writer_points_written_total_other 99\n";
        assert_eq!(
            sum_metric(text, "tp_writer_points_written_total"),
            Some(15.0)
        );
        assert_eq!(sum_metric("x 1\n", "tp_writer_points_written_total"), None);
        assert_eq!(sum_metric("y 2.5\n", "y"), Some(2.5));
    }
}

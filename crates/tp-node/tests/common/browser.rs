//! A headless Chromium driven over W3C WebDriver (chromedriver), shared by the
//! console's browser tests (tests/console.rs, console_ota.rs, console_thing_model.rs
//! include it with `#[path]`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};

use super::*;

pub(crate) fn artifacts_dir() -> PathBuf {
    let dir = match std::env::var_os("TP_ARTIFACTS_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
            target.join("console-screenshots")
        }
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Standard base64 (WebDriver screenshots); the workspace has no base64 crate.
pub(crate) fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        let b = n.to_be_bytes();
        out.extend_from_slice(&b[1..chunk.len()]);
    }
    out
}

pub(crate) const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A minimal W3C WebDriver client over reqwest (the commands this test needs).
pub(crate) struct Browser {
    http: reqwest::Client,
    session: String,
    /// chromedriver's address and the session id, to end the session on drop.
    driver: std::net::SocketAddr,
    id: String,
    shots: PathBuf,
    /// Chromium's profile, removed after the session ends (fields drop after `drop`).
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    /// Ends the WebDriver session (which closes Chromium) on every exit, failures
    /// included, with a blocking request since `drop` cannot await.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        if let Ok(mut conn) =
            std::net::TcpStream::connect_timeout(&self.driver, Duration::from_secs(2))
        {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                conn,
                "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.id, self.driver
            );
            // The reply comes once the browser is closed; its head is enough.
            let _ = conn.read(&mut [0u8; 512]);
        }
    }
}

impl Browser {
    pub(crate) async fn cmd(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.session));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        assert!(v["value"]["error"].is_null(), "webdriver {path}: {v}");
        v["value"].clone()
    }

    pub(crate) async fn goto(&self, url: &str) {
        self.cmd(post(), "/url", Some(json!({"url": url}))).await;
    }

    pub(crate) async fn find(&self, css: &str) -> String {
        let el = self
            .cmd(
                post(),
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        el[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {el}"))
            .to_owned()
    }

    pub(crate) async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.cmd(post(), &format!("/element/{el}/clear"), Some(json!({})))
            .await;
        self.cmd(
            post(),
            &format!("/element/{el}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Picks `value` in a `<select>` as a user would (the page hears `change`).
    pub(crate) async fn choose(&self, css: &str, value: &str) {
        let script = format!(
            "const s = document.querySelector({css}); s.value = {value}; \
             s.dispatchEvent(new Event('change', {{bubbles: true}})); return s.value",
            css = json!(css),
            value = json!(value),
        );
        assert_eq!(
            self.js(&script).await,
            json!(value),
            "option {value} of {css}"
        );
    }

    pub(crate) async fn click(&self, css: &str) {
        let el = self.find(css).await;
        self.cmd(post(), &format!("/element/{el}/click"), Some(json!({})))
            .await;
    }

    /// Types each `(name, text)` into the field of that name in `form`, in order.
    pub(crate) async fn fill(&self, form: &str, fields: &[(&str, &str)]) {
        for (name, text) in fields {
            self.type_into(&format!("{form} [name=\"{name}\"]"), text)
                .await;
        }
    }

    /// Clicks the submit button of `form`.
    pub(crate) async fn submit(&self, form: &str) {
        self.click(&format!("{form} button[type=submit]")).await;
    }

    /// Presses and releases each key (WebDriver key codes, e.g. `\u{E004}` for Tab).
    pub(crate) async fn keys(&self, keys: &[&str]) {
        let actions: Vec<Value> = keys
            .iter()
            .flat_map(|k| {
                [
                    json!({"type": "keyDown", "value": k}),
                    json!({"type": "keyUp", "value": k}),
                ]
            })
            .collect();
        self.cmd(
            post(),
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        )
        .await;
    }

    pub(crate) async fn js(&self, script: &str) -> Value {
        self.cmd(
            post(),
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Waits until `script` (a function body) returns something truthy; returns it.
    pub(crate) async fn wait(&self, what: &str, script: &str) -> Value {
        // Generous: the whole workspace's tests may share two cores with Chromium.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
        loop {
            let v = self.js(script).await;
            if !(v.is_null() || v == json!(false) || v == json!("")) {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                let page = self.js("return document.body.innerText").await;
                self.screenshot("failure").await;
                panic!(
                    "timed out waiting for {what}; page:\n{}",
                    page.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the page has an element matching `css`.
    pub(crate) async fn wait_for(&self, what: &str, css: &str) {
        self.wait(what, &format!("return document.querySelector('{css}')"))
            .await;
    }

    /// Waits until the element `css` exists and its text includes `text`.
    pub(crate) async fn wait_text(&self, what: &str, css: &str, text: &str) {
        let script =
            format!("return document.querySelector('{css}')?.textContent.includes('{text}')");
        self.wait(what, &script).await;
    }

    /// A screenshot of the whole page: the window grows to the page's height for it
    /// (at a laptop's width), then returns to 1366x900.
    pub(crate) async fn screenshot(&self, name: &str) -> PathBuf {
        let height = self
            .js("return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight")
            .await
            .as_u64()
            .unwrap_or(900)
            .clamp(900, 6000);
        self.cmd(
            post(),
            "/window/rect",
            Some(json!({"width": 1366, "height": height})),
        )
        .await;
        let png = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        self.cmd(
            post(),
            "/window/rect",
            Some(json!({"width": 1366, "height": 900})),
        )
        .await;
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, base64_decode(png.as_str().unwrap())).unwrap();
        path
    }
}

/// Starts chromedriver on a free port: `(process, port)`. The port is found free,
/// released, then bound by chromedriver: under load something else can take it in
/// between (chromedriver then exits: "IPv4 port not available"), so a start that
/// does not come up is retried on another port.
pub(crate) async fn start_chromedriver(
    driver: &Path,
    http: &reqwest::Client,
) -> (tokio::process::Child, u16) {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let port = tp_core::testing::free_port();
        let mut child = tokio::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            // With a timeout: whoever took the port may accept and never answer.
            if let Ok(res) = http
                .get(format!("http://127.0.0.1:{port}/status"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && let Ok(v) = res.json::<Value>().await
                && v["value"]["ready"] == true
            {
                return (child, port);
            }
            if child.try_wait().unwrap().is_some() || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("chromedriver did not come up on port {port}, trying another");
    }
    panic!("chromedriver never became ready on any of {ATTEMPTS} free ports");
}

/// Starts chromedriver on a free port and opens a headless Chromium session.
pub(crate) async fn start_browser(
    chromium: &Path,
    driver: &Path,
) -> (tokio::process::Child, Browser) {
    let http = reqwest::Client::new();
    let (child, port) = start_chromedriver(driver, &http).await;
    let base = format!("http://127.0.0.1:{port}");
    let profile = tempfile::tempdir().unwrap();
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1366,900", "--no-first-run", "--disable-extensions",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        },
    }}});
    let res: Value = http
        .post(format!("{base}/session"))
        .json(&caps)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = res["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no WebDriver session: {res}"))
        .to_owned();
    let browser = Browser {
        http,
        session: format!("{base}/session/{id}"),
        driver: ([127, 0, 0, 1], port).into(),
        id,
        shots: artifacts_dir(),
        _profile: profile,
    };
    (child, browser)
}

/// `$var` if set, else the first of `names` on the PATH; `None` (skip) when there is
/// none, a failure instead under `TP_REQUIRE_SERVICES` naming the Debian `package`.
pub(crate) fn browser_binary(var: &str, names: &[&str], package: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .or_else(|| tp_core::testing::command_path_any(names, package))
}

/// What every step of the console test works with: the node, the browser on its
/// console and the chromedriver behind it. Fields drop in this order: the session
/// ends, chromedriver is killed, then the node stops.
pub(crate) struct Console {
    pub(crate) b: Browser,
    pub(crate) driver: tokio::process::Child,
    pub(crate) node: Node,
}

impl Console {
    /// A node and a headless Chromium session; `None` (skip) without Chromium or
    /// chromedriver.
    pub(crate) async fn start() -> Option<Self> {
        let chromium = browser_binary(
            "TP_CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
            "chromium",
        );
        let driver = browser_binary("TP_CHROMEDRIVER", &["chromedriver"], "chromium-driver");
        let (chromium, driver) = (chromium?, driver?);
        let node = Node::start().await;
        let (driver, b) = start_browser(&chromium, &driver).await;
        Some(Self { b, driver, node })
    }

    /// Opens a route of the console (`#/devices`; `""` for the start page).
    pub(crate) async fn goto(&self, route: &str) {
        self.b.goto(&format!("{}/{route}", self.node.base)).await;
    }

    /// Opens `route` and waits for the element `css` of its page.
    pub(crate) async fn open(&self, route: &str, what: &str, css: &str) {
        self.goto(route).await;
        self.b.wait_for(what, css).await;
    }

    /// The body of a GET on the REST API, as the signed-in admin.
    pub(crate) async fn get(&self, path: &str) -> Value {
        self.node.call(reqwest::Method::GET, path, None).await.1
    }

    /// Ends the browser session, then chromedriver.
    pub(crate) async fn close(self) {
        let Self { b, mut driver, .. } = self;
        drop(b);
        let _ = driver.kill().await;
    }
}

/// The item of a list response (`{"items": [...]}`) named `name`.
pub(crate) fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("nothing named {name}: {list}"))
}

//! A minimal SMTP server for tests: speaks enough of RFC 5321 for lettre (greeting,
//! EHLO/HELO, AUTH PLAIN, MAIL FROM, RCPT TO, DATA with dot-unstuffing, RSET, NOOP,
//! QUIT) over plain TCP and keeps every accepted message.
//!
//! Point `notify.smtp` at it with `host = "127.0.0.1"`, `port = sink.port()`,
//! `tls = "none"`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReceivedMail {
    /// Envelope sender (`MAIL FROM`).
    pub(crate) from: String,
    /// Envelope recipients (`RCPT TO`), in order.
    pub(crate) to: Vec<String>,
    /// The message as sent after `DATA` (headers, blank line, body), CRLF line ends,
    /// dot-unstuffed.
    pub(crate) data: String,
    /// `AUTH PLAIN` identity `(username, password)` of the session, if any.
    pub(crate) auth: Option<(String, String)>,
}

impl ReceivedMail {
    /// A header's value (continuation lines unfolded), first occurrence, by
    /// case-insensitive name.
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or("");
        let mut found: Option<String> = None;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(v) = found.as_mut() {
                    v.push(' ');
                    v.push_str(line.trim());
                }
                continue;
            }
            if found.is_some() {
                break;
            }
            if let Some((n, v)) = line.split_once(':')
                && n.trim().eq_ignore_ascii_case(name)
            {
                found = Some(v.trim().to_owned());
            }
        }
        found
    }

    /// The `Subject` header (plain ASCII subjects are not encoded by lettre).
    pub(crate) fn subject(&self) -> Option<String> {
        self.header("Subject")
    }

    /// The body after the blank line, quoted-printable decoded when the message
    /// says so, with CRLF turned into LF and the final line end removed.
    pub(crate) fn body(&self) -> String {
        let raw = self
            .data
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or("");
        let qp = self
            .header("Content-Transfer-Encoding")
            .is_some_and(|e| e.eq_ignore_ascii_case("quoted-printable"));
        let text = if qp {
            decode_quoted_printable(raw)
        } else {
            raw.to_owned()
        };
        text.replace("\r\n", "\n").trim_end_matches('\n').to_owned()
    }
}

/// How the sink answers; the default accepts everything.
#[derive(Debug, Clone, Default)]
pub(crate) struct SinkBehavior {
    /// Reply to every `RCPT TO` instead of `250` (e.g. `"550 5.1.1 no such user"`
    /// or `"451 4.3.0 try later"`).
    pub(crate) rcpt_reply: Option<String>,
}

#[derive(Default)]
struct Shared {
    mails: Vec<ReceivedMail>,
    sessions: usize,
}

/// A running sink on 127.0.0.1; stops accepting when dropped.
pub(crate) struct SmtpSink {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpSink {
    /// A sink that accepts every message.
    pub(crate) async fn start() -> Self {
        Self::start_with(SinkBehavior::default()).await
    }

    /// A sink with the given behavior.
    pub(crate) async fn start_with(behavior: SinkBehavior) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let state = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                let behavior = behavior.clone();
                tokio::spawn(async move {
                    let _ = session(stream, state, behavior).await;
                });
            }
        });
        Self { addr, shared, task }
    }

    /// Listening address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Listening port.
    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `PlatformConfig::load` overrides that point a node's `[notify.smtp]` at this
    /// sink (plain SMTP) with a fast retry backoff.
    pub(crate) fn config_overrides(&self) -> Vec<(&'static str, String)> {
        vec![
            ("notify.smtp.host", "127.0.0.1".to_owned()),
            ("notify.smtp.port", self.port().to_string()),
            ("notify.smtp.tls", "none".to_owned()),
            (
                "notify.smtp.from",
                "ThingsPanel <alerts@example.com>".to_owned(),
            ),
            ("notify.backoff_base_ms", "10".to_owned()),
        ]
    }

    /// Messages accepted so far.
    pub(crate) fn mails(&self) -> Vec<ReceivedMail> {
        self.shared.lock().unwrap().mails.clone()
    }

    /// SMTP sessions (connections) so far.
    pub(crate) fn sessions(&self) -> usize {
        self.shared.lock().unwrap().sessions
    }

    /// Waits (up to `deadline`) until at least `n` messages arrived; returns them.
    pub(crate) async fn wait_for_mails(&self, n: usize, deadline: Duration) -> Vec<ReceivedMail> {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let mails = self.mails();
            if mails.len() >= n {
                return mails;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "expected {n} mails, got {}",
                mails.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `<addr>` out of `MAIL FROM:<addr> SIZE=...`.
fn path_arg(rest: &str) -> String {
    let rest = rest.trim();
    match (rest.find('<'), rest.find('>')) {
        (Some(a), Some(b)) if a < b => rest[a + 1..b].to_owned(),
        _ => rest.split_whitespace().next().unwrap_or("").to_owned(),
    }
}

async fn session(
    stream: TcpStream,
    state: Arc<Mutex<Shared>>,
    behavior: SinkBehavior,
) -> std::io::Result<()> {
    state.lock().unwrap().sessions += 1;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write
        .write_all(b"220 sink.test ESMTP test sink\r\n")
        .await?;
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    let mut auth: Option<(String, String)> = None;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end_matches(['\r', '\n']);
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            "250-sink.test\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-AUTH PLAIN\r\n250 OK".to_owned()
        } else if upper.starts_with("HELO") {
            "250 sink.test".to_owned()
        } else if upper.starts_with("AUTH PLAIN") {
            let arg = cmd.get("AUTH PLAIN".len()..).unwrap_or("").trim();
            let arg = if arg.is_empty() {
                write.write_all(b"334 \r\n").await?;
                line.clear();
                lines.read_line(&mut line).await?;
                line.trim().to_owned()
            } else {
                arg.to_owned()
            };
            match decode_base64(&arg).map(|b| String::from_utf8_lossy(&b).into_owned()) {
                Some(plain) => {
                    // authzid \0 authcid \0 password
                    let parts: Vec<&str> = plain.split('\0').collect();
                    if parts.len() == 3 {
                        auth = Some((parts[1].to_owned(), parts[2].to_owned()));
                        "235 2.7.0 authenticated".to_owned()
                    } else {
                        "501 5.5.2 bad AUTH PLAIN".to_owned()
                    }
                }
                None => "501 5.5.2 bad base64".to_owned(),
            }
        } else if upper.starts_with("MAIL FROM:") {
            from = Some(path_arg(&cmd["MAIL FROM:".len()..]));
            to.clear();
            "250 2.1.0 OK".to_owned()
        } else if upper.starts_with("RCPT TO:") {
            match &behavior.rcpt_reply {
                Some(r) => r.clone(),
                None => {
                    to.push(path_arg(&cmd["RCPT TO:".len()..]));
                    "250 2.1.5 OK".to_owned()
                }
            }
        } else if upper == "DATA" {
            if from.is_none() || to.is_empty() {
                "503 5.5.1 need MAIL and RCPT first".to_owned()
            } else {
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    let l = line.trim_end_matches(['\r', '\n']);
                    if l == "." {
                        break;
                    }
                    data.push_str(l.strip_prefix('.').unwrap_or(l));
                    data.push_str("\r\n");
                }
                let mut s = state.lock().unwrap();
                s.mails.push(ReceivedMail {
                    from: from.take().unwrap_or_default(),
                    to: std::mem::take(&mut to),
                    data,
                    auth: auth.clone(),
                });
                format!("250 2.0.0 OK queued as {}", s.mails.len())
            }
        } else if upper == "RSET" {
            from = None;
            to.clear();
            "250 2.0.0 OK".to_owned()
        } else if upper.starts_with("NOOP") {
            "250 2.0.0 OK".to_owned()
        } else if upper == "QUIT" {
            write.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            "502 5.5.2 command not implemented".to_owned()
        };
        write.write_all(reply.as_bytes()).await?;
        write.write_all(b"\r\n").await?;
    }
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        buf = (buf << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn decode_quoted_printable(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            if bytes.get(i + 1..i + 3) == Some(b"\r\n") {
                i += 3; // soft line break
                continue;
            }
            if let Some(h) = bytes.get(i + 1..i + 3)
                && let Ok(v) = u8::from_str_radix(std::str::from_utf8(h).unwrap_or(""), 16)
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

//! A minimal SMTP server for tests: speaks enough of RFC 5321 for lettre (greeting,
//! EHLO/HELO, AUTH PLAIN, MAIL FROM, RCPT TO, DATA with dot-unstuffing, RSET, NOOP,
//! QUIT, and STARTTLS per RFC 3207) and keeps every accepted message, noting whether
//! it came over TLS.
//!
//! Three kinds ([`SinkTls`]): plain TCP without STARTTLS ([`SmtpSink::start`]; point
//! `notify.smtp` at it with `host = "127.0.0.1"`, `port = sink.port()`,
//! `tls = "none"`), STARTTLS offered and honoured, and TLS from the first byte
//! (SMTPS). The TLS kinds use a fresh self-signed certificate for `127.0.0.1` and
//! `localhost` ([`SmtpSink::ca_file`]; rustls with the ring provider), so a client
//! trusts them only when told to.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tp_core::testing::tls::{SelfSigned, self_signed};

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
    /// Whether the message came over TLS (after STARTTLS, or on the SMTPS sink).
    pub(crate) tls: bool,
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

/// How the sink secures its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum SinkTls {
    /// Plain TCP; STARTTLS is neither offered nor accepted.
    #[default]
    None,
    /// Plain greeting, `STARTTLS` in the EHLO reply; the client upgrades, then sends
    /// a new EHLO over TLS (`notify.smtp.tls = "starttls"`).
    Starttls,
    /// TLS handshake right after accept, then the greeting (SMTPS,
    /// `notify.smtp.tls = "tls"`).
    Implicit,
}

#[derive(Default)]
struct Shared {
    mails: Vec<ReceivedMail>,
    sessions: usize,
    /// Sessions upgraded with STARTTLS (handshake completed).
    starttls_upgrades: usize,
    /// Why TLS handshakes failed (the client's alert, e.g. an unknown CA).
    tls_failures: Vec<String>,
}

/// A running sink on 127.0.0.1; stops accepting when dropped.
pub(crate) struct SmtpSink {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
    tls: SinkTls,
    /// The certificate of the TLS kinds, in a directory that lives as long as the sink.
    cert: Option<(tempfile::TempDir, SelfSigned)>,
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

    /// A plain-TCP sink with the given behavior.
    pub(crate) async fn start_with(behavior: SinkBehavior) -> Self {
        Self::start_secured(behavior, SinkTls::None).await
    }

    /// A sink that accepts every message, secured as `tls` says; the TLS kinds
    /// present a fresh self-signed certificate ([`Self::ca_file`]).
    pub(crate) async fn start_tls(tls: SinkTls) -> Self {
        Self::start_secured(SinkBehavior::default(), tls).await
    }

    /// A sink with the given behavior and security.
    pub(crate) async fn start_secured(behavior: SinkBehavior, tls: SinkTls) -> Self {
        let cert = (tls != SinkTls::None).then(|| {
            let dir = tempfile::tempdir().unwrap();
            let cert = self_signed(dir.path());
            (dir, cert)
        });
        let acceptor = cert.as_ref().map(|(_, c)| acceptor(c));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let state = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                let behavior = behavior.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = session(stream, state, behavior, tls, acceptor).await;
                });
            }
        });
        Self {
            addr,
            shared,
            task,
            tls,
            cert,
        }
    }

    /// The PEM file of the sink's self-signed certificate, for `notify.smtp.ca_file`
    /// (TLS kinds only).
    pub(crate) fn ca_file(&self) -> &Path {
        &self
            .cert
            .as_ref()
            .expect("a plain sink has no certificate")
            .1
            .cert_path
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
    /// sink (`tls` matching its kind; `ca_file` its certificate for the TLS kinds)
    /// with a fast retry backoff.
    pub(crate) fn config_overrides(&self) -> Vec<(&'static str, String)> {
        let tls = match self.tls {
            SinkTls::None => "none",
            SinkTls::Starttls => "starttls",
            SinkTls::Implicit => "tls",
        };
        let mut overrides = vec![
            ("notify.smtp.host", "127.0.0.1".to_owned()),
            ("notify.smtp.port", self.port().to_string()),
            ("notify.smtp.tls", tls.to_owned()),
            (
                "notify.smtp.from",
                "ThingsPanel <alerts@example.com>".to_owned(),
            ),
            ("notify.backoff_base_ms", "10".to_owned()),
        ];
        if self.cert.is_some() {
            overrides.push(("notify.smtp.ca_file", self.ca_file().display().to_string()));
        }
        overrides
    }

    /// Messages accepted so far.
    pub(crate) fn mails(&self) -> Vec<ReceivedMail> {
        self.shared.lock().unwrap().mails.clone()
    }

    /// SMTP sessions (connections) so far.
    pub(crate) fn sessions(&self) -> usize {
        self.shared.lock().unwrap().sessions
    }

    /// Sessions that switched to TLS with STARTTLS (handshake completed).
    pub(crate) fn starttls_upgrades(&self) -> usize {
        self.shared.lock().unwrap().starttls_upgrades
    }

    /// Why TLS handshakes with the sink failed, one entry per failure.
    pub(crate) fn tls_failures(&self) -> Vec<String> {
        self.shared.lock().unwrap().tls_failures.clone()
    }

    /// Waits (up to `deadline`) until at least `n` TLS handshakes failed (the sink
    /// learns of a failure after the client, which may have moved on); returns why.
    pub(crate) async fn wait_for_tls_failures(&self, n: usize, deadline: Duration) -> Vec<String> {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let failures = self.tls_failures();
            if failures.len() >= n {
                return failures;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "expected {n} failed TLS handshakes, got {failures:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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

/// A TLS acceptor for `cert`: rustls with the ring provider named explicitly (no
/// process-wide default provider is installed), as in tp-broker's TLS listeners.
fn acceptor(cert: &SelfSigned) -> TlsAcceptor {
    let certs = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(&std::fs::read(&cert.key_path).unwrap()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

/// One connection: the TLS handshake first (SMTPS), or a plain dialogue that may
/// switch to TLS (STARTTLS) and continue there.
async fn session(
    stream: TcpStream,
    state: Arc<Mutex<Shared>>,
    behavior: SinkBehavior,
    tls: SinkTls,
    acceptor: Option<TlsAcceptor>,
) -> std::io::Result<()> {
    state.lock().unwrap().sessions += 1;
    let handshake = |stream: TcpStream| {
        let acceptor = acceptor.clone().expect("TLS sinks have a certificate");
        let state = state.clone();
        async move {
            acceptor.accept(stream).await.inspect_err(|e| {
                state.lock().unwrap().tls_failures.push(e.to_string());
            })
        }
    };
    match tls {
        SinkTls::None => {
            dialogue(stream, &state, &behavior, Phase::Plain).await?;
        }
        SinkTls::Starttls => {
            let upgraded = dialogue(stream, &state, &behavior, Phase::OfferStarttls).await?;
            if let Some(stream) = upgraded {
                let stream = handshake(stream).await?;
                state.lock().unwrap().starttls_upgrades += 1;
                // No new greeting: the client starts over with EHLO (RFC 3207).
                dialogue(stream, &state, &behavior, Phase::AfterStarttls).await?;
            }
        }
        SinkTls::Implicit => {
            let stream = handshake(stream).await?;
            dialogue(stream, &state, &behavior, Phase::Implicit).await?;
        }
    }
    Ok(())
}

/// Where a dialogue stands with respect to TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Plain, STARTTLS not offered.
    Plain,
    /// Plain, STARTTLS offered: the dialogue ends (returning the stream) when the
    /// client asks for it.
    OfferStarttls,
    /// Over TLS after STARTTLS: no greeting, STARTTLS no longer offered.
    AfterStarttls,
    /// Over TLS from the first byte.
    Implicit,
}

impl Phase {
    fn tls(self) -> bool {
        matches!(self, Self::AfterStarttls | Self::Implicit)
    }
}

/// Writes one reply (CRLF added) and flushes it (a TLS stream holds it otherwise).
async fn reply<S: AsyncWrite + Unpin>(stream: &mut S, text: &str) -> std::io::Result<()> {
    stream.write_all(text.as_bytes()).await?;
    stream.write_all(b"\r\n").await?;
    stream.flush().await
}

/// The SMTP dialogue over `stream` until QUIT or the client leaves (`None`), or until
/// STARTTLS was accepted (`Some(stream)`, to be wrapped in TLS).
async fn dialogue<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    state: &Mutex<Shared>,
    behavior: &SinkBehavior,
    phase: Phase,
) -> std::io::Result<Option<S>> {
    let mut lines = BufReader::new(stream);
    if phase != Phase::AfterStarttls {
        reply(&mut lines, "220 sink.test ESMTP test sink").await?;
    }
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    let mut auth: Option<(String, String)> = None;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let cmd = line.trim_end_matches(['\r', '\n']);
        let upper = cmd.to_ascii_uppercase();
        let reply_text: String = if upper.starts_with("EHLO") {
            let starttls = if phase == Phase::OfferStarttls {
                "250-STARTTLS\r\n"
            } else {
                ""
            };
            format!(
                "250-sink.test\r\n{starttls}250-8BITMIME\r\n250-SMTPUTF8\r\n250-AUTH PLAIN\r\n250 OK"
            )
        } else if upper == "STARTTLS" {
            if phase != Phase::OfferStarttls {
                "502 5.5.1 STARTTLS not offered".to_owned()
            } else {
                reply(&mut lines, "220 2.0.0 ready to start TLS").await?;
                // Plain text pipelined after STARTTLS must not be taken as if it had
                // come over TLS (the CVE-2011-0411 class): drop such a session.
                if !lines.buffer().is_empty() {
                    return Ok(None);
                }
                return Ok(Some(lines.into_inner()));
            }
        } else if upper.starts_with("HELO") {
            "250 sink.test".to_owned()
        } else if upper.starts_with("AUTH PLAIN") {
            let arg = cmd.get("AUTH PLAIN".len()..).unwrap_or("").trim();
            let arg = if arg.is_empty() {
                reply(&mut lines, "334 ").await?;
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
                reply(&mut lines, "354 end with <CRLF>.<CRLF>").await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(None);
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
                    tls: phase.tls(),
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
            reply(&mut lines, "221 2.0.0 bye").await?;
            return Ok(None);
        } else {
            "502 5.5.2 command not implemented".to_owned()
        };
        reply(&mut lines, &reply_text).await?;
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

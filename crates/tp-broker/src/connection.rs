//! The per-connection MQTT driver: one task per device connection, from the first
//! byte to the close, over any byte stream (TCP, TLS, WebSocket, WSS).
//!
//! rumqttd provides the packet codecs ([`V4`], [`V5`]); everything else is here, so
//! every packet a device sends is checked against the device it authenticated as,
//! in one place:
//! - the protocol level is read from CONNECT, so one port serves MQTT 3.1, 3.1.1 and
//!   5 (3.1's `MQIsdp` CONNECT is read as 3.1.1, which it is a subset of);
//! - CONNECT: credentials, client id ownership ([`Shared::register`]), the will
//!   (its topic must pass the same publish ACL, its retain flag is cleared, and it is
//!   ingested as a publish of this device when the connection is lost) — each refusal
//!   is a CONNACK with the matching return code;
//! - PUBLISH: uplink topics only ([`UplinkTopic::parse`]), rate limit, ingest
//!   backlog, write-ahead log for QoS 1/2 before PUBACK/PUBREC; QoS 2 is received
//!   exactly once (a re-sent publish with a pending PUBREL is not ingested again);
//! - SUBSCRIBE: every filter must be one of the device's own downlink topics;
//! - keepalive: no packet within 1.5 × the keepalive closes the connection.
//!
//! A violation closes the connection (MQTT 5 gets a DISCONNECT with a reason code
//! first) and is counted. Buffers start small and grow only with traffic, and a
//! panic in one connection's task ends that connection only: no state shared by all
//! connections is held across an await or poisoned by a panic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode,
    Error as ProtoError, LastWill, Packet, PingResp, Protocol, PubAck, PubAckReason, PubComp,
    PubCompReason, PubRec, PubRecReason, Publish, QoS, SubAck, SubscribeReasonCode, UnsubAck,
    UnsubAckReason,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tp_core::protocol::{UplinkTopic, check_subscribe, ignored_uplink};
use tp_core::{Device, now_ms};

use crate::session::{
    CloseReason, KeptSession, Outbound, RegisterRefused, Shared, encode_envelope, ingest_size,
    set_envelope_segment, valid_client_id,
};

/// Read buffer capacity a connection starts with and shrinks back to when idle.
const READ_BUFFER: usize = 512;
/// A buffer grown past this by a large packet is released once it is empty again.
const SHRINK_ABOVE: usize = 16 * 1024;
/// Downlink messages queued for one connection before publishes to it fail.
pub(crate) const OUTBOUND_QUEUE: usize = 64;
/// Downlink waiting for a free packet id beyond the in-flight window.
const MAX_WAITING: usize = 1_000;
/// How long one write to a device may block before the connection is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a takeover waits for the previous connection of the client id to end.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// Limits of the connection driver ([`crate::BrokerConfig`]).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) connect_timeout: Duration,
    pub(crate) max_packet_size: usize,
    pub(crate) max_inflight: usize,
    /// How long a clean_session=0 (MQTT 3.1.1) session is kept while its device is
    /// away; MQTT 5 clients say so themselves (session expiry interval), capped by it.
    pub(crate) session_expiry: Duration,
}

/// Packet types (the high nibble of the first byte) only a server sends.
const CONNACK: u8 = 2;
const UNSUBACK: u8 = 11;

/// The two codecs, chosen by the CONNECT's protocol level.
#[derive(Clone, Copy)]
enum Codec {
    V4,
    V5,
}

impl Codec {
    fn read(self, buf: &mut BytesMut, max: usize) -> Result<Packet, ProtoError> {
        match self {
            Self::V4 => V4.read_mut(buf, max),
            // rumqttd's MQTT 5 reader panics (`unreachable!`) on a CONNACK or UNSUBACK
            // with a body; no client sends either, so they are refused before it.
            Self::V5 => match buf.first().map(|b| b >> 4) {
                Some(t @ (CONNACK | UNSUBACK)) => Err(ProtoError::InvalidPacketType(t)),
                _ => V5.read_mut(buf, max),
            },
        }
    }

    fn write(self, packet: Packet, buf: &mut BytesMut) -> Result<usize, ProtoError> {
        match self {
            Self::V4 => V4.write(packet, buf),
            Self::V5 => V5.write(packet, buf),
        }
    }
}

/// Why a CONNECT is refused; mapped to each version's CONNACK code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    ClientId,
    Unavailable,
    BadCredentials,
    NotAuthorized,
    Busy,
}

impl Refusal {
    fn code(self, codec: Codec) -> ConnectReturnCode {
        use ConnectReturnCode as C;
        match (self, codec) {
            (Self::ClientId, _) => C::ClientIdentifierNotValid,
            (Self::Unavailable | Self::Busy, Codec::V4) => C::ServiceUnavailable,
            (Self::Unavailable, Codec::V5) => C::ServerUnavailable,
            (Self::Busy, Codec::V5) => C::ServerBusy,
            (Self::BadCredentials, _) => C::BadUserNamePassword,
            (Self::NotAuthorized, _) => C::NotAuthorized,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Self::ClientId => "invalid_client_id",
            Self::Unavailable => "draining",
            Self::BadCredentials => "bad_credentials",
            Self::NotAuthorized => "not_authorized",
            Self::Busy => "capacity",
        }
    }
}

/// What reading the start of a stream found.
enum Start {
    /// More bytes are needed.
    Incomplete,
    /// A CONNECT of this protocol level (3.1 already rewritten as 3.1.1).
    Connect(Codec),
    /// A CONNECT of a protocol level we do not speak.
    UnsupportedLevel(u8),
    /// Not a CONNECT.
    NotConnect,
}

/// Reads a remaining-length varint at `at`: (value, bytes used), `None` if incomplete.
fn varint(buf: &[u8], at: usize) -> Option<Result<(usize, usize), ()>> {
    let mut value = 0usize;
    for i in 0..4 {
        let byte = *buf.get(at + i)?;
        value |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(Ok((value, i + 1)));
        }
    }
    Some(Err(()))
}

fn put_varint(buf: &mut BytesMut, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// Looks at the first packet of a connection: which protocol its CONNECT speaks.
/// An MQTT 3.1 CONNECT (`MQIsdp`, level 3) is rewritten in place as a 3.1.1 one
/// (`MQTT`, level 4): the rest of 3.1's CONNECT is the same.
fn read_start(buf: &mut BytesMut) -> Start {
    let Some(&first) = buf.first() else {
        return Start::Incomplete;
    };
    if first != 0x10 {
        return Start::NotConnect;
    }
    let (remaining, len_bytes) = match varint(buf, 1) {
        None => return Start::Incomplete,
        Some(Err(())) => return Start::NotConnect,
        Some(Ok(v)) => v,
    };
    let header = 1 + len_bytes;
    let Some(name_len) = buf
        .get(header..header + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    else {
        return Start::Incomplete;
    };
    let Some(name) = buf.get(header + 2..header + 2 + name_len) else {
        return Start::Incomplete;
    };
    let name = name.to_vec();
    let Some(&level) = buf.get(header + 2 + name_len) else {
        return Start::Incomplete;
    };
    match (&name[..], level) {
        (b"MQTT", 4) => Start::Connect(Codec::V4),
        (b"MQTT", 5) => Start::Connect(Codec::V5),
        (b"MQIsdp", 3) => {
            // The name and level read above must lie inside the packet: a shorter
            // remaining length is malformed (and would underflow below).
            if remaining < 2 + name_len + 1 {
                return Start::NotConnect;
            }
            if buf.len() < header + remaining {
                return Start::Incomplete;
            }
            let rest = buf.split_off(header + 2 + name_len + 1);
            let mut rewritten = BytesMut::with_capacity(rest.len() + 16);
            rewritten.put_u8(0x10);
            put_varint(&mut rewritten, remaining - 2);
            rewritten.put_u16(4);
            rewritten.put_slice(b"MQTT");
            rewritten.put_u8(4);
            rewritten.unsplit(rest);
            *buf = rewritten;
            Start::Connect(Codec::V4)
        }
        (b"MQTT" | b"MQIsdp", level) => Start::UnsupportedLevel(level),
        _ => Start::NotConnect,
    }
}

/// QoS and packet id of the PUBLISH at the start of `buf` (rumqttd keeps a decoded
/// publish's QoS and id private, so they are read from the bytes first). `None`
/// while the bytes are incomplete.
fn publish_ids(buf: &[u8]) -> Option<(u8, u16)> {
    let qos = (buf.first()? >> 1) & 0b11;
    let (_, len_bytes) = varint(buf, 1)?.ok()?;
    let topic_at = 1 + len_bytes;
    let topic_len = u16::from_be_bytes([*buf.get(topic_at)?, *buf.get(topic_at + 1)?]) as usize;
    if qos == 0 {
        return Some((0, 0));
    }
    let at = topic_at + 2 + topic_len;
    Some((qos, u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?])))
}

/// A PUBLISH to a device with QoS and packet id (rumqttd's constructor is QoS 0 only;
/// its serialized form is the one way in with both).
fn outgoing_publish(topic: &str, payload: &[u8], qos: u8, pkid: u16, dup: bool) -> Publish {
    let mut b = BytesMut::with_capacity(5 + topic.len() + payload.len());
    b.put_u8(0x30 | (qos << 1) | (u8::from(dup) << 3));
    b.put_u16(pkid);
    b.put_u16(topic.len() as u16);
    b.put_slice(topic.as_bytes());
    b.put_slice(payload);
    Publish::deserialize(b.freeze())
}

/// Escapes what a client sent before it goes into a log line.
pub(crate) fn printable(s: &str) -> String {
    s.escape_debug().take(300).collect()
}

/// A login's username as a refusal may log it: an access token is sent as the
/// username, so only its first characters and length, enough to tell logins apart.
pub(crate) fn login_hint(username: &str) -> String {
    let head: String = username.chars().take(4).collect();
    format!("{}…({} chars)", printable(&head), username.chars().count())
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The device sent DISCONNECT (no will).
    Graceful,
    /// The device sent DISCONNECT asking for its will (MQTT 5, reason 0x04).
    GracefulWithWill,
    /// Lost, refused or closed by us: the will is published.
    Lost,
    /// Closed by the platform (takeover, revocation): the will is published unless
    /// the same device took the session over.
    Closed(CloseReason),
}

/// Serves one device connection until it ends. `permit` is the slot it held while
/// it had not sent CONNECT yet; it is released once CONNECT is handled.
pub(crate) async fn serve<S>(
    mut stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    limits: Arc<Limits>,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut rbuf = BytesMut::with_capacity(READ_BUFFER);
    let codec = match tokio::time::timeout(
        limits.connect_timeout,
        read_connect(&mut stream, &mut rbuf, limits.max_packet_size),
    )
    .await
    {
        Ok(Ok(codec)) => codec,
        Ok(Err(why)) => {
            if let Some(level) = why.unsupported_level {
                metrics::counter!("tp_mqtt_auth_refused_total", "reason" => "protocol_version")
                    .increment(1);
                tracing::info!(%peer, level, "MQTT CONNECT with an unsupported protocol level refused");
                let mut w = BytesMut::new();
                // 3.1.1's "unacceptable protocol version", understood by every level.
                w.put_slice(&[0x20, 0x02, 0x00, 0x01]);
                let _ = stream.write_all(&w).await;
            } else {
                tracing::debug!(%peer, error = %why.message, "connection closed before a valid CONNECT");
            }
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT within connection_timeout_ms; closing");
            return;
        }
    };
    let packet = match codec.read(&mut rbuf, limits.max_packet_size) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "malformed CONNECT; closing");
            return;
        }
    };
    let Packet::Connect(connect, props, will, _will_props, login) = packet else {
        return;
    };
    let connection_id = shared.next_connection_id();
    shared.open_connections.fetch_add(1, Ordering::AcqRel);
    let open = OpenGuard(shared.clone());

    let mut driver = Driver {
        stream,
        peer,
        codec,
        shared: shared.clone(),
        limits: limits.clone(),
        connection_id,
        wbuf: BytesMut::new(),
        rbuf,
        client_id: connect.client_id.clone(),
        device: None,
        will: None,
        inflight: Vec::new(),
        waiting: std::collections::VecDeque::new(),
        next_pkid: 0,
        qos2_pending: Vec::new(),
        filters: Vec::new(),
    };
    let session_expiry = match codec {
        Codec::V4 if !connect.clean_session => Some(limits.session_expiry),
        Codec::V4 => None,
        Codec::V5 => props
            .as_ref()
            .and_then(|p| p.session_expiry_interval)
            .filter(|secs| *secs > 0)
            .map(|secs| Duration::from_secs(secs.into()).min(limits.session_expiry)),
    };
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    // Boxed: the credential lookup's future is large and only needed once; inline,
    // every idle connection's task would carry its space for its whole life.
    let accepted = Box::pin(driver.accept(
        connect.clean_session,
        session_expiry.is_some(),
        will,
        login,
        tx,
    ))
    .await;
    drop(permit);
    let Some(gone) = accepted else {
        let _ = driver.flush().await;
        return;
    };
    let keepalive = (connect.keep_alive > 0)
        .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
    let end = driver.run(rx, keepalive).await;
    driver.finish(end, session_expiry, gone, open).await;
}

/// Counts an open (CONNECT received) connection until it ends, panics included.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

struct StartError {
    message: String,
    unsupported_level: Option<u8>,
}

/// Reads until a whole CONNECT is buffered; returns the codec of its level.
async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    max: usize,
) -> Result<Codec, StartError> {
    let error = |message: &str| StartError {
        message: message.to_owned(),
        unsupported_level: None,
    };
    loop {
        match read_start(rbuf) {
            Start::Connect(codec) => {
                // Whole packet present? The codec says how much is missing.
                let mut probe = rbuf.clone();
                match codec.read(&mut probe, max) {
                    Err(ProtoError::InsufficientBytes(more)) => rbuf.reserve(more),
                    _ => return Ok(codec),
                }
            }
            Start::UnsupportedLevel(level) => {
                return Err(StartError {
                    message: format!("protocol level {level}"),
                    unsupported_level: Some(level),
                });
            }
            Start::NotConnect => return Err(error("the first packet is not a CONNECT")),
            Start::Incomplete => {}
        }
        if rbuf.len() > max {
            return Err(error("CONNECT larger than max_payload_size"));
        }
        match stream.read_buf(rbuf).await {
            Ok(0) => return Err(error("closed")),
            Ok(_) => {}
            Err(e) => return Err(error(&e.to_string())),
        }
    }
}

/// One authenticated connection.
struct Driver<S> {
    stream: S,
    peer: SocketAddr,
    codec: Codec,
    shared: Arc<Shared>,
    limits: Arc<Limits>,
    connection_id: u64,
    rbuf: BytesMut,
    wbuf: BytesMut,
    client_id: String,
    device: Option<Arc<Device>>,
    /// The will, already checked against the ACL, to ingest if the connection is lost.
    will: Option<LastWill>,
    /// Downlink QoS 1 publishes awaiting PUBACK: (packet id, topic, payload).
    inflight: Vec<(u16, String, Bytes)>,
    /// Downlink waiting for room in the in-flight window (and whether it was sent
    /// before, by a previous connection of a restored session).
    waiting: std::collections::VecDeque<(String, Bytes, bool)>,
    next_pkid: u16,
    /// Packet ids of QoS 2 publishes received (and logged) whose PUBREL is pending.
    qos2_pending: Vec<u16>,
    /// Granted filters of this connection with their QoS.
    filters: Vec<(String, u8)>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Driver<S> {
    fn write(&mut self, packet: Packet) {
        if let Err(e) = self.codec.write(packet, &mut self.wbuf) {
            tracing::error!(error = %e, "cannot encode an MQTT packet");
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        // A peer that stops reading would block this task forever (and with it the
        // keepalive check and a takeover waiting for it): give writes a deadline.
        let write = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        };
        let result = match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the device does not read what is sent to it",
            )),
        };
        self.wbuf.clear();
        if self.wbuf.capacity() > SHRINK_ABOVE {
            self.wbuf = BytesMut::new();
        }
        result
    }

    fn connack(
        &mut self,
        code: ConnectReturnCode,
        session_present: bool,
        assigned: Option<String>,
    ) {
        let props = match (self.codec, assigned) {
            (Codec::V5, Some(id)) => Some(ConnAckProperties {
                assigned_client_identifier: Some(id),
                ..Default::default()
            }),
            _ => None,
        };
        self.write(Packet::ConnAck(
            ConnAck {
                session_present,
                code,
            },
            props,
        ));
    }

    /// Answers the CONNECT with `refusal`'s code, counted and logged as such.
    fn refuse(
        &mut self,
        refusal: Refusal,
        username: &str,
    ) -> Option<tokio_util::sync::CancellationToken> {
        self.refuse_because(refusal, refusal.reason(), username)
    }

    /// Answers the CONNECT with `refusal`'s code; `reason` labels the metric and log
    /// (finer than the code: which credential check failed).
    fn refuse_because(
        &mut self,
        refusal: Refusal,
        reason: &'static str,
        username: &str,
    ) -> Option<tokio_util::sync::CancellationToken> {
        metrics::counter!("tp_mqtt_auth_refused_total", "reason" => reason).increment(1);
        tracing::info!(peer = %self.peer, client_id = %printable(&self.client_id),
            login = %login_hint(username), reason, "MQTT connection refused");
        self.connack(refusal.code(self.codec), false, None);
        None
    }

    /// Checks the CONNECT and registers the connection; writes the CONNACK either way.
    async fn accept(
        &mut self,
        clean_session: bool,
        persistent: bool,
        will: Option<LastWill>,
        login: Option<rumqttd::protocol::Login>,
        tx: mpsc::Sender<Box<Outbound>>,
    ) -> Option<tokio_util::sync::CancellationToken> {
        let (username, password) = login.map(|l| (l.username, l.password)).unwrap_or_default();
        if self.shared.draining.load(Ordering::Acquire) {
            return self.refuse(Refusal::Unavailable, &username);
        }
        if !valid_client_id(&self.client_id) || (self.client_id.is_empty() && !clean_session) {
            return self.refuse(Refusal::ClientId, &username);
        }
        if self.shared.open_connections.load(Ordering::Acquire) > self.shared.max_connections {
            return self.refuse(Refusal::Busy, &username);
        }
        let device = match self.shared.check_credentials(&username, &password).await {
            Ok(d) => d,
            Err(refused) => {
                let refusal = match refused {
                    crate::session::Refused::Disabled => Refusal::NotAuthorized,
                    crate::session::Refused::Store(_) => Refusal::Unavailable,
                    _ => Refusal::BadCredentials,
                };
                return self.refuse_because(refusal, refused.reason(), &username);
            }
        };
        // The will is a publish of this device like any other: same ACL, no retain.
        if let Some(mut will) = will {
            let topic = std::str::from_utf8(&will.topic).unwrap_or("");
            if UplinkTopic::parse(topic).is_err() {
                metrics::counter!("tp_mqtt_acl_denied_total", "action" => "will").increment(1);
                tracing::warn!(device_id = %device.id, device_number = %device.device_number,
                    topic = %printable(topic), "will topic outside the device's ACL; refusing the connection");
                return self.refuse(Refusal::NotAuthorized, &username);
            }
            will.retain = false;
            self.will = Some(will);
        }
        let mut assigned = None;
        if self.client_id.is_empty() {
            self.client_id = format!("auto-{}", uuid::Uuid::new_v4().simple());
            assigned = Some(self.client_id.clone());
        }
        let registered =
            match self
                .shared
                .register(&device, &self.client_id, self.connection_id, tx)
            {
                Ok(r) => r,
                Err(RegisterRefused::ClientIdInUse) => {
                    metrics::counter!("tp_mqtt_acl_denied_total", "action" => "client_id")
                        .increment(1);
                    tracing::warn!(device_id = %device.id, client_id = %printable(&self.client_id),
                    "client id in use by another device; refusing the connection");
                    return self.refuse(Refusal::ClientId, &username);
                }
            };
        self.device = Some(device.clone());
        if let Some(previous) = registered.took_over {
            // The old connection of this client id closes first, so its session
            // state (and its will decision) is settled before this one starts.
            if tokio::time::timeout(TAKEOVER_WAIT, previous.cancelled())
                .await
                .is_err()
            {
                tracing::warn!(device_id = %device.id, "previous connection of the client id did not close in time");
            }
        }
        // After the takeover: the previous connection has stored its session by now.
        let restored =
            self.shared
                .restore_session(&device, &self.client_id, clean_session || !persistent);
        let session_present = restored.is_some();
        self.connack(ConnectReturnCode::Success, session_present, assigned);
        if let Some(kept) = restored {
            if !kept.filters.is_empty() {
                let names = kept.filters.iter().map(|(f, _)| f.clone()).collect();
                self.filters = kept.filters;
                self.shared.subscribed(device.id, self.connection_id, names);
            }
            // What the device had not acknowledged goes out again first (MQTT's
            // session state: re-sent with DUP), before any new downlink.
            for (topic, payload, sent) in kept.unacked {
                self.downlink_with(topic, payload, sent);
            }
        }
        Some(registered.gone)
    }

    /// The connection's loop: packets from the device, downlink from the platform,
    /// keepalive. Returns how it ended.
    async fn run(
        &mut self,
        mut rx: mpsc::Receiver<Box<Outbound>>,
        keepalive: Option<Duration>,
    ) -> End {
        let mut deadline = keepalive.map(|k| Instant::now() + k);
        loop {
            // Everything already buffered first (a CONNECT may arrive with more).
            loop {
                let ids = (self.rbuf.first().map(|b| b >> 4) == Some(3))
                    .then(|| publish_ids(&self.rbuf))
                    .flatten();
                match self.codec.read(&mut self.rbuf, self.limits.max_packet_size) {
                    Ok(packet) => {
                        if let Some(end) = self.handle(packet, ids.unwrap_or((0, 0))) {
                            let _ = self.flush().await;
                            return end;
                        }
                    }
                    Err(ProtoError::InsufficientBytes(more)) => {
                        self.rbuf.reserve(more);
                        break;
                    }
                    Err(e) => {
                        tracing::info!(peer = %self.peer, client_id = %printable(&self.client_id),
                            error = %e, "malformed MQTT packet; closing the connection");
                        self.disconnect(DisconnectReasonCode::MalformedPacket);
                        let _ = self.flush().await;
                        return End::Lost;
                    }
                }
            }
            if self.flush().await.is_err() {
                return End::Lost;
            }
            if self.rbuf.is_empty() && self.rbuf.capacity() > SHRINK_ABOVE {
                self.rbuf = BytesMut::with_capacity(READ_BUFFER);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 64 {
                self.rbuf.reserve(READ_BUFFER);
            }
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                read = self.stream.read_buf(&mut self.rbuf) => match read {
                    Ok(0) | Err(_) => return End::Lost,
                    Ok(_) => deadline = keepalive.map(|k| Instant::now() + k),
                },
                message = rx.recv() => match message.map(|m| *m) {
                    Some(Outbound::Publish { topic, payload }) => self.downlink(topic, payload),
                    Some(Outbound::Close(reason)) => {
                        let code = match reason {
                            CloseReason::TakenOver => DisconnectReasonCode::SessionTakenOver,
                            CloseReason::Revoked => DisconnectReasonCode::NotAuthorized,
                        };
                        self.disconnect(code);
                        let _ = self.flush().await;
                        return End::Closed(reason);
                    }
                    None => return End::Lost,
                },
                () = sleep => {
                    tracing::info!(peer = %self.peer, client_id = %printable(&self.client_id),
                        "keepalive expired; closing the connection");
                    self.disconnect(DisconnectReasonCode::KeepAliveTimeout);
                    let _ = self.flush().await;
                    return End::Lost;
                }
            }
        }
    }

    /// MQTT 5 gets a DISCONNECT with the reason; 3.1.1 has no server DISCONNECT.
    fn disconnect(&mut self, reason_code: DisconnectReasonCode) {
        if matches!(self.codec, Codec::V5) {
            self.write(Packet::Disconnect(Disconnect { reason_code }, None));
        }
    }

    fn device(&self) -> &Arc<Device> {
        self.device.as_ref().expect("set at CONNECT")
    }

    /// Handles one packet from the device; `Some` ends the connection.
    fn handle(&mut self, packet: Packet, (qos, pkid): (u8, u16)) -> Option<End> {
        match packet {
            Packet::Publish(publish, _) => self.publish(publish, qos, pkid),
            Packet::PubRel(rel, _) => {
                self.qos2_pending.retain(|p| *p != rel.pkid);
                self.write(Packet::PubComp(
                    PubComp {
                        pkid: rel.pkid,
                        reason: PubCompReason::Success,
                    },
                    None,
                ));
                None
            }
            Packet::PubAck(ack, _) => {
                self.inflight.retain(|(p, _, _)| *p != ack.pkid);
                while self.inflight.len() < self.limits.max_inflight
                    && let Some((topic, payload, dup)) = self.waiting.pop_front()
                {
                    self.send_downlink(topic, payload, 1, dup);
                }
                None
            }
            Packet::Subscribe(subscribe, _) => {
                let device = self.device().clone();
                for filter in &subscribe.filters {
                    if check_subscribe(&filter.path, &device.device_number).is_err() {
                        return Some(self.deny("subscribe", &filter.path));
                    }
                }
                let mut codes = Vec::with_capacity(subscribe.filters.len());
                let mut names = Vec::with_capacity(subscribe.filters.len());
                for filter in subscribe.filters {
                    // Downlink goes out at QoS 0 or 1.
                    let granted = (filter.qos as u8).min(1);
                    codes.push(match (self.codec, granted) {
                        (Codec::V4, 0) => SubscribeReasonCode::Success(QoS::AtMostOnce),
                        (Codec::V4, _) => SubscribeReasonCode::Success(QoS::AtLeastOnce),
                        (Codec::V5, 0) => SubscribeReasonCode::QoS0,
                        (Codec::V5, _) => SubscribeReasonCode::QoS1,
                    });
                    self.filters.retain(|(f, _)| *f != filter.path);
                    self.filters.push((filter.path.clone(), granted));
                    names.push(filter.path);
                }
                // Registered before the SUBACK is written and before any downlink
                // queued for this connection is read, so nothing races the SUBACK.
                self.shared.subscribed(device.id, self.connection_id, names);
                self.write(Packet::SubAck(
                    SubAck {
                        pkid: subscribe.pkid,
                        return_codes: codes,
                    },
                    None,
                ));
                None
            }
            Packet::Unsubscribe(unsubscribe, _) => {
                let device_id = self.device().id;
                self.filters
                    .retain(|(f, _)| !unsubscribe.filters.contains(f));
                self.shared
                    .unsubscribed(device_id, self.connection_id, &unsubscribe.filters);
                let reasons = vec![UnsubAckReason::Success; unsubscribe.filters.len()];
                self.write(Packet::UnsubAck(
                    UnsubAck {
                        pkid: unsubscribe.pkid,
                        reasons,
                    },
                    None,
                ));
                None
            }
            Packet::PingReq(_) => {
                self.write(Packet::PingResp(PingResp));
                None
            }
            Packet::Disconnect(disconnect, _) => Some(
                if disconnect.reason_code == DisconnectReasonCode::DisconnectWithWillMessage {
                    End::GracefulWithWill
                } else {
                    End::Graceful
                },
            ),
            // Downlink goes out at QoS 0/1, so PUBREC/PUBCOMP never answer ours.
            Packet::PubRec(..) | Packet::PubComp(..) => None,
            Packet::Connect(..) => {
                tracing::info!(peer = %self.peer, "second CONNECT on a connection; closing it");
                self.disconnect(DisconnectReasonCode::ProtocolError);
                Some(End::Lost)
            }
            // Server-to-client packets from a client.
            _ => {
                self.disconnect(DisconnectReasonCode::ProtocolError);
                Some(End::Lost)
            }
        }
    }

    /// A topic outside the device's ACL: counted, logged, the connection closed.
    fn deny(&mut self, what: &'static str, topic: &str) -> End {
        let device = self.device();
        metrics::counter!("tp_mqtt_acl_denied_total", "action" => what).increment(1);
        tracing::warn!(device_id = %device.id, device_number = %device.device_number,
            topic = %printable(topic), action = what,
            "Topic outside the device's ACL; closing the connection");
        self.disconnect(DisconnectReasonCode::NotAuthorized);
        End::Lost
    }

    fn publish(&mut self, publish: Publish, qos: u8, pkid: u16) -> Option<End> {
        let topic = std::str::from_utf8(&publish.topic).unwrap_or("").to_owned();
        if UplinkTopic::parse(&topic).is_err() {
            let Some(label) = ignored_uplink(&topic, &self.device().device_number) else {
                return Some(self.deny("publish", &topic));
            };
            // Allowed by ThingsPanel's broker but meaningless here: acknowledged,
            // counted, not stored.
            metrics::counter!("tp_mqtt_ignored_publishes_total", "topic" => label).increment(1);
            tracing::debug!(device_id = %self.device().id, topic = label, "publish acknowledged and ignored");
            self.acknowledge(qos, pkid);
            return None;
        }
        if qos == 2 && self.qos2_pending.contains(&pkid) {
            // A re-sent QoS 2 publish we already logged: acknowledge, don't ingest twice.
            self.write(Packet::PubRec(
                PubRec {
                    pkid,
                    reason: PubRecReason::Success,
                },
                None,
            ));
            return None;
        }
        if self.shared.draining.load(Ordering::Acquire) {
            // Not acknowledged, so the device keeps it and retries elsewhere.
            self.disconnect(DisconnectReasonCode::ServerShuttingDown);
            return Some(End::Lost);
        }
        let device = self.device().clone();
        if !self.shared.within_rate(&device) {
            // Not acknowledged either: the device resends after reconnecting.
            self.disconnect(DisconnectReasonCode::MessageRateTooHigh);
            return Some(End::Lost);
        }
        if let Err(reason) = ingest(&self.shared, &device, &topic, &publish.payload, qos > 0) {
            self.disconnect(reason);
            return Some(End::Lost);
        }
        if qos == 2 {
            self.qos2_pending.push(pkid);
        }
        self.acknowledge(qos, pkid);
        None
    }

    /// PUBACK (QoS 1) or PUBREC (QoS 2) of an accepted publish.
    fn acknowledge(&mut self, qos: u8, pkid: u16) {
        match qos {
            1 => self.write(Packet::PubAck(
                PubAck {
                    pkid,
                    reason: PubAckReason::Success,
                },
                None,
            )),
            2 => self.write(Packet::PubRec(
                PubRec {
                    pkid,
                    reason: PubRecReason::Success,
                },
                None,
            )),
            _ => {}
        }
    }

    /// Publishes a downlink to the device at the QoS of its best matching filter.
    fn downlink(&mut self, topic: String, payload: Bytes) {
        self.downlink_with(topic, payload, false);
    }

    /// [`Self::downlink`]; `dup` for a message this session sent before (restored).
    fn downlink_with(&mut self, topic: String, payload: Bytes, dup: bool) {
        let Some(qos) = self
            .filters
            .iter()
            .filter(|(f, _)| crate::downlink::topic_matches(f, &topic))
            .map(|(_, q)| *q)
            .max()
        else {
            return; // unsubscribed meanwhile
        };
        if qos > 0 && self.inflight.len() >= self.limits.max_inflight {
            if self.waiting.len() < MAX_WAITING {
                self.waiting.push_back((topic, payload, dup));
            } else {
                metrics::counter!("tp_downlink_dropped_total").increment(1);
                tracing::warn!(device_id = %self.device().id, "device does not acknowledge downlink; dropping one");
            }
            return;
        }
        self.send_downlink(topic, payload, qos, dup);
    }

    fn send_downlink(&mut self, topic: String, payload: Bytes, qos: u8, dup: bool) {
        let pkid = if qos == 0 {
            0
        } else {
            loop {
                self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
                let candidate = self.next_pkid;
                if !self.inflight.iter().any(|(p, _, _)| *p == candidate) {
                    break candidate;
                }
            }
        };
        let publish = outgoing_publish(&topic, &payload, qos, pkid, dup && qos > 0);
        self.write(Packet::Publish(publish, None));
        if qos > 0 {
            self.inflight.push((pkid, topic, payload));
        }
    }

    /// After the loop: the will, the session's persistence and its registration.
    async fn finish(
        mut self,
        end: End,
        session_expiry: Option<Duration>,
        gone: tokio_util::sync::CancellationToken,
        open: OpenGuard,
    ) {
        let device = self.device().clone();
        let publish_will = match end {
            End::Graceful => false,
            End::GracefulWithWill | End::Lost => true,
            // Taken over by the same device (still there), or revoked (its data is
            // no longer accepted).
            End::Closed(_) => false,
        };
        if publish_will
            && let Some(will) = self.will.take()
            && !self.shared.draining.load(Ordering::Acquire)
        {
            let topic = String::from_utf8_lossy(&will.topic).into_owned();
            match ingest(&self.shared, &device, &topic, &will.message, false) {
                Ok(()) => {
                    tracing::info!(device_id = %device.id, topic = %printable(&topic), "will ingested")
                }
                Err(_) => {
                    tracing::warn!(device_id = %device.id, "will refused (ingest backlog full)")
                }
            }
        }
        let graceful = matches!(end, End::Graceful | End::GracefulWithWill);
        let keep = match end {
            // A revoked device keeps nothing.
            End::Closed(CloseReason::Revoked) => None,
            _ => session_expiry.map(|d| {
                // QoS 1 downlink not acknowledged yet stays with the session: sent
                // again when the device comes back (QoS 0 is never kept).
                let unacked = self
                    .inflight
                    .drain(..)
                    .map(|(_, topic, payload)| (topic, payload, true))
                    .chain(self.waiting.drain(..))
                    .collect();
                let filters = std::mem::take(&mut self.filters);
                (d, KeptSession { filters, unacked })
            }),
        };
        // The slot is free before the session is seen to close, so whoever waits
        // for the close can connect at once.
        drop(open);
        self.shared.unregister(
            device.id,
            &self.client_id,
            self.connection_id,
            graceful,
            keep,
        );
        gone.cancel();
        // Last: a client that sees its socket close may reconnect at once, and must
        // find its client id and session already released (closing first let another
        // device's CONNECT with the same id be refused as a duplicate; CI saw it).
        let _ = self.stream.shutdown().await;
    }
}

/// Hands one accepted device publish to ingest: backlog check, write-ahead log when
/// it will be acknowledged (`logged`), then the ingest queue. On refusal nothing is
/// logged or queued, and the reason code says why.
fn ingest(
    shared: &Shared,
    device: &Device,
    topic: &str,
    payload: &[u8],
    logged: bool,
) -> Result<(), DisconnectReasonCode> {
    let received = now_ms();
    let mut envelope = encode_envelope(device.id, received, topic.as_bytes(), payload);
    let size = ingest_size(&envelope);
    if !shared.admit(size) {
        tracing::debug!(device_id = %device.id, "ingest backlog full; refusing publish");
        return Err(DisconnectReasonCode::ServerBusy);
    }
    // Last, so nothing refused is logged: an acknowledged publish must be in the log
    // before it is acknowledged. QoS 0 is never acknowledged, so it is not logged.
    if logged && let Some(wal) = &shared.wal {
        match wal.append(device.id, received, topic, payload) {
            Ok(segment) => set_envelope_segment(&mut envelope, segment),
            Err(e) => {
                shared.unadmit(size);
                shared.wal_errors.fetch_add(1, Ordering::AcqRel);
                metrics::counter!("tp_wal_append_errors_total").increment(1);
                tracing::error!(device_id = %device.id, error = %e,
                    "cannot log the publish to the write-ahead log; refusing it (not acknowledged)");
                return Err(DisconnectReasonCode::UnspecifiedError);
            }
        }
    }
    shared.ingest(envelope.freeze());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn connect(name: &str, level: u8, client_id: &str) -> BytesMut {
        let mut body = BytesMut::new();
        body.put_u16(name.len() as u16);
        body.put_slice(name.as_bytes());
        body.put_u8(level);
        body.put_u8(0b10); // clean session
        body.put_u16(60);
        if level == 5 {
            body.put_u8(0); // no properties
        }
        body.put_u16(client_id.len() as u16);
        body.put_slice(client_id.as_bytes());
        let mut b = BytesMut::new();
        b.put_u8(0x10);
        put_varint(&mut b, body.len());
        b.unsplit(body);
        b
    }

    #[test]
    fn the_protocol_level_comes_from_connect() {
        let mut v4 = connect("MQTT", 4, "a");
        assert!(matches!(read_start(&mut v4), Start::Connect(Codec::V4)));
        let mut v5 = connect("MQTT", 5, "a");
        assert!(matches!(read_start(&mut v5), Start::Connect(Codec::V5)));
        let mut v6 = connect("MQTT", 6, "a");
        assert!(matches!(read_start(&mut v6), Start::UnsupportedLevel(6)));
        let mut not = BytesMut::from(&[0x30u8, 0x00][..]);
        assert!(matches!(read_start(&mut not), Start::NotConnect));
        let whole = connect("MQTT", 4, "abc");
        for cut in 0..7 {
            let mut part = BytesMut::from(&whole[..cut]);
            assert!(matches!(read_start(&mut part), Start::Incomplete), "{cut}");
        }
    }

    #[test]
    fn an_mqtt_3_1_connect_is_read_as_3_1_1() {
        let mut b = connect("MQIsdp", 3, "legacy-client");
        assert!(matches!(read_start(&mut b), Start::Connect(Codec::V4)));
        let packet = V4.read_mut(&mut b, 1024).unwrap();
        let Packet::Connect(c, ..) = packet else {
            panic!("not a connect")
        };
        assert_eq!(c.client_id, "legacy-client");
        assert_eq!(c.keep_alive, 60);
        assert!(b.is_empty());
    }

    #[test]
    fn an_mqtt_3_1_connect_shorter_than_its_header_is_refused() {
        // Found by the mqtt_connection fuzz target: remaining length 1 with a whole
        // `MQIsdp` header behind it underflowed `remaining - 2` (a panic in debug
        // builds, a 10-byte varint in release ones).
        for remaining in [0u8, 1, 2, 8] {
            let mut b = BytesMut::from(&[0x10, remaining][..]);
            b.put_u16(6);
            b.put_slice(b"MQIsdp");
            b.put_u8(3);
            b.put_slice(&[0xc2, 0x00, 0x3c, 0x00, 0x01, b'a']);
            assert!(
                matches!(read_start(&mut b), Start::NotConnect),
                "{remaining}"
            );
        }
        // The smallest one that holds its header is still read as 3.1.1.
        let mut b = connect("MQIsdp", 3, "");
        assert!(matches!(read_start(&mut b), Start::Connect(Codec::V4)));
    }

    #[test]
    fn publish_ids_are_read_from_the_header() {
        let p = outgoing_publish("devices/telemetry", b"{}", 1, 7, false);
        let mut b = BytesMut::new();
        V4.write(Packet::Publish(p, None), &mut b).unwrap();
        assert_eq!(publish_ids(&b), Some((1, 7)));
        let p = outgoing_publish("t", b"x", 0, 0, false);
        let mut b = BytesMut::new();
        V4.write(Packet::Publish(p, None), &mut b).unwrap();
        assert_eq!(publish_ids(&b), Some((0, 0)));
        assert_eq!(publish_ids(&b[..2]), None);
    }

    #[test]
    fn server_only_packets_from_an_mqtt_5_client_are_errors_not_panics() {
        // Found by the mqtt_connection fuzz target: rumqttd's V5 reader reaches
        // `unreachable!()` on a CONNACK or UNSUBACK that has a body, which ended
        // the connection's task without its cleanup (client id left registered).
        for first in [0x20u8, 0xB0] {
            for codec in [Codec::V5, Codec::V4] {
                let mut b = BytesMut::from(&[first, 0x03, 0x00, 0x01, 0x00][..]);
                let _ = codec.read(&mut b, 1024);
            }
            let mut b = BytesMut::from(&[first, 0x03, 0x00, 0x01, 0x00][..]);
            assert!(matches!(
                Codec::V5.read(&mut b, 1024),
                Err(ProtoError::InvalidPacketType(_))
            ));
        }
        let mut ping = BytesMut::from(&[0xC0u8, 0x00][..]);
        assert!(matches!(
            Codec::V5.read(&mut ping, 1024),
            Ok(Packet::PingReq(_))
        ));
    }

    #[test]
    fn log_fields_are_escaped() {
        assert_eq!(printable("a\nb\u{1b}"), "a\\nb\\u{1b}");
    }

    proptest! {
        /// Any bytes at the start of a connection: no panic, and a CONNECT is
        /// only reported when the codec then decodes one.
        #[test]
        fn any_start_of_a_stream_is_handled(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut b = BytesMut::from(&bytes[..]);
            if let Start::Connect(codec) = read_start(&mut b) {
                let _ = codec.read(&mut b, 1024);
            }
        }

        #[test]
        fn varints_round_trip(value in 0usize..268_435_455) {
            let mut b = BytesMut::new();
            put_varint(&mut b, value);
            prop_assert_eq!(varint(&b, 0), Some(Ok((value, b.len()))));
        }
    }
}

//! The CoAP device API (RFC 7252 over UDP), for constrained devices: the operations of
//! the [HTTP device API](crate::http) on a UDP socket, enabled by
//! [`BrokerConfig::coap_listen`](crate::BrokerConfig::coap_listen) (the standard CoAP
//! port is 5683, e.g. `mqtt.coap_listen = "0.0.0.0:5683"`).
//!
//! # Resources
//!
//! | request | payload | success |
//! |---|---|---|
//! | `POST /telemetry` | as MQTT `devices/telemetry`: flat object, `{"ts","values"}` or an array of those | 2.04 Changed |
//! | `POST /attributes` | flat object | 2.04 Changed |
//! | `POST /event` (optional query `mid=<message id>`) | `{"method","params"}` | 2.04 Changed |
//! | `GET /commands` | - | 2.05 Content: `{"result":0,"commands":[..]}` |
//! | `POST /commands/<message_id>/response` | response object `{"result":0,..}` | 2.04 Changed |
//!
//! # Authentication
//!
//! CoAP has no standard authentication, so every request carries the device's MQTT
//! credentials as URI queries: `coap://host:5683/telemetry?u=<username>&p=<password>`
//! (an `ACCESSTOKEN` device: `?u=<token>` alone).
//! They are checked like an MQTT CONNECT. Plain CoAP is not encrypted: use it on
//! trusted networks (or behind a DTLS-terminating proxy).
//!
//! # Messages
//!
//! Confirmable requests are answered with a piggybacked ACK (same message id and
//! token), non-confirmable ones with a non-confirmable response. A retransmitted
//! request (same peer and message id within the exchange lifetime) is answered with
//! the first answer and not processed again. Payloads are JSON (any Content-Format is
//! read as JSON); every answer to an authenticated request carries ThingsPanel's
//! response object as `application/json`. A request refused before its credentials
//! were accepted gets the response code alone, no payload: its source address may be
//! spoofed, and an answer larger than the request would make this server an
//! amplifier in a reflection attack. Errors: 4.00 Bad Request (bad payload, naming the problem),
//! 4.01 Unauthorized (missing or wrong credentials), 4.02 Bad Option (an unsupported
//! critical option), 4.04 Not Found (unknown resource or `message_id`), 4.05 Method
//! Not Allowed, 4.13 Request Entity Too Large (over `max_payload_size`, or block-wise
//! transfer, which is not supported: a request must fit one datagram), 4.22
//! Unprocessable Entity (the device template rejects a value, naming the key;
//! nothing of the message was stored), 5.03 Service
//! Unavailable (draining or a store down). A CoAP ping (empty confirmable message)
//! gets a reset. Datagrams that are not CoAP requests are dropped with a log line.
//!
//! `GET /commands` marks the pending downlink it returns as `sent`; it returns as many
//! as fit in about 1 KiB (at least one), so poll until the list is empty.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coap_lite::{
    CoapOption, ContentFormat, MessageClass, MessageType, Packet, RequestType, ResponseType,
};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tp_core::protocol::{ResponseObject, decode_event, validate_message_id};
use tp_core::{Device, now_ms};

use crate::DeviceApi;
use crate::downlink::poll_pending;
use crate::session::Refused;

/// RFC 7252 EXCHANGE_LIFETIME: how long a message id identifies a retransmission.
const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);
/// Most remembered exchanges (answers to retransmissions); the oldest go first.
const MAX_REMEMBERED: usize = 4096;
/// Datagrams handled concurrently; further ones wait in the socket buffer.
const MAX_IN_FLIGHT: usize = 256;
/// Payload budget of a `GET /commands` answer.
const COMMANDS_BUDGET: usize = 1024;
/// Largest answer datagram.
const MAX_ANSWER: usize = 64_000;
/// Options understood (the critical ones among them are handled, the others ignored).
const KNOWN_OPTIONS: [u16; 8] = [
    3,  // Uri-Host
    7,  // Uri-Port
    11, // Uri-Path
    12, // Content-Format
    14, // Max-Age
    15, // Uri-Query
    17, // Accept
    60, // Size1
];
/// Block1: the request body comes in blocks.
const BLOCK1: u16 = 27;

/// Serves `handler` on `socket` until the task is aborted. A datagram that cannot be
/// read is logged and skipped; nothing a peer sends ends the loop.
pub(crate) async fn serve(handler: CoapHandler, socket: UdpSocket) {
    let handler = Arc::new(handler);
    let socket = Arc::new(socket);
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // e.g. ICMP port unreachable from an earlier answer; keep serving
                tracing::debug!(error = %e, "CoAP receive failed");
                continue;
            }
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let datagram = buf[..n].to_vec();
        let (handler, socket) = (handler.clone(), socket.clone());
        tokio::spawn(async move {
            if let Some(answer) = handler.handle(peer, &datagram).await
                && let Err(e) = socket.send_to(&answer, peer).await
            {
                tracing::debug!(%peer, error = %e, "cannot send CoAP answer");
            }
            drop(permit);
        });
    }
}

/// Answers of recent exchanges, so a retransmission is not processed twice.
#[derive(Debug, Default)]
struct Exchanges {
    /// `None` while the first copy is being processed.
    answers: HashMap<(SocketAddr, u16), Option<Vec<u8>>>,
    order: VecDeque<(Instant, (SocketAddr, u16))>,
}

enum Seen {
    New,
    InProgress,
    Answered(Vec<u8>),
}

impl Exchanges {
    fn begin(&mut self, key: (SocketAddr, u16), now: Instant) -> Seen {
        while let Some(&(at, old)) = self.order.front() {
            if now.duration_since(at) < EXCHANGE_LIFETIME && self.order.len() < MAX_REMEMBERED {
                break;
            }
            self.order.pop_front();
            self.answers.remove(&old);
        }
        match self.answers.get(&key) {
            Some(Some(answer)) => Seen::Answered(answer.clone()),
            Some(None) => Seen::InProgress,
            None => {
                self.answers.insert(key, None);
                self.order.push_back((now, key));
                Seen::New
            }
        }
    }

    fn finish(&mut self, key: (SocketAddr, u16), answer: Option<&[u8]>) {
        match answer {
            Some(a) => {
                if let Some(slot) = self.answers.get_mut(&key) {
                    *slot = Some(a.to_vec());
                }
            }
            None => {
                self.answers.remove(&key);
            }
        }
    }
}

/// Handles CoAP datagrams for the device API (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct CoapHandler {
    api: DeviceApi,
    exchanges: Mutex<Exchanges>,
    next_message_id: AtomicU16,
}

/// What went wrong with a request: the CoAP code and a message for the device.
struct Refusal(ResponseType, &'static str, String);

impl From<tp_core::Error> for Refusal {
    fn from(e: tp_core::Error) -> Self {
        use tp_core::Error as E;
        match e {
            E::Invalid { .. } => {
                Refusal(ResponseType::BadRequest, "invalid_payload", e.to_string())
            }
            E::NotFound { .. } => Refusal(ResponseType::NotFound, "not_found", e.to_string()),
            // The thing model refused a value (the message names the key).
            E::Unprocessable { .. } => Refusal(
                ResponseType::UnprocessableEntity,
                "thing_model_violation",
                e.to_string(),
            ),
            e if e.is_retryable() => {
                tracing::warn!(error = %e, "CoAP device API: backend unavailable");
                Refusal(
                    ResponseType::ServiceUnavailable,
                    "unavailable",
                    "try again later".into(),
                )
            }
            e => {
                tracing::error!(error = %e, "CoAP device request failed");
                Refusal(
                    ResponseType::InternalServerError,
                    "internal",
                    "internal error".into(),
                )
            }
        }
    }
}

/// The resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Telemetry,
    Attributes,
    Event,
    Commands,
    Response,
}

impl CoapHandler {
    pub(crate) fn new(api: DeviceApi) -> Self {
        Self {
            api,
            exchanges: Mutex::default(),
            next_message_id: AtomicU16::new(rand_u16()),
        }
    }

    /// Handles one datagram from `peer`; returns the answer datagram, if any.
    pub(crate) async fn handle(&self, peer: SocketAddr, datagram: &[u8]) -> Option<Vec<u8>> {
        let request = match Packet::from_bytes(datagram) {
            Ok(p) if p.header.get_version() == 1 => p,
            Ok(_) => return drop_datagram(peer, "unknown CoAP version"),
            Err(e) => return drop_datagram(peer, &e.to_string()),
        };
        let kind = request.header.get_type();
        match (request.header.code, kind) {
            // CoAP ping: an empty confirmable message is answered with a reset.
            (MessageClass::Empty, MessageType::Confirmable) => {
                let mut reset = Packet::new();
                reset.header.set_version(1);
                reset.header.set_type(MessageType::Reset);
                reset.header.code = MessageClass::Empty;
                reset.header.message_id = request.header.message_id;
                return reset.to_bytes().ok();
            }
            (MessageClass::Request(_), MessageType::Confirmable | MessageType::NonConfirmable) => {}
            (MessageClass::Reserved(c), MessageType::Confirmable | MessageType::NonConfirmable)
                if c >> 5 == 0 =>
            {
                // an unknown method code (class 0)
            }
            _ => return drop_datagram(peer, "not a CoAP request"),
        }

        let key = (peer, request.header.message_id);
        let seen = self
            .exchanges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .begin(key, Instant::now());
        match seen {
            Seen::New => {}
            Seen::InProgress => return None,
            Seen::Answered(answer) => return Some(answer),
        }
        let mut authenticated = false;
        let (code, body) = match self.respond(&request, &mut authenticated).await {
            Ok((code, body)) => (code, body),
            Err(Refusal(code, errcode, message)) => {
                let body = ResponseObject {
                    result: 1,
                    errcode: Some(errcode.to_owned()),
                    message: Some(message),
                    ts: Some(now_ms() / 1000),
                    method: None,
                };
                (code, body.encode())
            }
        };
        // Never more bytes to an unverified sender than it sent (no amplification).
        let body = if authenticated { body } else { Vec::new() };
        let answer = self.answer(&request, code, body);
        self.exchanges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .finish(key, answer.as_deref());
        answer
    }

    /// Encodes the answer to `request`: a piggybacked ACK to a confirmable request, a
    /// non-confirmable response (fresh message id) to a non-confirmable one.
    fn answer(&self, request: &Packet, code: ResponseType, body: Vec<u8>) -> Option<Vec<u8>> {
        let mut packet = Packet::new();
        packet.header.set_version(1);
        if request.header.get_type() == MessageType::Confirmable {
            packet.header.set_type(MessageType::Acknowledgement);
            packet.header.message_id = request.header.message_id;
        } else {
            packet.header.set_type(MessageType::NonConfirmable);
            packet.header.message_id = self.next_message_id.fetch_add(1, Ordering::Relaxed);
        }
        packet.header.code = MessageClass::Response(code);
        packet.set_token(request.get_token().to_vec());
        if !body.is_empty() {
            packet.set_content_format(ContentFormat::ApplicationJSON);
        }
        packet.payload = body;
        match packet.to_bytes_with_limit(MAX_ANSWER) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode CoAP answer");
                None
            }
        }
    }

    /// Routes, authenticates and processes a request.
    /// Sets `authenticated` once the request's credentials are accepted.
    async fn respond(
        &self,
        request: &Packet,
        authenticated: &mut bool,
    ) -> Result<(ResponseType, Vec<u8>), Refusal> {
        let bad_request = |m: String| Refusal(ResponseType::BadRequest, "invalid_payload", m);
        for (&number, _) in request.options() {
            if number == BLOCK1 {
                return Err(Refusal(
                    ResponseType::RequestEntityTooLarge,
                    "payload_too_large",
                    "block-wise transfer is not supported; send the payload in one datagram".into(),
                ));
            }
            if number % 2 == 1 && !KNOWN_OPTIONS.contains(&number) {
                return Err(Refusal(
                    ResponseType::BadOption,
                    "bad_option",
                    format!("unsupported critical option {number}"),
                ));
            }
        }
        let path = strings(request, CoapOption::UriPath)
            .ok_or_else(|| bad_request("Uri-Path must be UTF-8".into()))?;
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        let (resource, method, mid) = match path.as_slice() {
            ["telemetry"] => (Resource::Telemetry, RequestType::Post, None),
            ["attributes"] => (Resource::Attributes, RequestType::Post, None),
            ["event"] => (Resource::Event, RequestType::Post, None),
            ["commands"] => (Resource::Commands, RequestType::Get, None),
            ["commands", mid, "response"] => (Resource::Response, RequestType::Post, Some(*mid)),
            _ => {
                return Err(Refusal(
                    ResponseType::NotFound,
                    "not_found",
                    format!("no resource /{}", path.join("/")),
                ));
            }
        };
        if request.header.code != MessageClass::Request(method) {
            return Err(Refusal(
                ResponseType::MethodNotAllowed,
                "method_not_allowed",
                format!("use {method:?} on /{}", path.join("/")),
            ));
        }
        let queries = strings(request, CoapOption::UriQuery)
            .ok_or_else(|| bad_request("Uri-Query must be UTF-8".into()))?;
        let query = |name: &str| {
            queries
                .iter()
                .find_map(|q| q.strip_prefix(name)?.strip_prefix('='))
        };
        let device = self.authenticate(query("u"), query("p")).await?;
        *authenticated = true;
        let shared = &self.api.shared;
        if shared.draining.load(Ordering::Acquire) {
            return Err(Refusal(
                ResponseType::ServiceUnavailable,
                "unavailable",
                "the node is shutting down; try again later".into(),
            ));
        }
        let payload = &request.payload;
        if payload.len() > self.api.max_payload_size {
            return Err(Refusal(
                ResponseType::RequestEntityTooLarge,
                "payload_too_large",
                format!("payload larger than {} bytes", self.api.max_payload_size),
            ));
        }
        let uplinks = &self.api.uplinks;
        let now = now_ms();
        let changed = |method| {
            (
                ResponseType::Changed,
                ResponseObject::success(now, method).encode(),
            )
        };
        let answer = match resource {
            Resource::Telemetry => {
                // Logged before it is queued: the answer promises it is stored.
                let _logged = uplinks.log(device.id, "devices/telemetry", payload, now)?;
                uplinks.telemetry(device.id, payload, now).await?;
                changed(None)
            }
            Resource::Attributes => {
                uplinks.attributes(device.id, payload, now).await?;
                changed(None)
            }
            Resource::Event => {
                let mid = match query("mid") {
                    Some(mid) => {
                        validate_message_id(mid)?;
                        mid.to_owned()
                    }
                    None => crate::downlink::new_message_id(),
                };
                let call = decode_event(payload)?;
                let method = call.method.clone();
                let _logged =
                    uplinks.log(device.id, &format!("devices/event/{mid}"), payload, now)?;
                uplinks.event(device.id, &mid, call, now).await?;
                changed(Some(method))
            }
            Resource::Commands => {
                let commands =
                    poll_pending(shared.metadata.as_ref(), &device, Some(COMMANDS_BUDGET)).await?;
                let body = serde_json::json!({"result": 0, "commands": commands});
                (
                    ResponseType::Content,
                    serde_json::to_vec(&body).unwrap_or_default(),
                )
            }
            Resource::Response => {
                let mid = mid.unwrap_or_default();
                validate_message_id(mid)?;
                uplinks.response(device.id, mid, payload, now).await?;
                changed(None)
            }
        };
        metrics::counter!("tp_device_api_messages_total", "transport" => "coap", "kind" => resource.name())
            .increment(1);
        Ok(answer)
    }

    async fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<Device, Refusal> {
        let unauthorized = |m: &str| Refusal(ResponseType::Unauthorized, "unauthorized", m.into());
        // An access token is the username alone (`?u=<token>`).
        let (Some(username), password) = (username, password.unwrap_or_default()) else {
            return Err(unauthorized(
                "credentials required as URI queries u=<username>&p=<password> (or u=<access token>)",
            ));
        };
        match self.api.shared.check_credentials(username, password).await {
            // The same per-device budget as MQTT publishes (`max_messages_per_second`).
            Ok(device) if !self.api.shared.within_rate(&device) => Err(Refusal(
                ResponseType::TooManyRequests,
                "rate_limited",
                "the device exceeds max_messages_per_second; retry later".into(),
            )),
            Ok(device) => {
                self.api.uplinks.activity(device.id);
                Ok(Device::clone(&device))
            }
            Err(Refused::Store(e)) => Err(e.into()),
            Err(refused) => {
                metrics::counter!("tp_device_api_auth_refused_total", "transport" => "coap", "reason" => refused.reason())
                    .increment(1);
                tracing::info!(login = %crate::connection::login_hint(username), reason = refused.reason(), "CoAP device request refused");
                Err(unauthorized("wrong device credentials"))
            }
        }
    }
}

impl Resource {
    fn name(self) -> &'static str {
        match self {
            Self::Telemetry => "telemetry",
            Self::Attributes => "attributes",
            Self::Event => "event",
            Self::Commands => "commands",
            Self::Response => "command_response",
        }
    }
}

/// The values of a repeatable string option; `None` if one is not UTF-8.
fn strings(packet: &Packet, option: CoapOption) -> Option<Vec<String>> {
    let Some(values) = packet.get_option(option) else {
        return Some(Vec::new());
    };
    values
        .iter()
        .map(|v| String::from_utf8(v.clone()).ok())
        .collect()
}

fn drop_datagram(peer: SocketAddr, why: &str) -> Option<Vec<u8>> {
    metrics::counter!("tp_coap_dropped_total").increment(1);
    tracing::info!(%peer, reason = why, "dropped a datagram that is not a CoAP request");
    None
}

/// A random start for message ids of non-confirmable answers.
fn rand_u16() -> u16 {
    let b = uuid::Uuid::new_v4();
    u16::from_le_bytes([b.as_bytes()[0], b.as_bytes()[1]])
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use proptest::prelude::*;

    use super::*;

    struct Fixture {
        rt: tokio::runtime::Runtime,
        // keeps the broker (and its stores) alive
        _broker: crate::EmbeddedBroker,
        handler: CoapHandler,
        username: String,
        password: String,
    }

    /// One broker over in-memory stores with one device, shared by all cases.
    fn fixture() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let (broker, username, password) = rt.block_on(async {
                let metadata = tp_storage::open_metadata("sqlite::memory:").await.unwrap();
                let ts = tp_storage::open_timeseries("sqlite::memory:")
                    .await
                    .unwrap();
                let writer = Arc::new(tp_storage::writer::BatchWriter::spawn(
                    ts,
                    Default::default(),
                ));
                let cache = tp_storage::open_cache("memory://").await.unwrap();
                let tenant = tp_core::Tenant {
                    id: tp_core::TenantId::new(),
                    name: "t".into(),
                    created_at: now_ms(),
                };
                metadata.create_tenant(&tenant).await.unwrap();
                let (device, password) = Device::new(tenant.id, "d".into(), None);
                metadata.create_device(&device).await.unwrap();
                let config = crate::BrokerConfig {
                    listen: "127.0.0.1:0".parse().unwrap(),
                    max_payload_size: 512,
                    ..Default::default()
                };
                let broker = crate::EmbeddedBroker::start(
                    &config,
                    crate::BrokerDeps {
                        metadata,
                        cache,
                        writer,
                    },
                )
                .await
                .unwrap();
                (broker, device.credentials.username.clone(), password)
            });
            let handler = CoapHandler::new(broker.device_api.clone());
            Fixture {
                rt,
                _broker: broker,
                handler,
                username,
                password,
            }
        })
    }

    fn handle(datagram: &[u8]) -> Option<Vec<u8>> {
        let f = fixture();
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let answer = f.rt.block_on(f.handler.handle(peer, datagram));
        if let Some(a) = &answer {
            // whatever we send is a well-formed CoAP message
            assert!(Packet::from_bytes(a).is_ok());
        }
        answer
    }

    fn option_strategy() -> impl Strategy<Value = (u16, Vec<u8>)> {
        let f = fixture();
        let user = format!("u={}", f.username).into_bytes();
        let pass = format!("p={}", f.password).into_bytes();
        prop_oneof![
            1 => (
                Just(11u16),
                prop::sample::select(vec![
                    b"telemetry".to_vec(),
                    b"attributes".to_vec(),
                    b"event".to_vec(),
                    b"commands".to_vec(),
                    b"response".to_vec(),
                    b"m1".to_vec(),
                    vec![0xff, 0xfe],
                ])
            ),
            3 => (
                Just(15u16),
                prop::sample::select(vec![
                    user,
                    pass,
                    b"mid=e/1".to_vec(),
                    b"mid=x".to_vec(),
                    b"u=".to_vec()
                ])
            ),
            // mostly elective (even) options, so most requests get past option checks
            3 => (
                prop_oneof![4 => (0u16..35).prop_map(|n| n * 2), 1 => 0u16..70],
                prop::collection::vec(any::<u8>(), 0..16)
            ),
        ]
    }

    fn payload_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..600),
            r#"[\[\]{}":,0-9a-z.\-ts ]{0,80}"#.prop_map(String::into_bytes),
            Just(br#"{"temp":1.5}"#.to_vec()),
            Just(br#"{"method":"m","params":{}}"#.to_vec()),
            Just(br#"{"result":0}"#.to_vec()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_datagrams_never_panic(datagram in prop::collection::vec(any::<u8>(), 0..700)) {
            handle(&datagram);
        }

        #[test]
        fn arbitrary_requests_never_panic(
            kind in 0u8..4,
            code in prop_oneof![6 => 1u8..=2, 1 => 3u8..=7, 1 => any::<u8>()],
            path in prop::sample::select(vec![
                "telemetry", "attributes", "event", "commands", "commands/m1/response",
                "commands/a+b/response", "", "other",
            ]),
            creds in any::<bool>(),
            message_id in any::<u16>(),
            token in prop::collection::vec(any::<u8>(), 0..=8),
            options in prop::collection::vec(option_strategy(), 0..4),
            payload in payload_strategy(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        ) {
            let mut packet = Packet::new();
            packet.header.set_version(1);
            packet.header.set_type(match kind {
                0 => MessageType::Confirmable,
                1 => MessageType::NonConfirmable,
                2 => MessageType::Acknowledgement,
                _ => MessageType::Reset,
            });
            packet.header.code = MessageClass::from(code);
            packet.header.message_id = message_id;
            packet.set_token(token);
            for seg in path.split('/').filter(|s| !s.is_empty()) {
                packet.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
            }
            if creds {
                let f = fixture();
                packet.add_option(CoapOption::UriQuery, format!("u={}", f.username).into_bytes());
                packet.add_option(CoapOption::UriQuery, format!("p={}", f.password).into_bytes());
            }
            for (number, value) in options {
                packet.add_option(CoapOption::from(number), value);
            }
            packet.payload = payload;
            if let Ok(mut bytes) = packet.to_bytes_unlimited() {
                handle(&bytes);
                // and corrupted copies of it
                for (at, byte) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                handle(&bytes);
            }
        }
    }

    #[test]
    fn retransmissions_are_answered_once() {
        let mut ex = Exchanges::default();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let t0 = Instant::now();
        assert!(matches!(ex.begin((peer, 1), t0), Seen::New));
        assert!(matches!(ex.begin((peer, 1), t0), Seen::InProgress));
        ex.finish((peer, 1), Some(b"a"));
        assert!(matches!(ex.begin((peer, 1), t0), Seen::Answered(a) if a == b"a"));
        assert!(matches!(ex.begin((peer, 2), t0), Seen::New));
        // forgotten after the exchange lifetime
        let later = t0 + EXCHANGE_LIFETIME + Duration::from_secs(1);
        assert!(matches!(ex.begin((peer, 1), later), Seen::New));
    }
}

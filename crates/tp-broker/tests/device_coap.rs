//! The CoAP device API over a real UDP socket: libcoap's `coap-client` (Debian
//! package libcoap3-bin) and a coap-lite client on a tokio `UdpSocket`.

use std::net::SocketAddr;
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use serde_json::{Value as Json, json};
use tokio::net::UdpSocket;
use tp_broker::testing::TestBroker;
use tp_core::{
    CommandId, CommandKind, CommandLog, CommandStatus, Device, Order, TsQuery, Value, now_ms,
};

/// Bound on waiting for an answer (not a timing assertion: a missing answer fails).
const ANSWER: Duration = Duration::from_secs(10);

async fn start(max_payload_size: usize) -> (TestBroker, SocketAddr) {
    let node = TestBroker::start(|c| {
        c.coap_listen = Some("127.0.0.1:0".parse().unwrap());
        c.max_payload_size = max_payload_size;
    })
    .await;
    let addr = node.broker.coap_addr().expect("CoAP bound");
    (node, addr)
}

fn query(device: &Device, password: &str) -> String {
    format!("u={}&p={}", device.credentials.username, password)
}

/// libcoap's client: `coap-client`, or one of Debian's per-TLS-library builds.
fn coap_client() -> Option<&'static str> {
    [
        "coap-client",
        "coap-client-notls",
        "coap-client-openssl",
        "coap-client-gnutls",
    ]
    .into_iter()
    .find(|bin| std::process::Command::new(bin).arg("-h").output().is_ok())
}

async fn run_coap_client(bin: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new(bin)
        .args(args)
        .output()
        .await
        .expect("coap-client runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcoap_client_posts_telemetry_and_polls_commands() {
    let Some(bin) = coap_client() else {
        if std::env::var_os("TP_REQUIRE_SERVICES").is_some() {
            panic!("coap-client not found (apt-get install -y libcoap3-bin)");
        }
        eprintln!("skipping: coap-client not found (apt-get install -y libcoap3-bin)");
        return;
    };
    let (node, addr) = start(256 * 1024).await;
    let (device, password) = node.create_device().await;
    let q = query(&device, &password);

    let out = run_coap_client(
        bin,
        &[
            "-m",
            "post",
            "-B",
            "10",
            "-t",
            "json",
            "-e",
            r#"{"t":1,"hum":45.5,"on":false,"name":"lab"}"#,
            &format!("coap://{addr}/telemetry?{q}"),
        ],
    )
    .await;
    assert!(out.contains(r#""result":0"#), "coap-client said: {out}");
    let out = run_coap_client(
        bin,
        &[
            "-m",
            "post",
            "-B",
            "10",
            "-e",
            r#"[{"ts":1700000000000,"values":{"t":2}}]"#,
            &format!("coap://{addr}/telemetry?{q}"),
        ],
    )
    .await;
    assert!(out.contains(r#""result":0"#), "coap-client said: {out}");
    node.writer.flush().await.unwrap();
    let latest = node.timeseries.latest(device.id, None).await.unwrap();
    let mut got: Vec<_> = latest.into_iter().map(|kv| (kv.key, kv.value)).collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("hum".to_owned(), Value::Float(45.5)),
            ("name".to_owned(), Value::String("lab".into())),
            ("on".to_owned(), Value::Bool(false)),
            ("t".to_owned(), Value::Integer(1)),
        ]
    );
    let history = node
        .timeseries
        .query(&TsQuery {
            device_id: device.id,
            keys: vec!["t".into()],
            start: 1_700_000_000_000,
            end: 1_700_000_000_001,
            aggregation: None,
            limit: None,
            order: Order::Asc,
        })
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].value, Value::Integer(2));

    // wrong password: 4.01, nothing stored
    let out = run_coap_client(
        bin,
        &[
            "-m",
            "post",
            "-B",
            "10",
            "-e",
            r#"{"x":1}"#,
            &format!(
                "coap://{addr}/telemetry?u={}&p=wrong",
                device.credentials.username
            ),
        ],
    )
    .await;
    assert!(out.contains("4.01"), "coap-client said: {out}");

    // a queued command reaches the polling device
    node.metadata
        .create_command(&command_row(&device, "c7"))
        .await
        .unwrap();
    let out = run_coap_client(
        bin,
        &[
            "-m",
            "get",
            "-B",
            "10",
            &format!("coap://{addr}/commands?{q}"),
        ],
    )
    .await;
    assert!(
        out.contains(r#""message_id":"c7""#),
        "coap-client said: {out}"
    );
    let row = node
        .metadata
        .get_command_by_message_id(device.id, "c7")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, CommandStatus::Sent);
    node.writer.flush().await.unwrap();
    let keys = node.timeseries.latest(device.id, None).await.unwrap();
    assert!(keys.iter().all(|kv| kv.key != "x"));
}

fn command_row(device: &Device, mid: &str) -> CommandLog {
    let now = now_ms();
    CommandLog {
        id: CommandId::new(),
        tenant_id: device.tenant_id,
        device_id: device.id,
        message_id: mid.into(),
        kind: CommandKind::Command,
        payload: json!({"method":"Reboot","params":{"delay":5}}),
        status: CommandStatus::Pending,
        response: None,
        created_at: now,
        updated_at: now,
        expires_at: None,
        published: None,
    }
}

/// A coap-lite client on a real UDP socket.
struct Client {
    socket: UdpSocket,
    server: SocketAddr,
    next_id: u16,
}

impl Client {
    async fn new(server: SocketAddr) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        Self {
            socket,
            server,
            next_id: 100,
        }
    }

    fn request(
        &mut self,
        kind: MessageType,
        method: RequestType,
        path: &str,
        queries: &[String],
        payload: &[u8],
    ) -> Packet {
        let mut p = Packet::new();
        p.header.set_version(1);
        p.header.set_type(kind);
        p.header.code = MessageClass::Request(method);
        self.next_id += 1;
        p.header.message_id = self.next_id;
        p.set_token(self.next_id.to_be_bytes().to_vec());
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
        }
        for q in queries {
            p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
        }
        p.payload = payload.to_vec();
        p
    }

    async fn send_raw(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.server).await.unwrap();
    }

    async fn recv(&self) -> Packet {
        let mut buf = vec![0u8; 65_536];
        let (n, _) = tokio::time::timeout(ANSWER, self.socket.recv_from(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        Packet::from_bytes(&buf[..n]).expect("a CoAP answer")
    }

    /// Sends `p` and returns its answer (asserting it belongs to `p`).
    async fn exchange(&self, p: &Packet) -> (ResponseType, Json) {
        self.send_raw(&p.to_bytes().unwrap()).await;
        let answer = self.recv().await;
        assert_eq!(answer.get_token(), p.get_token(), "answer to this request");
        if p.header.get_type() == MessageType::Confirmable {
            assert_eq!(answer.header.get_type(), MessageType::Acknowledgement);
            assert_eq!(answer.header.message_id, p.header.message_id);
        } else {
            assert_eq!(answer.header.get_type(), MessageType::NonConfirmable);
        }
        let MessageClass::Response(code) = answer.header.code else {
            panic!("not a response: {:?}", answer.header.code);
        };
        let body = serde_json::from_slice(&answer.payload).unwrap_or(Json::Null);
        (code, body)
    }

    async fn call(
        &mut self,
        method: RequestType,
        path: &str,
        queries: &[String],
        payload: &str,
    ) -> (ResponseType, Json) {
        let p = self.request(
            MessageType::Confirmable,
            method,
            path,
            queries,
            payload.as_bytes(),
        );
        self.exchange(&p).await
    }
}

fn creds(device: &Device, password: &str) -> Vec<String> {
    vec![
        format!("u={}", device.credentials.username),
        format!("p={password}"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmable_requests_are_acknowledged_and_errors_are_4xx() {
    let (node, addr) = start(256).await;
    let (device, password) = node.create_device().await;
    let ok = creds(&device, &password);
    let mut c = Client::new(addr).await;
    use RequestType::{Get, Post, Put};

    // confirmable: piggybacked ACK with 2.04
    let (code, body) = c.call(Post, "/telemetry", &ok, r#"{"temp":21.5}"#).await;
    assert_eq!(code, ResponseType::Changed, "{body}");
    assert_eq!(body["result"], 0);
    // non-confirmable: a non-confirmable answer
    let p = c.request(
        MessageType::NonConfirmable,
        Post,
        "/telemetry",
        &ok,
        br#"{"ts":1700000000000,"values":{"temp":19}}"#,
    );
    assert_eq!(c.exchange(&p).await.0, ResponseType::Changed);
    // a retransmission (same message id) gets the same answer and is stored once
    let p = c.request(
        MessageType::Confirmable,
        Post,
        "/telemetry",
        &ok,
        br#"{"ts":1700000001000,"values":{"temp":20}}"#,
    );
    assert_eq!(c.exchange(&p).await.0, ResponseType::Changed);
    assert_eq!(c.exchange(&p).await.0, ResponseType::Changed);

    let (code, _) = c.call(Post, "/attributes", &ok, r#"{"fw":"2.0"}"#).await;
    assert_eq!(code, ResponseType::Changed);
    let mut with_mid = ok.clone();
    with_mid.push("mid=e1".into());
    let (code, body) = c
        .call(
            Post,
            "/event",
            &with_mid,
            r#"{"method":"alarm","params":{"a":1}}"#,
        )
        .await;
    assert_eq!(code, ResponseType::Changed);
    assert_eq!(body["method"], "alarm");

    // errors
    let (code, body) = c.call(Post, "/telemetry", &ok, "not json").await;
    assert_eq!(code, ResponseType::BadRequest);
    assert!(
        body["message"].as_str().unwrap().contains("not valid JSON"),
        "{body}"
    );
    let (code, _) = c.call(Post, "/event", &ok, r#"{"params":{}}"#).await;
    assert_eq!(code, ResponseType::BadRequest);
    let bad = creds(&device, "wrong");
    let (code, body) = c.call(Post, "/telemetry", &bad, r#"{"x":1}"#).await;
    assert_eq!(code, ResponseType::Unauthorized);
    // Refused before its credentials were accepted: the code alone, no payload.
    assert_eq!(body, Json::Null);
    let (code, _) = c.call(Post, "/telemetry", &[], r#"{"x":1}"#).await;
    assert_eq!(code, ResponseType::Unauthorized);
    let (code, _) = c.call(Post, "/nope", &ok, r#"{"x":1}"#).await;
    assert_eq!(code, ResponseType::NotFound);
    let (code, _) = c.call(Get, "/telemetry", &ok, "").await;
    assert_eq!(code, ResponseType::MethodNotAllowed);
    let (code, _) = c.call(Put, "/commands", &ok, "").await;
    assert_eq!(code, ResponseType::MethodNotAllowed);
    let big = format!(r#"{{"x":"{}"}}"#, "y".repeat(300));
    let (code, body) = c.call(Post, "/telemetry", &ok, &big).await;
    assert_eq!(code, ResponseType::RequestEntityTooLarge);
    assert_eq!(body["errcode"], "payload_too_large");

    // malformed datagrams get no answer and do not stop the loop: the next request's
    // answer is the next datagram received
    for junk in [
        &b""[..],
        b"\xff",
        b"\x40\x01",
        b"\x48\x01\x00\x01abc",
        b"\x00\x00\x00\x00",
    ] {
        c.send_raw(junk).await;
    }
    let (code, _) = c.call(Post, "/telemetry", &ok, r#"{"after":true}"#).await;
    assert_eq!(code, ResponseType::Changed);
    // No amplification: a 4-byte request from an unverified (maybe spoofed) source is
    // answered with at most 4 bytes.
    for request in [&b"\x40\x02\x00\x09"[..], b"\x50\x01\x00\x0a"] {
        c.send_raw(request).await;
        let mut buf = [0u8; 1500];
        let (n, _) = tokio::time::timeout(ANSWER, c.socket.recv_from(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(
            n <= request.len(),
            "{n}-byte answer to a {}-byte request",
            request.len()
        );
        assert!(matches!(
            Packet::from_bytes(&buf[..n]).unwrap().header.code,
            MessageClass::Response(ResponseType::NotFound | ResponseType::MethodNotAllowed)
        ));
    }
    // CoAP ping: reset
    let mut ping = Packet::new();
    ping.header.set_version(1);
    ping.header.set_type(MessageType::Confirmable);
    ping.header.code = MessageClass::Empty;
    ping.header.message_id = 7;
    c.send_raw(&ping.to_bytes().unwrap()).await;
    let reset = c.recv().await;
    assert_eq!(
        (reset.header.get_type(), reset.header.message_id),
        (MessageType::Reset, 7)
    );

    // stored exactly, the refused ones not at all
    node.writer.flush().await.unwrap();
    let history = node
        .timeseries
        .query(&TsQuery {
            device_id: device.id,
            keys: vec!["temp".into()],
            start: 0,
            end: i64::MAX,
            aggregation: None,
            limit: None,
            order: Order::Asc,
        })
        .await
        .unwrap();
    let values: Vec<_> = history.iter().map(|kv| kv.value.clone()).collect();
    assert_eq!(
        values,
        vec![Value::Integer(19), Value::Integer(20), Value::Float(21.5)]
    );
    let latest = node.timeseries.latest(device.id, None).await.unwrap();
    let mut keys: Vec<_> = latest.iter().map(|kv| kv.key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, vec!["after", "temp"]);
    let attrs = node.metadata.get_attributes(device.id, None).await.unwrap();
    assert_eq!(
        attrs
            .iter()
            .map(|kv| (kv.key.as_str(), &kv.value))
            .collect::<Vec<_>>(),
        vec![("fw", &Value::String("2.0".into()))]
    );
    let events = node
        .timeseries
        .query_events(device.id, 0, i64::MAX, 10, Order::Asc)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].message_id.as_str(),
            events[0].method.as_str(),
            &events[0].params
        ),
        ("e1", "alarm", &json!({"a":1}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_polled_and_answered_over_coap() {
    let (node, addr) = start(256 * 1024).await;
    let (device, password) = node.create_device().await;
    let ok = creds(&device, &password);
    for mid in ["a1", "a2"] {
        node.metadata
            .create_command(&command_row(&device, mid))
            .await
            .unwrap();
    }
    let mut c = Client::new(addr).await;
    let (code, body) = c.call(RequestType::Get, "/commands", &ok, "").await;
    assert_eq!(code, ResponseType::Content, "{body}");
    let mut mids: Vec<_> = body["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["message_id"].as_str().unwrap().to_owned())
        .collect();
    mids.sort();
    assert_eq!(mids, vec!["a1", "a2"]);
    assert_eq!(
        body["commands"][0]["payload"],
        json!({"method":"Reboot","params":{"delay":5}})
    );
    let (_, body) = c.call(RequestType::Get, "/commands", &ok, "").await;
    assert_eq!(body["commands"], json!([]));

    let (code, _) = c
        .call(
            RequestType::Post,
            "/commands/a1/response",
            &ok,
            r#"{"result":0}"#,
        )
        .await;
    assert_eq!(code, ResponseType::Changed);
    let (code, _) = c
        .call(
            RequestType::Post,
            "/commands/a2/response",
            &ok,
            r#"{"result":2}"#,
        )
        .await;
    assert_eq!(code, ResponseType::Changed);
    let (code, _) = c
        .call(
            RequestType::Post,
            "/commands/zz/response",
            &ok,
            r#"{"result":0}"#,
        )
        .await;
    assert_eq!(code, ResponseType::NotFound);
    let status = |mid: &'static str| {
        let meta = node.metadata.clone();
        let id = device.id;
        async move {
            meta.get_command_by_message_id(id, mid)
                .await
                .unwrap()
                .unwrap()
                .status
        }
    };
    assert_eq!(status("a1").await, CommandStatus::Replied);
    assert_eq!(status("a2").await, CommandStatus::Failed);
}

/// An ACCESSTOKEN device sends its token as `u` alone; a wrong token, or the
/// token's stored digest, is 4.01.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_alone_authenticates() {
    let (node, addr) = start(256).await;
    let (mut device, _) = Device::new(node.tenant, "token device".into(), None);
    let (credentials, issued) =
        tp_core::DeviceCredentials::generate_for(tp_core::VoucherType::AccessToken);
    device.credentials = credentials;
    node.metadata.create_device(&device).await.unwrap();
    let mut c = Client::new(addr).await;
    let (code, body) = c
        .call(
            RequestType::Post,
            "/telemetry",
            &[format!("u={}", issued.username)],
            r#"{"lux":300}"#,
        )
        .await;
    assert_eq!(code, ResponseType::Changed, "{body}");
    for queries in [
        vec![format!("u={}x", issued.username)],
        vec![format!("u={}", device.credentials.username)],
    ] {
        let (code, _) = c
            .call(RequestType::Post, "/telemetry", &queries, r#"{"lux":1}"#)
            .await;
        assert_eq!(code, ResponseType::Unauthorized, "{queries:?}");
    }
}

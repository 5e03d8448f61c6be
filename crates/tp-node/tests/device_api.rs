//! The HTTP and CoAP device APIs through a whole node: the HTTP device routes are
//! served on the API port beside the REST API, CoAP on `mqtt.coap_listen`.

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use reqwest::StatusCode;
use tp_core::{Device, Tenant, TenantId, Value, now_ms};
use tp_node::config::PlatformConfig;
use tp_node::platform::Platform;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_post_over_http_and_coap_to_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let overrides = [
        ("data_dir", dir.path().display().to_string()),
        ("http.listen", "127.0.0.1:0".to_owned()),
        ("mqtt.listen", "127.0.0.1:0".to_owned()),
        ("mqtt.coap_listen", "127.0.0.1:0".to_owned()),
        ("auth.admin_email", "admin@example.com".to_owned()),
        (
            "auth.admin_password",
            "correct horse battery staple".to_owned(),
        ),
    ];
    let platform = Platform::start(PlatformConfig::load(None, &overrides).unwrap())
        .await
        .unwrap();
    let tenant = Tenant {
        id: TenantId::new(),
        name: "devices".into(),
        created_at: now_ms(),
    };
    platform.metadata().create_tenant(&tenant).await.unwrap();
    let (device, password) = Device::new(tenant.id, "meter".into(), None);
    platform.metadata().create_device(&device).await.unwrap();

    let http = reqwest::Client::new();
    let base = format!("http://{}", platform.http_addr());
    let resp = http
        .post(format!("{base}/api/v1/device/telemetry"))
        .basic_auth(&device.credentials.username, Some(&password))
        .body(r#"{"kwh":12.5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = http
        .post(format!("{base}/api/v1/device/telemetry"))
        .basic_auth(&device.credentials.username, Some("wrong"))
        .body(r#"{"kwh":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // the REST API and its JSON fallback are unaffected
    let resp = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = http
        .get(format!("{base}/api/v1/no-such-route"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // CoAP
    let coap = platform.broker().coap_addr().expect("coap listening");
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = 9;
    p.set_token(vec![1, 2]);
    p.add_option(CoapOption::UriPath, b"attributes".to_vec());
    p.add_option(
        CoapOption::UriQuery,
        format!("u={}", device.credentials.username).into_bytes(),
    );
    p.add_option(CoapOption::UriQuery, format!("p={password}").into_bytes());
    p.payload = br#"{"serial":"X1"}"#.to_vec();
    socket.send_to(&p.to_bytes().unwrap(), coap).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        socket.recv_from(&mut buf),
    )
    .await
    .expect("an answer")
    .unwrap();
    let answer = Packet::from_bytes(&buf[..n]).unwrap();
    assert_eq!(answer.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::Changed)
    );

    // after a graceful stop everything accepted is stored, exactly
    let (metadata, timeseries) = (platform.metadata().clone(), platform.timeseries().clone());
    platform.shutdown().await.unwrap();
    let latest = timeseries.latest(device.id, None).await.unwrap();
    assert_eq!(
        latest
            .iter()
            .map(|kv| (kv.key.as_str(), &kv.value))
            .collect::<Vec<_>>(),
        vec![("kwh", &Value::Float(12.5))]
    );
    let attrs = metadata.get_attributes(device.id, None).await.unwrap();
    assert_eq!(
        attrs
            .iter()
            .map(|kv| (kv.key.as_str(), &kv.value))
            .collect::<Vec<_>>(),
        vec![("serial", &Value::String("X1".into()))]
    );
}

//! criterion benches of data scripts (issue #21): what a Lua decode costs per
//! message, and what the ingest path pays for the script lookup when a profile has
//! no script (the common case, which must not make ingest slower).
//!
//! `cargo bench -p tp-benches --bench scripts` (results in benches/RESULTS.md).

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tp_broker::script::{CompiledScript, ScriptLimits, Scripts};
use tp_core::script::{DataScript, ScriptRunner, ScriptStoreRef, ScriptType};
use tp_core::{DeviceId, ProfileId, ScriptId, now_ms};

const FRAME_DECODER: &str = r#"
local json = require("json")
function encodeInp(msg, topic)
    local hi, lo, hum, flags = string.byte(msg, 1, 4)
    local raw = hi * 256 + lo
    if raw >= 32768 then raw = raw - 65536 end
    return json.encode({ temperature = raw / 10, humidity = hum, pump = (flags % 2) == 1 })
end
"#;

/// ThingsPanel's template shape: decode the JSON, change a value, encode it again.
const JSON_ROUND_TRIP: &str = r#"
local json = require("json")
function encodeInp(msg, topic)
    local data = json.decode(msg)
    if data.k0 then data.k0 = data.k0 * 10 end
    return json.encode(data)
end
"#;

fn ten_keys() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "k0": 1.5, "k1": 2, "k2": true, "k3": "on", "k4": 4.25,
        "k5": 5, "k6": 6.5, "k7": false, "k8": 8, "k9": 9.75
    }))
    .unwrap()
}

fn script(content: &str) -> DataScript {
    DataScript {
        id: ScriptId::new(),
        tenant_id: tp_core::TenantId::new(),
        profile_id: ProfileId::new(),
        script_type: ScriptType::TelemetryUp,
        name: "bench".into(),
        content: content.into(),
        enabled: true,
        description: None,
        created_at: now_ms(),
        updated_at: now_ms(),
    }
}

/// The Lua call alone, on the calling thread.
fn compiled_call(c: &mut Criterion) {
    let mut g = c.benchmark_group("script_call");
    g.throughput(Throughput::Elements(1));
    let frame = CompiledScript::compile("frame", FRAME_DECODER, ScriptLimits::default()).unwrap();
    g.bench_function("binary_frame_4_bytes", |b| {
        b.iter(|| {
            frame
                .call(&[0x01, 0x05, 0x37, 0x01], "devices/telemetry")
                .unwrap()
        })
    });
    let round_trip =
        CompiledScript::compile("json", JSON_ROUND_TRIP, ScriptLimits::default()).unwrap();
    let payload = ten_keys();
    g.bench_function("json_round_trip_10_keys", |b| {
        b.iter(|| round_trip.call(&payload, "devices/telemetry").unwrap())
    });
    g.finish();
}

/// What ingest pays per message: the engine's run (cached compiled state, a hop to
/// the blocking pool and back).
fn engine_run(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = Scripts::new(None, ScriptLimits::default());
    let frame = script(FRAME_DECODER);
    let json = script(JSON_ROUND_TRIP);
    let payload = ten_keys();
    let mut g = c.benchmark_group("script_decode_per_message");
    g.throughput(Throughput::Elements(1));
    g.bench_function("binary_frame_4_bytes", |b| {
        b.iter(|| {
            rt.block_on(engine.run(&frame, &[0x01, 0x05, 0x37, 0x01], "devices/telemetry"))
                .unwrap()
        })
    });
    g.bench_function("json_round_trip_10_keys", |b| {
        b.iter(|| {
            rt.block_on(engine.run(&json, &payload, "devices/telemetry"))
                .unwrap()
        })
    });
    g.finish();
}

/// An engine reading scripts from an empty metadata store: no profile has a script.
fn engine_over_empty_store(rt: &tokio::runtime::Runtime) -> Scripts {
    let store: ScriptStoreRef = Arc::new(
        rt.block_on(tp_storage::sqlite::SqliteMetadataStore::in_memory())
            .unwrap(),
    );
    Scripts::new(Some(store), ScriptLimits::default())
}

/// The no-script path: a device without a profile, and a profile without a script
/// (the cached lookup ingest does for every message).
fn no_script(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = engine_over_empty_store(&rt);
    let device = DeviceId::new();
    let profile = ProfileId::new();
    let payload = ten_keys();
    let mut g = c.benchmark_group("script_lookup_without_script");
    g.throughput(Throughput::Elements(1));
    g.bench_function("device_without_profile", |b| {
        b.iter(|| {
            rt.block_on(engine.transform(device, None, ScriptType::TelemetryUp, &payload, "t"))
                .unwrap()
        })
    });
    g.bench_function("profile_without_script", |b| {
        b.iter(|| {
            rt.block_on(engine.transform(
                device,
                Some(profile),
                ScriptType::TelemetryUp,
                &payload,
                "t",
            ))
            .unwrap()
        })
    });
    g.finish();
}

/// Ingest's decode of 100 ten-key messages inside one async context, as an ingest
/// worker runs it: without a script engine (the path before data scripts existed,
/// and of a node built without the `lua` feature) and with an engine whose profile
/// has no script. The difference is what the no-script case costs per message; the
/// first case run again last (`no_script_engine_repeat`) shows how far two runs of the
/// same code differ on the machine at the time.
fn ingest_decode_with_and_without_engine(c: &mut Criterion) {
    const MESSAGES: usize = 100;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = engine_over_empty_store(&rt);
    let device = DeviceId::new();
    let profile = ProfileId::new();
    let payload = ten_keys();
    let mut g = c.benchmark_group("ingest_decode_100_messages");
    g.throughput(Throughput::Elements(MESSAGES as u64));
    // the path before data scripts existed
    let no_engine = || {
        rt.block_on(async {
            let mut points = 0;
            for _ in 0..MESSAGES {
                points += tp_core::protocol::decode_telemetry(&payload, 1)
                    .unwrap()
                    .len();
            }
            points
        })
    };
    g.bench_function("no_script_engine", |b| b.iter(no_engine));
    g.bench_function("engine_profile_without_script", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut points = 0;
                for _ in 0..MESSAGES {
                    // what `Uplinks::scripted` does: the index first, then the
                    // profile's script only when some profile has one
                    let out = if engine.none_enabled() {
                        None
                    } else {
                        // (boxed: the loop's own future stays as small as the
                        // no-engine loop's, so the two differ only in the check)
                        Box::pin(scripted(&engine, device, profile, &payload)).await
                    };
                    let bytes = out.as_deref().unwrap_or(&payload);
                    points += tp_core::protocol::decode_telemetry(bytes, 1).unwrap().len();
                }
                points
            })
        })
    });
    g.bench_function("no_script_engine_repeat", |b| b.iter(no_engine));
    g.finish();
}

/// The script path of [`ingest_decode_with_and_without_engine`] when the index says a
/// profile may have a script.
async fn scripted(
    engine: &Scripts,
    device: DeviceId,
    profile: ProfileId,
    payload: &[u8],
) -> Option<Vec<u8>> {
    if !engine.any_enabled().await {
        return None;
    }
    engine
        .transform(device, Some(profile), ScriptType::TelemetryUp, payload, "t")
        .await
        .unwrap()
}

criterion_group!(
    benches,
    compiled_call,
    engine_run,
    no_script,
    ingest_decode_with_and_without_engine
);
criterion_main!(benches);

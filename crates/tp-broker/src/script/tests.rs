//! The sandbox and its limits, on the engine alone.

use std::time::Duration;

use tp_core::script::{ScriptFailure, ScriptRunner};

use super::{CompiledScript, ScriptLimits, Scripts};

/// The default limits, except a timeout no test machine reaches: limits other than
/// the clock are tested without depending on how fast the machine is.
fn untimed() -> ScriptLimits {
    ScriptLimits {
        timeout: Duration::from_secs(600),
        ..ScriptLimits::default()
    }
}

fn engine() -> Scripts {
    Scripts::new(None, untimed())
}

async fn run(source: &str, payload: &[u8]) -> Result<Vec<u8>, ScriptFailure> {
    engine()
        .run_source(source, payload, "devices/telemetry")
        .await
}

fn text(out: Result<Vec<u8>, ScriptFailure>) -> String {
    String::from_utf8(out.expect("script output")).expect("utf-8")
}

#[tokio::test]
async fn binary_payload_reaches_lua_as_bytes() {
    let source = r#"
        local json = require("json")
        function encodeInp(msg, topic)
            local hi, lo, flags = string.byte(msg, 1, 3)
            return json.encode({ temperature = (hi * 256 + lo) / 10, on = flags == 255,
                                 len = #msg, topic = topic })
        end"#;
    let out: serde_json::Value =
        serde_json::from_slice(&run(source, &[0x01, 0x05, 0xff, 0x00]).await.unwrap()).unwrap();
    assert_eq!(
        out,
        serde_json::json!({"temperature": 26.1, "on": true, "len": 4, "topic": "devices/telemetry"})
    );
}

#[tokio::test]
async fn json_module_decodes_and_encodes_like_thingspanel() {
    let source = r#"
        local json = require("json")
        function encodeInp(msg, topic)
            local t = json.decode(msg)
            t.temp = t.temp * 10
            t.gone = nil
            local bad, err = json.decode("{nope")
            t.bad = bad == nil and type(err) == "string"
            return json.encode(t)
        end"#;
    let out: serde_json::Value = serde_json::from_slice(
        &run(source, br#"{"temp": 2.5, "gone": null, "list": [1, 2]}"#)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        out,
        serde_json::json!({"temp": 25.0, "bad": true, "list": [1, 2]})
    );
}

#[tokio::test]
async fn only_safe_libraries_are_reachable() {
    for (probe, absent) in [
        ("io", true),
        ("os", true),
        ("debug", true),
        ("package", true),
        ("coroutine", true),
        ("load", true),
        ("loadfile", true),
        ("dofile", true),
        ("collectgarbage", true),
        ("string.dump", true),
        ("string.format", false),
        ("table.concat", false),
        ("math.floor", false),
        ("utf8.char", false),
    ] {
        let source = format!("function encodeInp(msg, topic) return tostring({probe} == nil) end");
        assert_eq!(
            text(run(&source, b"").await),
            absent.to_string(),
            "{probe} should be {}",
            if absent { "absent" } else { "present" }
        );
    }
    match run(
        r#"local x = require("os") function encodeInp(m) return m end"#,
        b"",
    )
    .await
    {
        Err(ScriptFailure::Runtime(e)) => assert!(e.contains("may require only"), "{e}"),
        other => panic!("require of another module: {other:?}"),
    }
}

#[tokio::test]
async fn an_endless_loop_is_stopped_by_its_budget() {
    let limits = untimed();
    let out = Scripts::new(None, limits)
        .run_source("function encodeInp(m) while true do end end", b"", "t")
        .await;
    assert_eq!(
        out,
        Err(ScriptFailure::InstructionLimit(limits.max_instructions))
    );
}

#[tokio::test]
async fn a_slow_script_is_stopped_by_its_timeout() {
    let limits = ScriptLimits {
        max_instructions: u64::MAX,
        timeout: Duration::from_millis(50),
        ..ScriptLimits::default()
    };
    let out = Scripts::new(None, limits)
        .run_source("function encodeInp(m) while true do end end", b"", "t")
        .await;
    assert_eq!(out, Err(ScriptFailure::Timeout(50)));
}

#[tokio::test]
async fn pcall_cannot_swallow_a_limit() {
    let source = r#"
        function encodeInp(m)
            while true do
                pcall(function() while true do end end)
            end
        end"#;
    let out = run(source, b"").await;
    assert!(
        matches!(out, Err(ScriptFailure::InstructionLimit(_))),
        "{out:?}"
    );
    let hungry = r#"
        function encodeInp(m)
            local ok = pcall(function()
                local t = {}
                for i = 1, 1e9 do t[i] = string.rep("x", 64) .. i end
            end)
            return "survived " .. tostring(ok)
        end"#;
    let out = run(hungry, b"").await;
    assert!(matches!(out, Err(ScriptFailure::MemoryLimit(_))), "{out:?}");
}

#[tokio::test]
async fn unbounded_allocation_is_stopped_by_the_memory_limit() {
    let source = r#"
        local keep = {}
        function encodeInp(m)
            local s = "x"
            while true do s = s .. s; keep[#keep + 1] = s end
        end"#;
    let out = run(source, b"").await;
    assert_eq!(
        out,
        Err(ScriptFailure::MemoryLimit(untimed().max_memory_bytes))
    );
}

#[tokio::test]
async fn bad_scripts_and_outputs_are_named() {
    assert!(matches!(
        run("function encodeInp(", b"").await,
        Err(ScriptFailure::Compile(_))
    ));
    assert!(matches!(
        run("function other() end", b"").await,
        Err(ScriptFailure::Compile(e)) if e.contains("encodeInp")
    ));
    assert!(matches!(
        run("function encodeInp(m) return 42 end", b"").await,
        Err(ScriptFailure::BadOutput(e)) if e.contains("not a string")
    ));
    assert!(matches!(
        run("function encodeInp(m) error('bad frame') end", b"").await,
        Err(ScriptFailure::Runtime(e)) if e.contains("bad frame")
    ));
    // bytecode never loads
    assert!(matches!(
        run("\x1bLua", b"").await,
        Err(ScriptFailure::Compile(_))
    ));
}

#[test]
fn a_compiled_script_is_reused_and_its_limits_reset_per_call() {
    let limits = ScriptLimits {
        max_instructions: 200_000,
        ..untimed()
    };
    // each call loops well under the budget; together far over it
    let script = CompiledScript::compile(
        "counter",
        "n = 0 function encodeInp(m) for i = 1, 20000 do end n = n + 1 return tostring(n) end",
        limits,
    )
    .unwrap();
    for expected in 1..=50 {
        assert_eq!(
            script.call(b"", "t").unwrap(),
            expected.to_string().as_bytes()
        );
    }
}

/// The ingest index: no lookup for a profile without scripts, a script created
/// through this node's API (which invalidates) runs on the next message, and a
/// script on another profile does not make this one's messages run anything.
#[tokio::test]
async fn the_index_skips_profiles_without_scripts_and_follows_invalidation() {
    use std::sync::Arc;
    use tp_core::access::AccessStore;
    use tp_core::script::{ScriptStore, ScriptStoreRef, ScriptType};
    use tp_core::testing::script::sample_script;
    use tp_core::{DeviceId, DeviceProfile, TenantId};

    let store = Arc::new(
        tp_storage::sqlite::SqliteMetadataStore::in_memory()
            .await
            .unwrap(),
    );
    let tenant = TenantId::new();
    let mut profiles = Vec::new();
    for name in ["scripted", "plain"] {
        let p = DeviceProfile::new(tenant, name);
        store.create_profile(&p).await.unwrap();
        profiles.push(p);
    }
    let (scripted, plain) = (&profiles[0], &profiles[1]);
    let engine = Scripts::new(Some(store.clone() as ScriptStoreRef), untimed());
    let device = DeviceId::new();
    let up = |profile: &DeviceProfile| {
        engine.transform(
            device,
            Some(profile.id),
            ScriptType::TelemetryUp,
            b"{}",
            "devices/telemetry",
        )
    };
    assert!(!engine.any_enabled().await, "no script anywhere");
    assert_eq!(up(scripted).await.unwrap(), None);

    let mut script = sample_script(scripted, ScriptType::TelemetryUp, "mark", true);
    script.content = r#"function encodeInp(msg, topic) return '{"scripted":1}' end"#.into();
    store.create_script(&script).await.unwrap();
    engine.invalidate(scripted.id);
    assert!(engine.any_enabled().await);
    assert_eq!(
        up(scripted).await.unwrap().as_deref(),
        Some(&br#"{"scripted":1}"#[..])
    );
    assert_eq!(up(plain).await.unwrap(), None, "another profile's script");
    assert!(!engine.index.covers(plain.id, ScriptType::TelemetryUp));
    assert!(!engine.index.covers(scripted.id, ScriptType::AttributeUp));

    script.enabled = false;
    store.update_script(&script).await.unwrap();
    engine.invalidate(scripted.id);
    assert!(!engine.any_enabled().await, "the only script was disabled");
    assert_eq!(up(scripted).await.unwrap(), None);
}

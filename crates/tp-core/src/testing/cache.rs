//! Conformance cases for [`Cache`].
//!
//! Every case uses keys under its own random prefix, so all cases can run in parallel
//! against one shared cache. TTL cases use a 200 ms TTL and sleep 600 ms: that checks
//! expiry, not performance.
//!
//! Run them all against a backend with [`crate::cache_conformance!`].

use std::time::Duration;

use uuid::Uuid;

use crate::Cache;

const SHORT_TTL: Duration = Duration::from_millis(200);
const PAST_TTL: Duration = Duration::from_millis(600);

/// A key factory under a fresh prefix.
fn keyspace() -> impl Fn(&str) -> String {
    let prefix = format!("tp-conformance:{}:", Uuid::new_v4().simple());
    move |k| format!("{prefix}{k}")
}

/// `backend()` is a non-empty name and `healthcheck()` succeeds.
pub async fn backend_and_healthcheck(cache: &dyn Cache) {
    assert!(!cache.backend().is_empty());
    cache.healthcheck().await.expect("healthcheck");
}

/// `get` misses, `set` stores, `set` again replaces, `delete` reports whether a key existed.
pub async fn get_set_delete(cache: &dyn Cache) {
    let key = keyspace();
    let k = key("k");
    assert_eq!(cache.get(&k).await.expect("get"), None);
    cache.set(&k, b"one", None).await.expect("set");
    assert_eq!(cache.get(&k).await.expect("get"), Some(b"one".to_vec()));
    cache.set(&k, b"two", None).await.expect("set");
    assert_eq!(cache.get(&k).await.expect("get"), Some(b"two".to_vec()));
    // Other keys are independent.
    assert_eq!(cache.get(&key("other")).await.expect("get"), None);
    assert!(cache.delete(&k).await.expect("delete"));
    assert_eq!(cache.get(&k).await.expect("get"), None);
    assert!(!cache.delete(&k).await.expect("delete"));
    assert!(!cache.delete(&key("never")).await.expect("delete"));
}

/// Values are bytes: empty and non-UTF-8 values round-trip exactly, and so do large ones.
pub async fn binary_values_round_trip(cache: &dyn Cache) {
    let key = keyspace();
    let binary: Vec<u8> = (0..=255u8).collect();
    let large = vec![0xA5u8; 256 * 1024];
    for (name, value) in [
        ("empty", &[][..]),
        ("binary", &binary[..]),
        ("large", &large[..]),
    ] {
        cache.set(&key(name), value, None).await.expect("set");
        assert_eq!(
            cache.get(&key(name)).await.expect("get").as_deref(),
            Some(value),
            "{name}"
        );
    }
}

/// A key with a TTL is readable until it expires and gone afterwards; a key without
/// one stays.
pub async fn ttl_expires(cache: &dyn Cache) {
    let key = keyspace();
    cache
        .set(&key("short"), b"v", Some(SHORT_TTL))
        .await
        .expect("set");
    cache.set(&key("forever"), b"f", None).await.expect("set");
    cache
        .set(&key("long"), b"l", Some(Duration::from_secs(600)))
        .await
        .expect("set");
    assert_eq!(
        cache.get(&key("short")).await.expect("get"),
        Some(b"v".to_vec())
    );
    tokio::time::sleep(PAST_TTL).await;
    assert_eq!(cache.get(&key("short")).await.expect("get"), None);
    assert!(!cache.delete(&key("short")).await.expect("delete"));
    assert_eq!(
        cache.get(&key("forever")).await.expect("get"),
        Some(b"f".to_vec())
    );
    assert_eq!(
        cache.get(&key("long")).await.expect("get"),
        Some(b"l".to_vec())
    );
}

/// `set` replaces the TTL too: setting without a TTL makes a key permanent, setting
/// with a TTL makes a permanent key expire.
pub async fn set_replaces_ttl(cache: &dyn Cache) {
    let key = keyspace();
    cache
        .set(&key("a"), b"1", Some(SHORT_TTL))
        .await
        .expect("set");
    cache.set(&key("a"), b"2", None).await.expect("set");
    cache.set(&key("b"), b"1", None).await.expect("set");
    cache
        .set(&key("b"), b"2", Some(SHORT_TTL))
        .await
        .expect("set");
    tokio::time::sleep(PAST_TTL).await;
    assert_eq!(
        cache.get(&key("a")).await.expect("get"),
        Some(b"2".to_vec())
    );
    assert_eq!(cache.get(&key("b")).await.expect("get"), None);
}

/// `set_nx` stores only when the key is absent and leaves an existing value alone.
pub async fn set_nx_only_when_absent(cache: &dyn Cache) {
    let key = keyspace();
    let k = key("lock");
    assert!(cache.set_nx(&k, b"first", None).await.expect("set_nx"));
    assert!(!cache.set_nx(&k, b"second", None).await.expect("set_nx"));
    assert_eq!(cache.get(&k).await.expect("get"), Some(b"first".to_vec()));
    cache.set(&k, b"plain", None).await.expect("set");
    assert!(!cache.set_nx(&k, b"third", None).await.expect("set_nx"));
    assert_eq!(cache.get(&k).await.expect("get"), Some(b"plain".to_vec()));
    assert!(cache.delete(&k).await.expect("delete"));
    assert!(cache.set_nx(&k, b"again", None).await.expect("set_nx"));
    assert_eq!(cache.get(&k).await.expect("get"), Some(b"again".to_vec()));
}

/// A key stored by `set_nx` with a TTL expires, after which `set_nx` succeeds again.
pub async fn set_nx_after_expiry(cache: &dyn Cache) {
    let key = keyspace();
    let k = key("lease");
    assert!(
        cache
            .set_nx(&k, b"holder-1", Some(SHORT_TTL))
            .await
            .expect("set_nx")
    );
    assert!(
        !cache
            .set_nx(&k, b"holder-2", Some(SHORT_TTL))
            .await
            .expect("set_nx")
    );
    tokio::time::sleep(PAST_TTL).await;
    assert_eq!(cache.get(&k).await.expect("get"), None);
    assert!(cache.set_nx(&k, b"holder-2", None).await.expect("set_nx"));
    assert_eq!(
        cache.get(&k).await.expect("get"),
        Some(b"holder-2".to_vec())
    );
}

/// Of many concurrent `set_nx` calls on one key exactly one wins, and its value is stored.
pub async fn set_nx_is_atomic(cache: &dyn Cache) {
    let key = keyspace();
    let k = key("race");
    let attempt = |i: u8| {
        let k = k.clone();
        async move { (i, cache.set_nx(&k, &[i], None).await.expect("set_nx")) }
    };
    let results = tokio::join!(
        attempt(0),
        attempt(1),
        attempt(2),
        attempt(3),
        attempt(4),
        attempt(5),
        attempt(6),
        attempt(7),
    );
    let results = [
        results.0, results.1, results.2, results.3, results.4, results.5, results.6, results.7,
    ];
    let winners: Vec<u8> = results.iter().filter(|r| r.1).map(|r| r.0).collect();
    assert_eq!(winners.len(), 1, "exactly one set_nx wins: {results:?}");
    assert_eq!(cache.get(&k).await.expect("get"), Some(vec![winners[0]]));
}

/// Stamps out one `#[tokio::test]` per [`crate::testing::cache`] case.
///
/// The argument is an expression evaluating to a future whose output is
/// `Option<S>`, where `&*s` is a `&dyn Cache` (for example `Option<Arc<dyn Cache>>`);
/// `None` skips the test. It is evaluated once per test. The calling crate needs
/// `tokio`; invoke the macro inside its own module.
///
/// ```ignore
/// mod memory {
///     tp_core::cache_conformance!(async { Some(std::sync::Arc::new(MyCache::new())) });
/// }
/// ```
#[macro_export]
macro_rules! cache_conformance {
    ($make:expr $(,)?) => {
        $crate::__conformance_tests!(cache, $make;
            backend_and_healthcheck,
            get_set_delete,
            binary_values_round_trip,
            ttl_expires,
            set_replaces_ttl,
            set_nx_only_when_absent,
            set_nx_after_expiry,
            set_nx_is_atomic,
        );
    };
}

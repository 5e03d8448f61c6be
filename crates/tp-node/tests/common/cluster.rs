//! Nodes of a cluster in one process: a PostgreSQL schema and a Redis key prefix of
//! one test run's own (the services of `TP_TEST_POSTGRES_URL` and
//! `TP_TEST_REDIS_URL`), and the configuration of a node with given roles on them.

use super::{PlatformConfig, config_with};

/// One signing secret for every node of a cluster, so a token from one node is
/// valid on the others.
const JWT_SECRET: &str = "cluster-test-secret-0123456789abcdef01";

/// A PostgreSQL schema and a Redis key prefix of one test run's own.
pub(crate) struct SharedStores {
    /// The PostgreSQL server without the schema, to drop the schema at the end.
    pg: String,
    pub(crate) schema: String,
    /// PostgreSQL on the schema (metadata and time series).
    pub(crate) pg_url: String,
    /// Redis under the prefix (cache and backplane).
    pub(crate) redis_url: String,
}

impl SharedStores {
    /// Schema `tp_{tag}_{run}` and key prefix `tp-{tag}-{run}:` for a fresh `run`;
    /// `None` (skip) without the services, a panic instead under
    /// `TP_REQUIRE_SERVICES`.
    pub(crate) fn new(tag: &str) -> Option<Self> {
        let pg = tp_core::testing::service_url("TP_TEST_POSTGRES_URL")?;
        let redis = tp_core::testing::service_url("TP_TEST_REDIS_URL")?;
        let run = uuid::Uuid::new_v4().simple().to_string();
        let sep = |url: &str| if url.contains('?') { '&' } else { '?' };
        let schema = format!("tp_{tag}_{run}");
        Some(Self {
            pg_url: format!("{pg}{}schema={schema}", sep(&pg)),
            redis_url: format!("{redis}{}prefix=tp-{tag}-{run}:", sep(&redis)),
            schema,
            pg,
        })
    }

    /// The `storage.*` overrides that put a node's metadata, time series and cache
    /// on these stores.
    pub(crate) fn overrides(&self) -> [(&'static str, String); 3] {
        [
            ("storage.metadata", self.pg_url.clone()),
            ("storage.timeseries", self.pg_url.clone()),
            ("storage.cache", self.redis_url.clone()),
        ]
    }

    /// Drops the schema, once every node on it has stopped.
    pub(crate) async fn drop_schema(self) {
        let store = tp_storage::postgres::PostgresMetadataStore::connect(&self.pg)
            .await
            .unwrap();
        let drop = format!("DROP SCHEMA {} CASCADE", self.schema);
        sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(store.pool())
            .await
            .unwrap();
    }
}

/// A node with `roles` (`["broker"]`, `["api"]`) named `node_id` on `stores`, with
/// the cluster's signing secret; `dir` is its data dir (WAL).
pub(crate) fn cluster_config(
    dir: &std::path::Path,
    roles: &str,
    node_id: &str,
    stores: &SharedStores,
) -> PlatformConfig {
    let mut extra = vec![
        ("auth.jwt_secret", JWT_SECRET.to_owned()),
        ("node.roles", roles.to_owned()),
        ("cluster.node_id", node_id.to_owned()),
    ];
    extra.extend(stores.overrides());
    config_with(dir, &extra)
}

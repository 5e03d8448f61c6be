-- Time-series schema on PostgreSQL. Device ids are uuid; times are Unix milliseconds.
-- Versions 1001.. belong to the time-series store (1..999 to the metadata store).
-- Value columns follow tp_core::Value::type_tag: 0 bool / 1 integer in v_int,
-- 2 float in v_real, 3 string / 4 JSON text in v_text.
--
-- The history table `ts_kv` is NOT created here: its layout depends on the server.
-- The store creates it on connect, either range-partitioned on `ts` (partitions made
-- on demand, retention drops whole partitions) or, when the timescaledb extension
-- is available, as a hypertable with compression and an optional retention policy.
-- The choice is recorded in `ts_layout` and kept for the life of the schema.

CREATE TABLE ts_layout (
    id            boolean NOT NULL PRIMARY KEY DEFAULT true CHECK (id),
    kind          text    NOT NULL CHECK (kind IN ('partitioned', 'timescale')),
    -- Width of a partition / chunk in milliseconds.
    partition_ms  bigint  NOT NULL CHECK (partition_ms > 0)
);

-- Newest point per key, maintained by every write and delete.
CREATE TABLE ts_latest (
    device_id uuid             NOT NULL,
    key       text COLLATE "C" NOT NULL,
    ts        bigint           NOT NULL,
    vtype     smallint         NOT NULL,
    v_int     bigint,
    v_real    double precision,
    v_text    text,
    PRIMARY KEY (device_id, key)
);

CREATE TABLE ts_events (
    id         bigserial NOT NULL PRIMARY KEY,
    device_id  uuid      NOT NULL,
    ts         bigint    NOT NULL,
    message_id text      NOT NULL,
    method     text      NOT NULL,
    params     jsonb     NOT NULL
);
CREATE INDEX ts_events_by_device ON ts_events (device_id, ts, id);
CREATE INDEX ts_events_by_ts ON ts_events (ts);

-- Time-series schema. Device ids are 16-byte UUID blobs; times are Unix milliseconds.
-- Versions 1001.. belong to the time-series store (1..999 to the metadata store).
-- Value columns follow tp_core::Value::type_tag: 0 bool / 1 integer in v_int,
-- 2 float in v_real, 3 string / 4 JSON text in v_text.

CREATE TABLE ts_kv (
    device_id BLOB    NOT NULL,
    key       TEXT    NOT NULL,
    ts        INTEGER NOT NULL,
    vtype     INTEGER NOT NULL,
    v_int     INTEGER,
    v_real    REAL,
    v_text    TEXT,
    PRIMARY KEY (device_id, key, ts)
) WITHOUT ROWID;

-- Newest point per key, maintained by every write and delete.
CREATE TABLE ts_latest (
    device_id BLOB    NOT NULL,
    key       TEXT    NOT NULL,
    ts        INTEGER NOT NULL,
    vtype     INTEGER NOT NULL,
    v_int     INTEGER,
    v_real    REAL,
    v_text    TEXT,
    PRIMARY KEY (device_id, key)
) WITHOUT ROWID;

CREATE TABLE ts_events (
    device_id  BLOB    NOT NULL,
    ts         INTEGER NOT NULL,
    message_id TEXT    NOT NULL,
    method     TEXT    NOT NULL,
    params     TEXT    NOT NULL
);
CREATE INDEX ts_events_by_device ON ts_events (device_id, ts);

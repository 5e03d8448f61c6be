-- Time-series schema. Device ids are 16-byte UUID blobs; times are Unix milliseconds.
-- Versions 1001.. belong to the time-series store (1..999 to the metadata store).

-- One row per (device, key) ever written. Rows are never deleted (delete_range only
-- removes history), so a series_id, once committed, stays valid forever: the store
-- caches (device, key) -> series_id in memory without invalidation.
CREATE TABLE ts_series (
    series_id INTEGER PRIMARY KEY,
    device_id BLOB    NOT NULL,
    key       TEXT    NOT NULL,
    UNIQUE (device_id, key)
);

-- History keyed by small integers: B-tree seeks compare two integers instead of a
-- 16-byte blob plus a text key, and rows are about half as large as with
-- (device_id, key, ts). The latest value of a series is its last row here (one seek),
-- so there is no separate latest table to maintain per point.
--
-- `v` has no declared type (no affinity), so it keeps the storage class it is bound
-- with: INTEGER for tag 0 bool (0/1) and 1 integer, REAL for 2 float (NaN is stored as
-- NULL by SQLite), TEXT for 3 string and 4 JSON. `vtype` is tp_core::Value::type_tag.
CREATE TABLE ts_kv (
    series_id INTEGER NOT NULL,
    ts        INTEGER NOT NULL,
    vtype     INTEGER NOT NULL,
    v,
    PRIMARY KEY (series_id, ts)
) WITHOUT ROWID;

CREATE TABLE ts_events (
    device_id  BLOB    NOT NULL,
    ts         INTEGER NOT NULL,
    message_id TEXT    NOT NULL,
    method     TEXT    NOT NULL,
    params     TEXT    NOT NULL
);
CREATE INDEX ts_events_by_device ON ts_events (device_id, ts);

-- History is keyed by an integer series id instead of (device_id, key): a 16-byte
-- uuid and a text key in every row and index entry made the primary key of `ts_kv`
-- twice as large and twice as slow to maintain as (series, ts) (measured in
-- benches/RESULTS.md). A series is named once here; ids are never reused or deleted,
-- so a writer may cache them for its whole life.
--
-- `ts_kv` itself is created by the store (its layout depends on the server); a schema
-- whose `ts_kv` still has the (device_id, key, ts) layout is converted by the store on
-- connect, under the same lock that serializes its other DDL.
CREATE TABLE ts_series (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id uuid             NOT NULL,
    key       text COLLATE "C" NOT NULL,
    UNIQUE (device_id, key)
);

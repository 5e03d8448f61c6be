//! Byte encodings of keys and values. Every integer in a key is big-endian, and signed
//! timestamps have their sign bit flipped, so the byte order of keys is the numeric
//! order of their fields and one series' time range is one contiguous key range.

use tp_core::{DeviceEvent, DeviceId, Timestamp, Value};

use super::error::FjallError;

/// First byte of a history key in a partition.
pub(super) const POINT: u8 = 1;
/// First byte of an event key in a partition.
pub(super) const EVENT: u8 = 2;

/// Length of a history key: tag, series id, timestamp.
pub(super) const POINT_KEY_LEN: usize = 1 + 8 + 8;

/// A timestamp as 8 bytes that sort like the signed number.
pub(super) fn ts_bytes(ts: Timestamp) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`ts_bytes`].
pub(super) fn ts_from(bytes: [u8; 8]) -> Timestamp {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// `POINT ‖ series ‖ ts`: one history row.
pub(super) fn point_key(series: u64, ts: Timestamp) -> [u8; POINT_KEY_LEN] {
    let mut k = [0u8; POINT_KEY_LEN];
    k[0] = POINT;
    k[1..9].copy_from_slice(&series.to_be_bytes());
    k[9..].copy_from_slice(&ts_bytes(ts));
    k
}

/// The timestamp of a history key.
pub(super) fn point_key_ts(key: &[u8]) -> Result<Timestamp, FjallError> {
    let bytes: [u8; 8] = key
        .get(9..POINT_KEY_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| FjallError::corrupt("history key", "too short"))?;
    Ok(ts_from(bytes))
}

/// `EVENT ‖ device ‖ ts ‖ seq`: one event; `seq` keeps events of the same
/// millisecond apart and in write order.
pub(super) fn event_key(device: DeviceId, ts: Timestamp, seq: u64) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = EVENT;
    k[1..17].copy_from_slice(device.0.as_bytes());
    k[17..25].copy_from_slice(&ts_bytes(ts));
    k[25..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The timestamp of an event key.
pub(super) fn event_key_ts(key: &[u8]) -> Result<Timestamp, FjallError> {
    let bytes: [u8; 8] = key
        .get(17..25)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| FjallError::corrupt("event key", "too short"))?;
    Ok(ts_from(bytes))
}

/// `device ‖ key`: the name of a series in the `series` keyspace.
pub(super) fn series_name(device: DeviceId, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + key.len());
    k.extend_from_slice(device.0.as_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

/// The inverse of [`series_name`].
pub(super) fn series_from_name(name: &[u8]) -> Result<(DeviceId, String), FjallError> {
    if name.len() < 16 {
        return Err(FjallError::corrupt("series name", "too short"));
    }
    let (device, key) = name.split_at(16);
    let device = uuid::Uuid::from_slice(device)
        .map_err(|e| FjallError::corrupt("series name", e.to_string()))?;
    let key =
        std::str::from_utf8(key).map_err(|e| FjallError::corrupt("series name", e.to_string()))?;
    Ok((DeviceId(device), key.to_owned()))
}

/// A series id from its 8 bytes.
pub(super) fn u64_from(bytes: &[u8], what: &'static str) -> Result<u64, FjallError> {
    let b: [u8; 8] = bytes
        .try_into()
        .map_err(|_| FjallError::corrupt(what, format!("{} bytes, expected 8", bytes.len())))?;
    Ok(u64::from_be_bytes(b))
}

const BOOL: u8 = 0;
const INTEGER: u8 = 1;
const FLOAT: u8 = 2;
const STRING: u8 = 3;
const JSON: u8 = 4;

/// A value as `tag ‖ payload`: a float is 9 bytes.
pub(super) fn encode_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Bool(b) => out.extend_from_slice(&[BOOL, u8::from(*b)]),
        Value::Integer(i) => {
            out.push(INTEGER);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Value::Float(f) => {
            out.push(FLOAT);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::String(s) => {
            out.push(STRING);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Json(j) => {
            out.push(JSON);
            // Serialising a `serde_json::Value` cannot fail.
            let _ = serde_json::to_writer(&mut *out, j);
        }
    }
}

fn eight(payload: &[u8]) -> Result<[u8; 8], FjallError> {
    payload
        .try_into()
        .map_err(|_| FjallError::corrupt("value", format!("{} payload bytes", payload.len())))
}

/// The inverse of [`encode_value`].
pub(super) fn decode_value(bytes: &[u8]) -> Result<Value, FjallError> {
    let (&tag, payload) = bytes
        .split_first()
        .ok_or_else(|| FjallError::corrupt("value", "empty"))?;
    Ok(match tag {
        BOOL => Value::Bool(payload.first().is_some_and(|b| *b != 0)),
        INTEGER => Value::Integer(i64::from_le_bytes(eight(payload)?)),
        FLOAT => Value::Float(f64::from_le_bytes(eight(payload)?)),
        STRING => Value::String(
            String::from_utf8(payload.to_vec())
                .map_err(|e| FjallError::corrupt("value", e.to_string()))?,
        ),
        JSON => Value::Json(
            serde_json::from_slice(payload)
                .map_err(|e| FjallError::corrupt("value", e.to_string()))?,
        ),
        other => return Err(FjallError::corrupt("value", format!("type tag {other}"))),
    })
}

/// A latest value: `ts ‖ value`.
pub(super) fn encode_latest(ts: Timestamp, v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.extend_from_slice(&ts_bytes(ts));
    encode_value(v, &mut out);
    out
}

/// The timestamp of a latest value.
pub(super) fn latest_ts(bytes: &[u8]) -> Result<Timestamp, FjallError> {
    let b: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| FjallError::corrupt("latest value", "too short"))?;
    Ok(ts_from(b))
}

/// The inverse of [`encode_latest`].
pub(super) fn decode_latest(bytes: &[u8]) -> Result<(Timestamp, Value), FjallError> {
    Ok((latest_ts(bytes)?, decode_value(&bytes[8..])?))
}

/// The number aggregates use: booleans as 0/1, integers and floats as `f64`; `None`
/// for strings, JSON and NaN (ignored, as SQL aggregates ignore NULL).
pub(super) fn numeric(v: &Value) -> Option<f64> {
    match v {
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::Integer(i) => Some(*i as f64),
        Value::Float(f) => Some(*f).filter(|f| !f.is_nan()),
        Value::String(_) | Value::Json(_) => None,
    }
}

/// First byte of a chunk key in a partition: many points of one series.
pub(super) const CHUNK: u8 = 3;
/// Length of a chunk key: tag, series id, first timestamp, generation.
pub(super) const CHUNK_KEY_LEN: usize = 1 + 8 + 8 + 8;

/// `CHUNK ‖ series ‖ first_ts ‖ generation`: points of one series from `first_ts` on,
/// written by the head flush `generation` (a later generation wins on equal
/// timestamps).
pub(super) fn chunk_key(series: u64, first_ts: Timestamp, generation: u64) -> [u8; CHUNK_KEY_LEN] {
    let mut k = [0u8; CHUNK_KEY_LEN];
    k[0] = CHUNK;
    k[1..9].copy_from_slice(&series.to_be_bytes());
    k[9..17].copy_from_slice(&ts_bytes(first_ts));
    k[17..].copy_from_slice(&generation.to_be_bytes());
    k
}

/// `(first_ts, generation)` of a chunk key.
pub(super) fn chunk_key_parts(key: &[u8]) -> Result<(Timestamp, u64), FjallError> {
    if key.len() != CHUNK_KEY_LEN || key[0] != CHUNK {
        return Err(FjallError::corrupt(
            "chunk key",
            format!("{} bytes", key.len()),
        ));
    }
    let ts: [u8; 8] = key[9..17].try_into().expect("length checked");
    let generation: [u8; 8] = key[17..].try_into().expect("length checked");
    Ok((ts_from(ts), u64::from_be_bytes(generation)))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(input: &mut &[u8], what: &'static str) -> Result<u64, FjallError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = input
            .split_first()
            .ok_or_else(|| FjallError::corrupt(what, "ends inside a number"))?;
        *input = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(FjallError::corrupt(what, "number longer than 10 bytes"))
}

fn take<'a>(input: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], FjallError> {
    if input.len() < n {
        return Err(FjallError::corrupt(what, "truncated"));
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

/// A value inside a chunk or head record: like [`encode_value`], but integers are
/// zigzag varints and strings/JSON carry their length, so values can follow each
/// other.
fn put_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Bool(b) => out.extend_from_slice(&[BOOL, u8::from(*b)]),
        Value::Integer(i) => {
            out.push(INTEGER);
            put_varint(out, ((*i << 1) ^ (*i >> 63)) as u64);
        }
        Value::Float(f) => {
            out.push(FLOAT);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::String(s) => {
            out.push(STRING);
            put_varint(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Json(j) => {
            out.push(JSON);
            // Serialising a `serde_json::Value` cannot fail.
            let text = serde_json::to_vec(j).unwrap_or_default();
            put_varint(out, text.len() as u64);
            out.extend_from_slice(&text);
        }
    }
}

/// The inverse of [`put_value`].
fn take_value(input: &mut &[u8], what: &'static str) -> Result<Value, FjallError> {
    let tag = take(input, 1, what)?[0];
    Ok(match tag {
        BOOL => Value::Bool(take(input, 1, what)?[0] != 0),
        INTEGER => {
            let z = take_varint(input, what)?;
            Value::Integer(((z >> 1) as i64) ^ -((z & 1) as i64))
        }
        FLOAT => Value::Float(f64::from_le_bytes(eight(take(input, 8, what)?)?)),
        STRING | JSON => {
            let len = usize::try_from(take_varint(input, what)?)
                .map_err(|_| FjallError::corrupt(what, "length out of range"))?;
            let bytes = take(input, len, what)?;
            if tag == STRING {
                Value::String(
                    std::str::from_utf8(bytes)
                        .map_err(|e| FjallError::corrupt(what, e.to_string()))?
                        .to_owned(),
                )
            } else {
                Value::Json(
                    serde_json::from_slice(bytes)
                        .map_err(|e| FjallError::corrupt(what, e.to_string()))?,
                )
            }
        }
        other => return Err(FjallError::corrupt(what, format!("type tag {other}"))),
    })
}

/// A chunk: `count`, the distance from `first_ts` to the last timestamp (so a read
/// can skip a chunk without decoding it), then per point the distance to the previous
/// timestamp (the first one's to `first_ts`, the chunk key's) and the value. `points`
/// ascend by timestamp, none before `first_ts`.
pub(super) fn encode_chunk<'a>(
    first_ts: Timestamp,
    points: impl ExactSizeIterator<Item = (Timestamp, &'a Value)> + Clone,
    out: &mut Vec<u8>,
) {
    put_varint(out, points.len() as u64);
    let last = points.clone().last().map_or(first_ts, |p| p.0);
    put_varint(out, last.wrapping_sub(first_ts) as u64);
    let mut prev = first_ts;
    for (ts, v) in points {
        put_varint(out, ts.wrapping_sub(prev) as u64);
        prev = ts;
        put_value(v, out);
    }
}

/// The last timestamp of a chunk, read from its header.
pub(super) fn chunk_last_ts(
    first_ts: Timestamp,
    mut bytes: &[u8],
) -> Result<Timestamp, FjallError> {
    take_varint(&mut bytes, "chunk")?;
    Ok(first_ts.wrapping_add(take_varint(&mut bytes, "chunk")? as i64))
}

/// The inverse of [`encode_chunk`]: `f` gets each point in order.
pub(super) fn decode_chunk(
    first_ts: Timestamp,
    mut bytes: &[u8],
    mut f: impl FnMut(Timestamp, Value),
) -> Result<(), FjallError> {
    const WHAT: &str = "chunk";
    let n = take_varint(&mut bytes, WHAT)?;
    take_varint(&mut bytes, WHAT)?;
    let mut ts = first_ts;
    for _ in 0..n {
        ts = ts.wrapping_add(take_varint(&mut bytes, WHAT)? as i64);
        f(ts, take_value(&mut bytes, WHAT)?);
    }
    if !bytes.is_empty() {
        return Err(FjallError::corrupt(WHAT, "bytes after the last point"));
    }
    Ok(())
}

/// One point of a head record (a write batch as it arrived): series id, timestamp,
/// value.
pub(super) fn put_head_point(series: u64, ts: Timestamp, v: &Value, out: &mut Vec<u8>) {
    put_varint(out, series);
    out.extend_from_slice(&ts.to_le_bytes());
    put_value(v, out);
}

/// Every point of a head record, in the order written.
pub(super) fn decode_head(
    mut bytes: &[u8],
    mut f: impl FnMut(u64, Timestamp, Value),
) -> Result<(), FjallError> {
    const WHAT: &str = "head record";
    while !bytes.is_empty() {
        let series = take_varint(&mut bytes, WHAT)?;
        let ts = i64::from_le_bytes(eight(take(&mut bytes, 8, WHAT)?)?);
        f(series, ts, take_value(&mut bytes, WHAT)?);
    }
    Ok(())
}

/// An event's value: `u32 len ‖ message_id ‖ u32 len ‖ method ‖ params (JSON)`.
pub(super) fn encode_event(e: &DeviceEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + e.message_id.len() + e.method.len());
    for s in [&e.message_id, &e.method] {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let _ = serde_json::to_writer(&mut out, &e.params);
    out
}

/// The inverse of [`encode_event`].
pub(super) fn decode_event(
    device: DeviceId,
    ts: Timestamp,
    bytes: &[u8],
) -> Result<DeviceEvent, FjallError> {
    let mut rest = bytes;
    let mut text = || -> Result<String, FjallError> {
        let len = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| FjallError::corrupt("event", "too short"))? as usize;
        let s = rest
            .get(4..4 + len)
            .ok_or_else(|| FjallError::corrupt("event", "too short"))?;
        let s = String::from_utf8(s.to_vec())
            .map_err(|e| FjallError::corrupt("event", e.to_string()))?;
        rest = &rest[4 + len..];
        Ok(s)
    };
    let message_id = text()?;
    let method = text()?;
    Ok(DeviceEvent {
        device_id: device,
        ts,
        message_id,
        method,
        params: serde_json::from_slice(rest)
            .map_err(|e| FjallError::corrupt("event", e.to_string()))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_sort_as_bytes() {
        let ts = [i64::MIN, -1_000, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        for w in ts.windows(2) {
            assert!(ts_bytes(w[0]) < ts_bytes(w[1]), "{w:?}");
            assert!(point_key(7, w[0]) < point_key(7, w[1]));
        }
        for t in ts {
            assert_eq!(ts_from(ts_bytes(t)), t);
            assert_eq!(point_key_ts(&point_key(3, t)).unwrap(), t);
        }
        // Series first: every point of series 1 sorts before any of series 2.
        assert!(point_key(1, i64::MAX) < point_key(2, i64::MIN));
    }

    #[test]
    fn values_round_trip() {
        for v in [
            Value::Bool(true),
            Value::Bool(false),
            Value::Integer(-42),
            Value::Float(21.5),
            Value::String("héllo".into()),
            Value::Json(serde_json::json!({"a": [1, 2]})),
        ] {
            let mut buf = Vec::new();
            encode_value(&v, &mut buf);
            assert_eq!(decode_value(&buf).unwrap(), v);
            let latest = encode_latest(-5, &v);
            assert_eq!(decode_latest(&latest).unwrap(), (-5, v));
        }
        let mut buf = Vec::new();
        encode_value(&Value::Float(1.5), &mut buf);
        assert_eq!(buf.len(), 9);
        assert_eq!(numeric(&Value::Float(1.5)), Some(1.5));
        assert_eq!(numeric(&Value::String("x".into())), None);
        assert_eq!(numeric(&Value::Float(f64::NAN)), None);
        assert!(decode_value(&[9]).is_err());
        assert!(decode_value(&[]).is_err());
    }

    #[test]
    fn events_and_series_names_round_trip() {
        let d = DeviceId::new();
        let e = DeviceEvent {
            device_id: d,
            ts: 12,
            message_id: "m-1".into(),
            method: "alarm".into(),
            params: serde_json::json!({"level": 3}),
        };
        assert_eq!(decode_event(d, 12, &encode_event(&e)).unwrap(), e);
        assert_eq!(event_key_ts(&event_key(d, -3, 9)).unwrap(), -3);
        assert!(event_key(d, 5, u64::MAX) < event_key(d, 6, 0));
        let (dev, key) = series_from_name(&series_name(d, "temp")).unwrap();
        assert_eq!((dev, key.as_str()), (d, "temp"));
    }

    fn any_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Integer),
            any::<f64>()
                .prop_filter("NaN never equals itself", |f| !f.is_nan())
                .prop_map(Value::Float),
            ".{0,20}".prop_map(Value::String),
            any::<i32>().prop_map(|n| Value::Json(serde_json::json!({ "n": n }))),
        ]
    }

    proptest::proptest! {
        /// Chunks and head records give back exactly what was encoded, for any
        /// timestamps (the whole i64 range) and values.
        #[test]
        fn chunks_and_head_records_round_trip(
            mut points in proptest::collection::vec((proptest::num::i64::ANY, any_value()), 0..40),
            series in proptest::num::u64::ANY,
        ) {
            points.sort_by_key(|p| p.0);
            let first = points.first().map_or(0, |p| p.0);
            let mut buf = Vec::new();
            encode_chunk(first, points.iter().map(|(t, v)| (*t, v)), &mut buf);
            let mut back = Vec::new();
            decode_chunk(first, &buf, |t, v| back.push((t, v))).unwrap();
            proptest::prop_assert_eq!(&back, &points);
            proptest::prop_assert_eq!(
                chunk_last_ts(first, &buf).unwrap(),
                points.last().map_or(first, |p| p.0)
            );

            let mut record = Vec::new();
            for (t, v) in &points {
                put_head_point(series, *t, v, &mut record);
            }
            let mut back = Vec::new();
            decode_head(&record, |s, t, v| back.push((s, t, v))).unwrap();
            let want: Vec<_> = points.iter().map(|(t, v)| (series, *t, v.clone())).collect();
            proptest::prop_assert_eq!(back, want);
        }

        /// Damaged bytes are an error, never a panic.
        #[test]
        fn damaged_chunks_are_errors(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = decode_chunk(0, &bytes, |_, _| {});
            let _ = decode_head(&bytes, |_, _, _| {});
            let _ = chunk_last_ts(0, &bytes);
            let _ = chunk_key_parts(&bytes);
        }
    }

    #[test]
    fn chunk_keys_sort_by_series_then_time() {
        assert!(chunk_key(1, 5, 9) < chunk_key(1, 6, 0));
        assert!(chunk_key(1, i64::MAX, u64::MAX) < chunk_key(2, i64::MIN, 0));
        assert_eq!(chunk_key_parts(&chunk_key(4, -7, 3)).unwrap(), (-7, 3));
        assert!(chunk_key_parts(&point_key(4, 1)).is_err());
    }
}

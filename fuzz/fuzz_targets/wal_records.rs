//! The write-ahead-log record reader (`tp_broker::wal::decode_records`), which reads
//! segment files left on disk by a previous run (possibly torn or corrupt). Oracles:
//! no panic, the valid records plus the bad tail account for every byte, and the
//! records re-encode to exactly the bytes they were read from.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tp_broker::wal::{decode_records, encode_record};

fuzz_target!(|data: &[u8]| {
    let buf = Bytes::copy_from_slice(data);
    let decoded = decode_records(&buf);
    assert!(decoded.bad_tail_bytes <= data.len());
    let good = data.len() - decoded.bad_tail_bytes;
    let mut encoded = Vec::with_capacity(good);
    for r in &decoded.records {
        encoded.extend_from_slice(&encode_record(r.device_id, r.ts, &r.topic, &r.payload));
    }
    assert_eq!(
        &encoded[..],
        &data[..good],
        "records re-encode to their bytes"
    );
    if decoded.bad_tail_bytes > 0 {
        // Reading stops at the first bad record: the tail alone has no good first record.
        let tail = buf.slice(good..);
        let rest = decode_records(&tail);
        assert!(rest.records.is_empty());
        assert_eq!(rest.bad_tail_bytes, tail.len());
    }
});

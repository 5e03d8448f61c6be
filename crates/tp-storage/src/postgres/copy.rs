//! PostgreSQL's binary `COPY` format, written by hand (sqlx only moves the bytes:
//! [`sqlx::postgres::PgConnection::copy_in_raw`]).
//!
//! The format (<https://www.postgresql.org/docs/current/sql-copy.html>, "Binary
//! Format"), all integers big-endian:
//!
//! - header: the 11-byte signature `PGCOPY\n\xff\r\n\0`, a 32-bit flags field (0:
//!   no OIDs) and a 32-bit header-extension length (0);
//! - each tuple: a 16-bit field count, then per field a 32-bit byte length (`-1` for
//!   NULL, no bytes follow) and the value in the type's binary send format;
//! - trailer: a 16-bit `-1`.
//!
//! Values, as the server's `*send` functions write them: `int2`/`int8` two's
//! complement, `float8` the IEEE 754 bits, `bool` one byte 0/1, `uuid` its 16 bytes,
//! `text` the UTF-8 bytes (no terminator), `timestamptz` microseconds since
//! 2000-01-01 00:00:00 UTC as an `int8`, `jsonb` a version byte `1` then the JSON text.
//!
//! The encoder does not know the table: the caller writes the columns in the order
//! the `COPY` statement names them, with the types of those columns. Debug builds
//! check that every tuple has the declared number of fields.

use uuid::Uuid;

/// The 11-byte signature that starts every binary `COPY` stream.
pub(super) const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Milliseconds from the Unix epoch to PostgreSQL's epoch (2000-01-01 UTC).
#[cfg(test)]
const PG_EPOCH_UNIX_MS: i64 = 946_684_800_000;

/// Builds one binary `COPY ... FROM STDIN (FORMAT binary)` payload in memory.
#[derive(Debug)]
pub(super) struct CopyBuffer {
    buf: Vec<u8>,
    /// Fields per tuple.
    columns: i16,
    /// Fields written in the current tuple (debug check).
    in_row: i16,
    rows: usize,
}

impl CopyBuffer {
    /// A payload of tuples with `columns` fields each; `capacity` bytes reserved.
    pub(super) fn new(columns: i16, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity.max(32));
        buf.extend_from_slice(SIGNATURE);
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        Self {
            buf,
            columns,
            in_row: columns,
            rows: 0,
        }
    }

    /// Starts a tuple; write exactly `columns` fields next.
    pub(super) fn row(&mut self) -> &mut Self {
        debug_assert_eq!(self.in_row, self.columns, "previous tuple is incomplete");
        self.buf.extend_from_slice(&self.columns.to_be_bytes());
        self.in_row = 0;
        self.rows += 1;
        self
    }

    fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.in_row += 1;
        debug_assert!(self.in_row <= self.columns, "too many fields in a tuple");
        // A field is at most 1 GB in PostgreSQL; our values (one payload) are far below.
        let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(bytes);
        self
    }

    /// A NULL of any type.
    pub(super) fn null(&mut self) -> &mut Self {
        self.in_row += 1;
        debug_assert!(self.in_row <= self.columns, "too many fields in a tuple");
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
        self
    }

    /// `uuid`.
    pub(super) fn uuid(&mut self, v: &Uuid) -> &mut Self {
        self.field(v.as_bytes())
    }

    /// `text` (also `varchar`, any collation).
    pub(super) fn text(&mut self, v: &str) -> &mut Self {
        self.field(v.as_bytes())
    }

    /// `int2`.
    pub(super) fn int2(&mut self, v: i16) -> &mut Self {
        self.field(&v.to_be_bytes())
    }

    /// `int8`.
    pub(super) fn int8(&mut self, v: i64) -> &mut Self {
        self.field(&v.to_be_bytes())
    }

    /// `float8` (NaN and infinities included).
    pub(super) fn float8(&mut self, v: f64) -> &mut Self {
        self.field(&v.to_bits().to_be_bytes())
    }

    /// `bool`.
    pub(super) fn bool(&mut self, v: bool) -> &mut Self {
        self.field(&[u8::from(v)])
    }

    /// `timestamptz` from Unix milliseconds. No column of ours is a `timestamptz`
    /// (times are `bigint` milliseconds); tests check the encoding on a real server.
    #[cfg(test)]
    pub(super) fn timestamptz_ms(&mut self, unix_ms: i64) -> &mut Self {
        let us = unix_ms
            .saturating_sub(PG_EPOCH_UNIX_MS)
            .saturating_mul(1000);
        self.field(&us.to_be_bytes())
    }

    /// `jsonb` from JSON text (version byte 1, then the text).
    pub(super) fn jsonb(&mut self, json: &str) -> &mut Self {
        self.in_row += 1;
        debug_assert!(self.in_row <= self.columns, "too many fields in a tuple");
        let len = i32::try_from(json.len() + 1).unwrap_or(i32::MAX);
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.push(1);
        self.buf.extend_from_slice(json.as_bytes());
        self
    }

    /// Either a value or NULL.
    pub(super) fn opt<T>(
        &mut self,
        v: Option<T>,
        write: impl FnOnce(&mut Self, T) -> &mut Self,
    ) -> &mut Self {
        match v {
            Some(v) => write(self, v),
            None => self.null(),
        }
    }

    /// Tuples written so far.
    #[cfg(test)]
    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    /// The complete payload, trailer included.
    pub(super) fn finish(mut self) -> Vec<u8> {
        debug_assert_eq!(self.in_row, self.columns, "last tuple is incomplete");
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

/// A decoded field (tests): `None` is NULL.
#[cfg(test)]
pub(super) type Field = Option<Vec<u8>>;

/// Decodes a payload [`CopyBuffer`] wrote back into tuples of raw fields (tests).
/// Fails on anything the server would reject structurally.
#[cfg(test)]
pub(super) fn decode(mut b: &[u8]) -> Result<Vec<Vec<Field>>, String> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if b.len() < n {
            return Err(format!("need {n} bytes, have {}", b.len()));
        }
        let (head, tail) = b.split_at(n);
        *b = tail;
        Ok(head)
    }
    fn i16_(b: &mut &[u8]) -> Result<i16, String> {
        Ok(i16::from_be_bytes(take(b, 2)?.try_into().expect("2 bytes")))
    }
    fn i32_(b: &mut &[u8]) -> Result<i32, String> {
        Ok(i32::from_be_bytes(take(b, 4)?.try_into().expect("4 bytes")))
    }
    if take(&mut b, 11)? != SIGNATURE {
        return Err("bad signature".into());
    }
    if i32_(&mut b)? != 0 {
        return Err("flags".into());
    }
    let ext = i32_(&mut b)?;
    take(
        &mut b,
        usize::try_from(ext).map_err(|_| "extension length")?,
    )?;
    let mut rows = Vec::new();
    loop {
        let n = i16_(&mut b)?;
        if n == -1 {
            return if b.is_empty() {
                Ok(rows)
            } else {
                Err("bytes after the trailer".into())
            };
        }
        let mut row = Vec::new();
        for _ in 0..n {
            let len = i32_(&mut b)?;
            row.push(if len == -1 {
                None
            } else {
                Some(take(&mut b, usize::try_from(len).map_err(|_| "negative length")?)?.to_vec())
            });
        }
        rows.push(row);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn empty_payload_is_header_and_trailer() {
        let bytes = CopyBuffer::new(3, 0).finish();
        let mut want = SIGNATURE.to_vec();
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(bytes, want);
        assert_eq!(decode(&bytes).expect("decode"), Vec::<Vec<Field>>::new());
    }

    #[test]
    fn known_encodings() {
        let id = Uuid::from_u128(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10);
        let mut c = CopyBuffer::new(8, 0);
        c.row()
            .uuid(&id)
            .text("é")
            .int2(-2)
            .int8(1)
            .float8(1.5)
            .bool(true)
            .timestamptz_ms(PG_EPOCH_UNIX_MS + 1)
            .jsonb("{}");
        let rows = decode(&c.finish()).expect("decode");
        let f = |i: usize| rows[0][i].clone().expect("not null");
        assert_eq!(f(0), (1u8..=16).collect::<Vec<_>>());
        assert_eq!(f(1), vec![0xc3, 0xa9]);
        assert_eq!(f(2), vec![0xff, 0xfe]);
        assert_eq!(f(3), vec![0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(f(4), vec![0x3f, 0xf8, 0, 0, 0, 0, 0, 0]);
        assert_eq!(f(5), vec![1]);
        assert_eq!(f(6), 1000i64.to_be_bytes().to_vec(), "µs since 2000-01-01");
        assert_eq!(f(7), b"\x01{}".to_vec(), "jsonb version 1");
    }

    /// One column value of any supported type.
    #[derive(Debug, Clone)]
    enum Cell {
        Null,
        Uuid(u128),
        Text(String),
        Int2(i16),
        Int8(i64),
        Float8(f64),
        Bool(bool),
        Ts(i64),
        Jsonb(String),
    }

    fn cell() -> impl Strategy<Value = Cell> {
        prop_oneof![
            Just(Cell::Null),
            any::<u128>().prop_map(Cell::Uuid),
            ".{0,40}".prop_map(Cell::Text),
            any::<i16>().prop_map(Cell::Int2),
            any::<i64>().prop_map(Cell::Int8),
            any::<f64>().prop_map(Cell::Float8),
            any::<bool>().prop_map(Cell::Bool),
            (-1_000_000_000_000_000i64..1_000_000_000_000_000).prop_map(Cell::Ts),
            ".{0,20}".prop_map(|s| Cell::Jsonb(serde_json::json!({ "s": s }).to_string())),
        ]
    }

    proptest! {
        /// Every tuple decodes back to its fields, each in the type's binary format.
        #[test]
        fn round_trip(rows in prop::collection::vec(prop::collection::vec(cell(), 4), 0..20)) {
            let mut c = CopyBuffer::new(4, 0);
            for row in &rows {
                c.row();
                for cell in row {
                    match cell {
                        Cell::Null => c.null(),
                        Cell::Uuid(u) => c.uuid(&Uuid::from_u128(*u)),
                        Cell::Text(s) => c.text(s),
                        Cell::Int2(v) => c.int2(*v),
                        Cell::Int8(v) => c.int8(*v),
                        Cell::Float8(v) => c.float8(*v),
                        Cell::Bool(v) => c.bool(*v),
                        Cell::Ts(v) => c.timestamptz_ms(*v),
                        Cell::Jsonb(s) => c.jsonb(s),
                    };
                }
            }
            prop_assert_eq!(c.rows(), rows.len());
            let decoded = decode(&c.finish()).map_err(TestCaseError::fail)?;
            prop_assert_eq!(decoded.len(), rows.len());
            for (row, got) in rows.iter().zip(&decoded) {
                prop_assert_eq!(got.len(), 4);
                for (cell, field) in row.iter().zip(got) {
                    match (cell, field) {
                        (Cell::Null, None) => {}
                        (Cell::Uuid(u), Some(b)) => prop_assert_eq!(Uuid::from_slice(b).ok(), Some(Uuid::from_u128(*u))),
                        (Cell::Text(s), Some(b)) => prop_assert_eq!(std::str::from_utf8(b).ok(), Some(s.as_str())),
                        (Cell::Int2(v), Some(b)) => prop_assert_eq!(b.as_slice(), &v.to_be_bytes()[..]),
                        (Cell::Int8(v), Some(b)) => prop_assert_eq!(b.as_slice(), &v.to_be_bytes()[..]),
                        (Cell::Float8(v), Some(b)) => {
                            let bits = u64::from_be_bytes(b.as_slice().try_into().map_err(|_| TestCaseError::fail("8 bytes"))?);
                            prop_assert_eq!(bits, v.to_bits());
                        }
                        (Cell::Bool(v), Some(b)) => prop_assert_eq!(b.as_slice(), &[u8::from(*v)][..]),
                        (Cell::Ts(ms), Some(b)) => {
                            let us = i64::from_be_bytes(b.as_slice().try_into().map_err(|_| TestCaseError::fail("8 bytes"))?);
                            prop_assert_eq!(us, (ms - PG_EPOCH_UNIX_MS) * 1000);
                        }
                        (Cell::Jsonb(s), Some(b)) => {
                            prop_assert_eq!(b[0], 1u8);
                            prop_assert_eq!(&b[1..], s.as_bytes());
                        }
                        (cell, field) => prop_assert!(false, "{cell:?} decoded as {field:?}"),
                    }
                }
            }
        }
    }
}

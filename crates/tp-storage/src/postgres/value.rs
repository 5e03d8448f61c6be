//! [`Value`] <-> the `(vtype, v_int, v_real, v_text)` columns shared by attributes and
//! time series, one value at a time or as `UNNEST`-ready column arrays.

use std::borrow::Cow;

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{Postgres, Row};
use tp_core::Value;

use super::error::PgError;

/// Values split into parallel column arrays, bound as `$n::smallint[]`, `$n::bigint[]`,
/// `$n::float8[]` and `$n::text[]`.
#[derive(Debug, Default)]
pub(super) struct ValueArrays {
    pub(super) tag: Vec<i16>,
    pub(super) int: Vec<Option<i64>>,
    pub(super) real: Vec<Option<f64>>,
    pub(super) text: Vec<Option<String>>,
}

impl ValueArrays {
    pub(super) fn with_capacity(n: usize) -> Self {
        Self {
            tag: Vec::with_capacity(n),
            int: Vec::with_capacity(n),
            real: Vec::with_capacity(n),
            text: Vec::with_capacity(n),
        }
    }

    pub(super) fn push(&mut self, v: &Value) {
        let (int, real, text) = columns(v);
        // Tags are 0..=4 by definition of `Value::type_tag`.
        self.tag.push(v.type_tag() as i16);
        self.int.push(int);
        self.real.push(real);
        self.text.push(text.map(Cow::into_owned));
    }
}

/// Binds [`ValueArrays`] on a query.
pub(super) trait BindValues {
    /// Binds the arrays as the next four parameters, in column order.
    fn bind_values(self, values: ValueArrays) -> Self;
}

impl BindValues for Query<'_, Postgres, PgArguments> {
    fn bind_values(self, values: ValueArrays) -> Self {
        self.bind(values.tag)
            .bind(values.int)
            .bind(values.real)
            .bind(values.text)
    }
}

/// A value's `v_int`, `v_real` and `v_text` columns (its tag is `type_tag`).
pub(super) fn columns(v: &Value) -> (Option<i64>, Option<f64>, Option<Cow<'_, str>>) {
    match v {
        Value::Bool(b) => (Some(i64::from(*b)), None, None),
        Value::Integer(i) => (Some(*i), None, None),
        Value::Float(f) => (None, Some(*f), None),
        Value::String(s) => (None, None, Some(s.as_str().into())),
        Value::Json(j) => (None, None, Some(j.to_string().into())),
    }
}

/// Decodes the `vtype, v_int, v_real, v_text` columns of a row.
pub(super) fn decode(row: &PgRow) -> Result<Value, PgError> {
    let tag: i16 = row.try_get("vtype")?;
    let int: Option<i64> = row.try_get("v_int")?;
    let real: Option<f64> = row.try_get("v_real")?;
    let text: Option<String> = row.try_get("v_text")?;
    let missing = |col| PgError::decode(col, format!("NULL for type tag {tag}"));
    Ok(match tag {
        0 => Value::Bool(int.ok_or_else(|| missing("v_int"))? != 0),
        1 => Value::Integer(int.ok_or_else(|| missing("v_int"))?),
        2 => Value::Float(real.ok_or_else(|| missing("v_real"))?),
        3 => Value::String(text.ok_or_else(|| missing("v_text"))?),
        4 => {
            let text = text.ok_or_else(|| missing("v_text"))?;
            Value::Json(serde_json::from_str(&text).map_err(|e| PgError::decode("v_text", e))?)
        }
        other => {
            return Err(PgError::decode(
                "vtype",
                format!("unknown type tag {other}"),
            ));
        }
    })
}

//! [`Value`] <-> the `(vtype, v_int, v_real, v_text)` columns shared by attributes and
//! time series.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use tp_core::Value;

use super::error::SqliteError;

/// A value split into its SQL columns.
pub(super) struct Columns {
    pub(super) tag: i64,
    pub(super) int: Option<i64>,
    pub(super) real: Option<f64>,
    pub(super) text: Option<String>,
}

pub(super) fn encode(v: &Value) -> Columns {
    let (int, real, text) = match v {
        Value::Bool(b) => (Some(i64::from(*b)), None, None),
        Value::Integer(i) => (Some(*i), None, None),
        Value::Float(f) => (None, Some(*f), None),
        Value::String(s) => (None, None, Some(s.clone())),
        Value::Json(j) => (None, None, Some(j.to_string())),
    };
    Columns {
        tag: v.type_tag(),
        int,
        real,
        text,
    }
}

/// Decodes the `vtype, v_int, v_real, v_text` columns of a row.
pub(super) fn decode(row: &SqliteRow) -> Result<Value, SqliteError> {
    let tag: i64 = row.try_get("vtype")?;
    let int: Option<i64> = row.try_get("v_int")?;
    let real: Option<f64> = row.try_get("v_real")?;
    let text: Option<String> = row.try_get("v_text")?;
    let missing = |col| SqliteError::decode(col, format!("NULL for type tag {tag}"));
    Ok(match tag {
        0 => Value::Bool(int.ok_or_else(|| missing("v_int"))? != 0),
        1 => Value::Integer(int.ok_or_else(|| missing("v_int"))?),
        // SQLite stores NaN as NULL.
        2 => Value::Float(real.unwrap_or(f64::NAN)),
        3 => Value::String(text.ok_or_else(|| missing("v_text"))?),
        4 => {
            let text = text.ok_or_else(|| missing("v_text"))?;
            Value::Json(serde_json::from_str(&text).map_err(|e| SqliteError::decode("v_text", e))?)
        }
        other => {
            return Err(SqliteError::decode(
                "vtype",
                format!("unknown type tag {other}"),
            ));
        }
    })
}

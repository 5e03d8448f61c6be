//! The `json` module of data scripts, as ThingsPanel's scripts use it:
//! `json.decode(string)` gives a table (JSON `null` becomes `nil`) and
//! `json.encode(value)` a string; both return `nil, message` on bad input rather than
//! raising, like the gopher-json module TP preloads.

use mlua::serde::SerializeOptions;
use mlua::{Lua, LuaSerdeExt, Table, Value};

/// The module table.
pub(crate) fn module(lua: &Lua) -> mlua::Result<Table> {
    let json = lua.create_table()?;
    let decode = lua.create_function(|lua, text: mlua::LuaString| {
        let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&text.as_bytes());
        match parsed {
            Ok(value) => {
                let options = SerializeOptions::new()
                    .serialize_none_to_null(false)
                    .serialize_unit_to_null(false);
                Ok((lua.to_value_with(&value, options)?, Value::Nil))
            }
            Err(e) => Ok((
                Value::Nil,
                Value::String(lua.create_string(format!("json decode: {e}"))?),
            )),
        }
    })?;
    json.set("decode", decode)?;
    let encode = lua.create_function(|lua, value: Value| {
        let converted: mlua::Result<serde_json::Value> = lua.from_value(value);
        match converted.map(|v| serde_json::to_string(&v)) {
            Ok(Ok(text)) => Ok((Value::String(lua.create_string(text)?), Value::Nil)),
            Ok(Err(e)) => Ok((
                Value::Nil,
                Value::String(lua.create_string(format!("json encode: {e}"))?),
            )),
            Err(e) => Ok((
                Value::Nil,
                Value::String(lua.create_string(format!("json encode: {e}"))?),
            )),
        }
    })?;
    json.set("encode", encode)?;
    Ok(json)
}

//! Schema pieces the derive cannot express (feature `openapi`), shared by the model
//! types here and the request types of the REST API.

use utoipa::openapi::schema::{Array, ArrayBuilder, Object, ObjectBuilder, Type};

/// Longest key of a values object, in characters (as the API checks it).
pub const MAX_VALUE_KEY_CHARS: usize = 255;

/// A JSON object with at least one member whose names are 1 to
/// [`MAX_VALUE_KEY_CHARS`] characters: attribute or control values sent to a device.
pub fn non_empty_values() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .min_properties(Some(1))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_VALUE_KEY_CHARS)),
        ))
        .description(Some("A non-empty JSON object of values keyed by name"))
        .build()
}

/// Days of the week, 1 = Monday .. 7 = Sunday (a time-range condition's `weekdays`).
pub fn weekdays() -> Array {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(7)),
        )
        .description(Some(
            "Days the window applies, 1 = Monday .. 7 = Sunday; empty = every day",
        ))
        .build()
}

/// A list of keys, each 1 to [`MAX_VALUE_KEY_CHARS`] characters (empty: all keys).
pub fn key_list() -> Array {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_VALUE_KEY_CHARS)),
        )
        .description(Some("Keys, each 1 to 255 characters; empty means all"))
        .build()
}

/// A chart's keys: 1 to 8 distinct keys, each 1 to 255 characters.
pub fn chart_keys() -> Array {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_VALUE_KEY_CHARS))
                .pattern(Some(r"\S")),
        )
        .min_items(Some(1))
        .max_items(Some(8))
        .unique_items(true)
        .description(Some(
            "Telemetry keys, 1 to 8 distinct, each 1 to 255 characters",
        ))
        .build()
}

/// What a dashboard button sends: a boolean, a number or a string of at most 255
/// characters.
pub fn control_value() -> utoipa::openapi::schema::Schema {
    utoipa::openapi::schema::OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Boolean))
        .item(ObjectBuilder::new().schema_type(Type::Number))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(255)),
        )
        .description(Some(
            "A boolean, a number or a string of at most 255 characters",
        ))
        .build()
        .into()
}

//! Integer fields that also accept a JSON number with a zero fraction (`776.0`).
//!
//! JSON Schema counts `776.0` as an integer, and so do generated clients and
//! languages whose numbers are all floats; serde's integer types refuse it. Fields of
//! request and rule types use these with `#[serde(deserialize_with = "...")]`, so
//! what the OpenAPI document calls an integer is accepted in every spelling the
//! document allows, and a real fraction or an out-of-range value is still an error.
//!
//! ```
//! #[derive(serde::Deserialize)]
//! struct Req {
//!     #[serde(deserialize_with = "tp_core::serde_int::integer")]
//!     secs: u32,
//!     #[serde(default, deserialize_with = "tp_core::serde_int::optional")]
//!     limit: Option<u16>,
//! }
//! let r: Req = serde_json::from_str(r#"{"secs": 776.0, "limit": 3}"#).unwrap();
//! assert_eq!((r.secs, r.limit), (776, Some(3)));
//! assert!(serde_json::from_str::<Req>(r#"{"secs": 1.5}"#).is_err());
//! assert!(serde_json::from_str::<Req>(r#"{"secs": -1}"#).is_err());
//! ```

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// One integer of type `T`, read from any integral JSON number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Integral<T>(pub T);

impl<'de, T: TryFrom<i128>> Deserialize<'de> for Integral<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<T: TryFrom<i128>> V<T> {
            fn fit<E: de::Error>(n: i128) -> Result<Integral<T>, E> {
                T::try_from(n).map(Integral).map_err(|_| {
                    E::invalid_value(
                        de::Unexpected::Other(&n.to_string()),
                        &"an integer in range",
                    )
                })
            }
        }
        impl<T: TryFrom<i128>> Visitor<'_> for V<T> {
            type Value = Integral<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Self::fit(i128::from(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Self::fit(i128::from(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                // Exactly representable integers only: |v| < 2^63 keeps the cast exact
                // for every value that can fit an i64 or smaller type.
                if v.fract() == 0.0 && v.abs() < 9_223_372_036_854_775_808.0 {
                    #[allow(clippy::cast_possible_truncation)]
                    return Self::fit(v as i128);
                }
                Err(E::invalid_type(de::Unexpected::Float(v), &self))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// `deserialize_with` for an integer field.
pub fn integer<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<T, D::Error> {
    Integral::deserialize(d).map(|Integral(v)| v)
}

/// `deserialize_with` for an optional integer field (`null` is `None`; pair it with
/// `#[serde(default)]` so an absent field is `None` too).
pub fn optional<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<Integral<T>>::deserialize(d).map(|v| v.map(|Integral(v)| v))
}

/// `deserialize_with` for a change to an optional integer, where a present `null`
/// clears the value: `Some(None)`; with `#[serde(default)]` an absent field is `None`.
pub fn nullable<'de, D: Deserializer<'de>, T: TryFrom<i128>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    optional(d).map(Some)
}

/// `deserialize_with` for a list of integers.
pub fn list<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<Vec<T>, D::Error> {
    Vec::<Integral<T>>::deserialize(d).map(|v| v.into_iter().map(|Integral(v)| v).collect())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::Integral;

    proptest! {
        #[test]
        fn any_i32_reads_as_integer_or_float(n in any::<i32>()) {
            let int: Integral<i32> = serde_json::from_str(&n.to_string()).unwrap();
            let float: Integral<i32> = serde_json::from_str(&format!("{n}.0")).unwrap();
            prop_assert_eq!(int.0, n);
            prop_assert_eq!(float.0, n);
        }

        #[test]
        fn fractions_and_out_of_range_are_refused(n in any::<i32>()) {
            let half = format!("{n}.5");
            let half_read = serde_json::from_str::<Integral<i32>>(&half);
            prop_assert!(half_read.is_err());
            let big = i64::from(n) + i64::from(i32::MAX) + 1;
            let big_read = serde_json::from_str::<Integral<i32>>(&big.to_string());
            prop_assert_eq!(big_read.is_ok(), i32::try_from(big).is_ok());
        }
    }

    #[test]
    fn strings_and_nulls_are_not_integers() {
        assert!(serde_json::from_str::<Integral<u32>>("\"5\"").is_err());
        assert!(serde_json::from_str::<Integral<u32>>("null").is_err());
        assert!(serde_json::from_str::<Integral<u32>>("1e300").is_err());
    }
}

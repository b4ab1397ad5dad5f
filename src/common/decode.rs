//! Reading back JSON that this program wrote itself: the state `upgrade-self` carries
//! from the old image to the new one (docs/unattended.md). Each carried type says, field
//! by field, how it is read from a parsed `serde_json::Value`; writing it stays serde's
//! derived `Serialize`, and each type's tests send values through both (write, read,
//! write again, compare) so that the two cannot drift apart.
//!
//! Why not serde's derived `Deserialize`: for these two dozen types it compiled to about
//! 85 KB of the binary (a visitor per type and a parser instance behind each), where
//! reading an already-parsed `Value` costs a few KB. The config file, whose readers need
//! serde's `line:column` errors, keeps the derive.
//!
//! The reading is serde's default representation, strict (a wrong field is an error
//! naming its path, and the new image then refuses to take over rather than guess at
//! live processes) except where serde's `default` is lenient: an absent field reads as
//! `null`, which an `Option` takes as `None`, so that what an older image wrote without
//! a newer field is still read. The control protocol's readers (`protocol.rs`) are
//! lenient on purpose instead: a client shows what it can of another version's reply.

use serde_json::Value;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

/// What went wrong, with the path to it (`services: 2: machine: phase: Up: run: pid:
/// expected an integer (i32), found "x"`).
pub type Result<T> = std::result::Result<T, String>;

/// A type read back from the JSON that its derived `Serialize` wrote.
pub trait Decode: Sized {
    fn decode(v: &Value) -> Result<Self>;
}

/// Field `key` of the object `v`; an absent field reads as `null`.
pub fn field<T: Decode>(v: &Value, key: &str) -> Result<T> {
    let Value::Object(map) = v else {
        return Err(format!("expected an object, found {}", kind(v)));
    };
    T::decode(map.get(key).unwrap_or(&Value::Null)).map_err(|e| format!("{key}: {e}"))
}

/// Field `key`, or the type's default when it is absent or `null` (serde's `default`).
pub fn field_or_default<T: Decode + Default>(v: &Value, key: &str) -> Result<T> {
    Ok(field::<Option<T>>(v, key)?.unwrap_or_default())
}

/// An enum as serde writes one: `"Name"` for a unit variant, `{"Name": content}` for
/// the others. Returns the name and the content (`null` for a unit variant).
pub fn variant(v: &Value) -> Result<(&str, &Value)> {
    match v {
        Value::String(name) => Ok((name, &Value::Null)),
        Value::Object(map) if map.len() == 1 => match map.iter().next() {
            Some((name, content)) => Ok((name, content)),
            None => Err("expected a variant, found an empty object".into()),
        },
        _ => Err(format!("expected a variant, found {}", kind(v))),
    }
}

/// The error for a variant name this version does not know.
pub fn unknown<T>(what: &str, name: &str) -> Result<T> {
    Err(format!("unknown {what} {name:?}"))
}

/// Adds where the error happened to it.
pub fn within<T>(r: Result<T>, at: &str) -> Result<T> {
    r.map_err(|e| format!("{at}: {e}"))
}

/// A short description of what was found, for errors (never the whole value).
fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.len() <= 32 => format!("{s:?}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn expected<T>(what: &str, v: &Value) -> Result<T> {
    Err(format!("expected {what}, found {}", kind(v)))
}

macro_rules! integers {
    ($($t:ty),*) => {$(
        impl Decode for $t {
            fn decode(v: &Value) -> Result<Self> {
                let n = v.as_i64().map(i128::from).or_else(|| v.as_u64().map(i128::from));
                match n.and_then(|n| <$t>::try_from(n).ok()) {
                    Some(n) => Ok(n),
                    None => expected(concat!("an integer (", stringify!($t), ")"), v),
                }
            }
        }
    )*};
}
integers!(u8, u32, u64, usize, i32, i64);

impl Decode for bool {
    fn decode(v: &Value) -> Result<Self> {
        v.as_bool().map_or_else(|| expected("true or false", v), Ok)
    }
}

impl Decode for String {
    fn decode(v: &Value) -> Result<Self> {
        match v {
            Value::String(s) => Ok(s.clone()),
            _ => expected("a string", v),
        }
    }
}

/// serde writes a path as its text (and refuses one that is not UTF-8).
impl Decode for PathBuf {
    fn decode(v: &Value) -> Result<Self> {
        String::decode(v).map(PathBuf::from)
    }
}

/// serde writes an `OsString` on Unix as `{"Unix": [bytes]}`.
impl Decode for std::ffi::OsString {
    fn decode(v: &Value) -> Result<Self> {
        use std::os::unix::ffi::OsStringExt;
        match variant(v)? {
            ("Unix", bytes) => Vec::<u8>::decode(bytes).map(std::ffi::OsString::from_vec),
            (name, _) => unknown("platform string", name),
        }
    }
}

/// serde writes a `Duration` as `{"secs": u64, "nanos": u32}`.
impl Decode for Duration {
    fn decode(v: &Value) -> Result<Self> {
        let nanos: u32 = field(v, "nanos")?;
        if nanos >= 1_000_000_000 {
            return expected("fewer than 10^9 nanoseconds", &Value::from(nanos));
        }
        Ok(Duration::new(field(v, "secs")?, nanos))
    }
}

/// Kept as it was written: for what the reader hands on without looking inside.
impl Decode for Value {
    fn decode(v: &Value) -> Result<Self> {
        Ok(v.clone())
    }
}

impl<T: Decode> Decode for Option<T> {
    fn decode(v: &Value) -> Result<Self> {
        match v {
            Value::Null => Ok(None),
            v => T::decode(v).map(Some),
        }
    }
}

impl<T: Decode> Decode for Vec<T> {
    fn decode(v: &Value) -> Result<Self> {
        let Value::Array(items) = v else {
            return expected("an array", v);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| T::decode(item).map_err(|e| format!("{i}: {e}")))
            .collect()
    }
}

impl<T: Decode> Decode for VecDeque<T> {
    fn decode(v: &Value) -> Result<Self> {
        Vec::decode(v).map(VecDeque::from)
    }
}

/// The items of a tuple, which serde writes as an array of exactly that many.
fn tuple<const N: usize>(v: &Value) -> Result<&[Value; N]> {
    match v {
        Value::Array(items) => match <&[Value; N]>::try_from(items.as_slice()) {
            Ok(items) => Ok(items),
            Err(_) => Err(format!("expected {N} items, found {}", items.len())),
        },
        _ => expected("an array", v),
    }
}

impl<A: Decode, B: Decode> Decode for (A, B) {
    fn decode(v: &Value) -> Result<Self> {
        let [a, b] = tuple(v)?;
        Ok((A::decode(a)?, B::decode(b)?))
    }
}

impl<A: Decode, B: Decode, C: Decode, D: Decode> Decode for (A, B, C, D) {
    fn decode(v: &Value) -> Result<Self> {
        let [a, b, c, d] = tuple(v)?;
        Ok((A::decode(a)?, B::decode(b)?, C::decode(c)?, D::decode(d)?))
    }
}

/// Reads `T` back from what `value`'s `Serialize` writes and writes it again: for the
/// round-trip tests of each carried type.
#[cfg(test)]
pub fn round_trip<T: Decode + serde::Serialize>(value: &T) -> (Value, Value) {
    let written = serde_json::to_value(value).expect("a carried type is written");
    let read = T::decode(&written).unwrap_or_else(|e| panic!("{e}\nin {written}"));
    let again = serde_json::to_value(&read).expect("a carried type is written");
    (written, again)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_serde_writes_is_read_back() {
        let (a, b) = round_trip(&(
            vec![Some(3u32), None],
            VecDeque::from([(-1i32, "x".to_string())]),
        ));
        assert_eq!(a, b);
        let (a, b) = round_trip(&Duration::new(5, 7));
        assert_eq!(a, b);
        let (a, b) = round_trip(&std::ffi::OsString::from("argv"));
        assert_eq!(a, b);
        let (a, b) = round_trip(&(PathBuf::from("/run/x"), 1u8, u64::MAX, i64::MIN));
        assert_eq!(a, b);
    }

    #[test]
    fn an_absent_field_reads_as_null_and_a_wrong_one_says_where() {
        let v = json!({"a": 1, "b": "two"});
        assert_eq!(field::<Option<u32>>(&v, "missing"), Ok(None));
        assert_eq!(field_or_default::<i32>(&v, "missing"), Ok(0));
        assert_eq!(field::<u32>(&v, "a"), Ok(1));
        assert_eq!(
            field::<u32>(&v, "b"),
            Err(r#"b: expected an integer (u32), found "two""#.into())
        );
        assert_eq!(
            field::<u8>(&json!({"n": 300}), "n"),
            Err("n: expected an integer (u8), found 300".into())
        );
        assert_eq!(
            Vec::<bool>::decode(&json!([true, 1])),
            Err("1: expected true or false, found 1".into())
        );
        assert!(field::<u32>(&json!([1]), "a").is_err());
    }

    #[test]
    fn variants_are_read_by_name() {
        assert_eq!(variant(&json!("Stay")), Ok(("Stay", &Value::Null)));
        assert_eq!(variant(&json!({"Code": 3})), Ok(("Code", &Value::from(3))));
        assert!(variant(&json!({"A": 1, "B": 2})).is_err());
        assert!(variant(&json!(7)).is_err());
        assert_eq!(
            <(u8, u8)>::decode(&json!([1, 2, 3])),
            Err("expected 2 items, found 3".into())
        );
    }
}

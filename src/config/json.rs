//! Reading JSON into the config types with errors a person can act on: every serde
//! error carries `line:column` and the key path it lies under (`in services.web.nice`),
//! says what was expected and what was found in plain words, names the section a
//! misplaced key belongs in, and suggests the nearest known key for a typo.

use super::*;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::cell::RefCell;

thread_local! {
    /// The key path being deserialized, so that serde's errors can say where they are.
    static CONTEXT: RefCell<String> = const { RefCell::new(String::new()) };
}

fn set_context(s: &str) {
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        c.clear();
        c.push_str(s);
    });
}

pub(super) fn orchestrator_section<'de, D: Deserializer<'de>>(d: D) -> Result<Settings, D::Error> {
    set_context("orchestrator");
    let s = Settings::deserialize(d)?;
    set_context("");
    Ok(s)
}

pub(super) fn services_section<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, ServiceConfig>, D::Error> {
    struct ServicesVisitor;
    impl<'de> Visitor<'de> for ServicesVisitor {
        type Value = BTreeMap<String, ServiceConfig>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object of services by name")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(name) = map.next_key::<String>()? {
                set_context(&format!("services.{name}"));
                let svc: ServiceConfig = map.next_value()?;
                if out.insert(name.clone(), svc).is_some() {
                    return Err(de::Error::custom(format!("duplicate service `{name}`")));
                }
            }
            set_context("");
            Ok(out)
        }
    }
    d.deserialize_map(ServicesVisitor)
}

/// Parses the text; the error is `LINE:COL: [in KEY: ]message`, ready to follow the file
/// name.
pub(super) fn parse(text: &str) -> Result<ConfigFile, String> {
    parse_as(text, "")
}

/// Parses the text as a `T` whose keys are those of `context` (`""`: a whole file;
/// `services.NAME`: a sidecar); the error is `LINE:COL: message`, with ` in KEY` when
/// the error lies deeper than `context`.
pub(super) fn parse_as<T: serde::de::DeserializeOwned>(
    text: &str,
    context: &str,
) -> Result<T, String> {
    set_context(context);
    serde_json::from_str::<T>(text).map_err(|e| located(&e, context))
}

/// A parse error as `LINE:COL: message`, where the message says what was expected and
/// what was written, and (below `top`) in which key. Not generic: one copy for every
/// type parsed.
fn located(e: &serde_json::Error, top: &str) -> String {
    let context = CONTEXT.with(|c| c.borrow().clone());
    set_context("");
    let raw = e.to_string();
    // serde_json appends " at line L column C"; we put the position first instead.
    let msg = match raw.rfind(" at line ") {
        Some(i) => raw[..i].to_string(),
        None => raw,
    };
    let msg = with_section(with_suggestion(&expected_got(&msg)), &context);
    let place = if context.is_empty() || context == top || e.is_syntax() || e.is_eof() {
        String::new()
    } else {
        format!(" in {context}")
    };
    format!("{}:{}: {msg}{place}", e.line(), e.column())
}

/// Rewrites serde's "invalid type: boolean `true`, expected X" (and "invalid value")
/// into "expected X, got a boolean": what to write first, then what was written.
fn expected_got(msg: &str) -> String {
    let Some(rest) = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "))
    else {
        return msg.to_string();
    };
    let Some((got, expected)) = rest.split_once(", expected ") else {
        return msg.to_string();
    };
    let quoted = |kind: &str| got.strip_prefix(kind).map(|v| v.trim_matches('`'));
    let got = if got.starts_with("boolean") {
        "a boolean".to_string()
    } else if let Some(v) = got.strip_prefix("string ") {
        format!("the string {v}")
    } else if let Some(v) = quoted("integer ").or_else(|| quoted("floating point ")) {
        format!("the number {v}")
    } else {
        match got {
            "map" => "an object".to_string(),
            "sequence" => "an array".to_string(),
            "unit value" | "null" => "null".to_string(),
            other => other.to_string(),
        }
    };
    let expected = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" => "a whole number",
        "f32" | "f64" => "a number",
        "a string" | "a boolean" => expected,
        e if e.starts_with("struct ") || e.starts_with("a map") => "an object",
        other => other,
    };
    format!("expected {expected}, got {got}")
}

/// A key unknown where it stands but valid in another section says where it belongs
/// (`services_dir` written at the top level belongs in `orchestrator`).
fn with_section(msg: String, context: &str) -> String {
    let Some(key) = msg
        .strip_prefix("unknown key `")
        .and_then(|r| r.split_once('`'))
        .map(|(k, _)| k)
    else {
        return msg;
    };
    // A key is a field of a section when a null for it is not "unknown there". Parsed
    // from text, as the file is: no other deserializer is compiled in for this.
    let probe = format!("{{{}:null}}", serde_json::Value::String(key.to_string()));
    let known_in = |err: Option<serde_json::Error>| {
        err.is_none_or(|e| !e.to_string().starts_with("unknown field"))
    };
    let settings = known_in(serde_json::from_str::<Settings>(&probe).err());
    let service = known_in(serde_json::from_str::<ServiceConfig>(&probe).err());
    let home = match (context, settings, service) {
        ("", true, _) => "the `orchestrator` section",
        ("", false, true) => {
            "a service's entry under `services` (`\"services\": {\"NAME\": {...}}`)"
        }
        (c, true, false) if c.starts_with("services.") => "the `orchestrator` section",
        ("orchestrator", false, true) => "a service's entry under `services`",
        _ => return msg,
    };
    format!("unknown key `{key}`: it belongs in {home}")
}

/// Rewrites serde's "unknown field `x`, expected one of `a`, `b`" (and unknown variant)
/// into "unknown key `x` (did you mean `a`?)", so that a typo points at its fix. The
/// name `x` is the file's and may hold backticks itself; the valid names are ours and
/// never do, so `x` ends where serde's list of them begins.
fn with_suggestion(msg: &str) -> String {
    let (noun, rest) = if let Some(rest) = msg.strip_prefix("unknown field `") {
        ("key", rest)
    } else if let Some(rest) = msg.strip_prefix("unknown variant `") {
        ("value", rest)
    } else {
        return msg.to_string();
    };
    let (bad, list) = match rest.rfind("`, expected ") {
        Some(i) => (&rest[..i], &rest[i..]),
        None => match rest.rfind("`, there are no ") {
            Some(i) => (&rest[..i], ""),
            None => return msg.to_string(),
        },
    };
    let valid: Vec<&str> = list.split('`').skip(2).step_by(2).collect();
    match nearest(bad, valid.iter().copied()) {
        Some(best) => format!("unknown {noun} `{bad}` (did you mean `{best}`?)"),
        None if valid.is_empty() => format!("unknown {noun} `{bad}`"),
        None => format!(
            "unknown {noun} `{bad}` (expected one of {})",
            valid
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a typo.
pub fn nearest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .map(|c| (levenshtein(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance where swapping two adjacent characters counts as one edit (optimal
/// string alignment), so that `stauts` is nearer `status` than `start`.
pub(super) fn levenshtein(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut before: Vec<usize> = Vec::new();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut row = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            row[j] = (prev[j] + 1).min(row[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut prev, row);
    }
    prev[b.len()]
}

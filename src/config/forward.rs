//! `log_forward` (docs/logs.md): the syslog collectors every record is also sent to. A
//! target or a list of targets; each is checked here (address, format, facility, sizes)
//! so that the output layer only ever sees a target it can use.
//!
//! This module parses and checks; it never opens a socket.

use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::Value;
use std::fmt;
use std::path::PathBuf;

/// The smallest `max_message_bytes`: room for a header and some text (the error
/// message of `target` names it and the largest).
pub const MIN_MESSAGE_BYTES: usize = 128;
/// The largest `max_message_bytes`: what one UDP datagram can carry.
pub const MAX_MESSAGE_BYTES: usize = 65_000;

/// Where a target's messages go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// `udp://HOST:PORT`: one datagram a message.
    Udp(String),
    /// `tcp://HOST:PORT`: octet-counted frames (RFC 6587).
    Tcp(String),
    /// `unix:PATH`: a local syslog socket, datagram, else stream.
    Unix(PathBuf),
}

impl Address {
    /// `udp://...`, `tcp://...` or `unix:PATH`; the error says what is wrong.
    pub fn parse(s: &str) -> Result<Address, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("`{s}`: a unix address needs an absolute path"));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let (make, rest): (fn(String) -> Address, &str) =
            match (s.strip_prefix("udp://"), s.strip_prefix("tcp://")) {
                (Some(r), _) => (Address::Udp, r),
                (_, Some(r)) => (Address::Tcp, r),
                _ => {
                    return Err(format!(
                        "`{s}` is not udp://HOST:PORT, tcp://HOST:PORT or unix:/PATH"
                    ))
                }
            };
        let port = rest
            .rsplit_once(':')
            .map(|(host, port)| (host, port.parse::<u16>()));
        match port {
            Some((host, Ok(p))) if !host.is_empty() && p != 0 => Ok(make(rest.to_string())),
            _ => Err(format!("`{s}`: expected HOST:PORT with a port 1-65535")),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Udp(a) => write!(f, "udp://{a}"),
            Address::Tcp(a) => write!(f, "tcp://{a}"),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyslogFormat {
    Rfc5424,
    Rfc3164,
}

/// One checked target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ForwardTarget {
    pub address: Address,
    pub format: SyslogFormat,
    /// The facility's number (daemon = 3).
    pub facility: u8,
    pub buffer_bytes: usize,
    pub max_message_bytes: usize,
}

impl ForwardTarget {
    /// The fallback of `--daemon` without `log_dir`: the local syslog, as syslog(3)
    /// writes to it.
    pub fn dev_log(path: PathBuf) -> ForwardTarget {
        ForwardTarget {
            address: Address::Unix(path),
            format: SyslogFormat::Rfc3164,
            facility: 3,
            buffer_bytes: 1 << 20,
            max_message_bytes: 2048,
        }
    }
}

/// The keys of a target as written (docs/configuration.md, `log_forward.*`). Read from
/// the JSON value by hand: a derived deserializer for them cost more code than the rest
/// of this file.
pub const KEYS: [&str; 5] = [
    "address",
    "format",
    "facility",
    "buffer_bytes",
    "max_message_bytes",
];

const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

fn bad<E: de::Error>(key: &str, what: &str) -> E {
    E::custom(format!("{key}: {what}"))
}

/// One target, checked.
fn target<E: de::Error>(v: &Value) -> Result<ForwardTarget, E> {
    let Value::Object(m) = v else {
        return Err(E::custom("expected a target object {\"address\": ...}"));
    };
    if let Some(k) = m.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(E::unknown_field(k, &KEYS));
    }
    let text = |k: &str| match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(bad(k, "expected a string")),
    };
    let bytes = |k: &str, default: usize| match m.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(n) => n
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| bad(k, "expected a whole number of bytes")),
    };
    let address = text("address")?.ok_or_else(|| E::missing_field("address"))?;
    let address = Address::parse(address).map_err(E::custom)?;
    let format = match text("format")? {
        None => None,
        Some("rfc5424") => Some(SyslogFormat::Rfc5424),
        Some("rfc3164") => Some(SyslogFormat::Rfc3164),
        Some(other) => return Err(E::unknown_variant(other, &["rfc5424", "rfc3164"])),
    };
    let facility_name = text("facility")?.unwrap_or("daemon");
    let facility = FACILITIES
        .iter()
        .position(|f| *f == facility_name)
        .ok_or_else(|| E::unknown_variant(facility_name, &FACILITIES))? as u8;
    let max = bytes("max_message_bytes", 2048)?;
    if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&max) {
        return Err(bad("max_message_bytes", "must be between 128 and 65000"));
    }
    let buffer_bytes = bytes("buffer_bytes", 1 << 20)?;
    if buffer_bytes < max {
        return Err(bad(
            "buffer_bytes",
            "must hold one message of max_message_bytes",
        ));
    }
    // A local socket speaks what syslog(3) writes; a collector over the network gets
    // the structured form.
    let format = format.unwrap_or(match address {
        Address::Unix(_) => SyslogFormat::Rfc3164,
        _ => SyslogFormat::Rfc5424,
    });
    Ok(ForwardTarget {
        address,
        format,
        facility,
        buffer_bytes,
        max_message_bytes: max,
    })
}

/// `log_forward`: one target or a list of them, each checked as it is read; null (or
/// none) is no target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogForward(pub Vec<ForwardTarget>);

impl<'de> Deserialize<'de> for LogForward {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let items = match &v {
            Value::Null => Vec::new(),
            Value::Array(list) => list.iter().collect(),
            one => vec![one],
        };
        let mut out: Vec<ForwardTarget> = Vec::with_capacity(items.len());
        for item in items {
            let t = target(item)?;
            if out.iter().any(|o| o.address == t.address) {
                return Err(de::Error::custom(format!("{} is named twice", t.address)));
            }
            out.push(t);
        }
        Ok(LogForward(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<LogForward, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn one_target_or_a_list_with_defaults() {
        let one = parse(r#"{"address": "tcp://10.0.0.5:514"}"#).unwrap();
        assert_eq!(
            one.0,
            vec![ForwardTarget {
                address: Address::Tcp("10.0.0.5:514".into()),
                format: SyslogFormat::Rfc5424,
                facility: 3,
                buffer_bytes: 1 << 20,
                max_message_bytes: 2048,
            }]
        );
        let list = parse(
            r#"[{"address": "udp://logs.lan:514", "format": "rfc3164", "facility": "local3"},
                {"address": "unix:/dev/log"}]"#,
        )
        .unwrap();
        assert_eq!(list.0[0].facility, 19);
        assert_eq!(list.0[0].format, SyslogFormat::Rfc3164);
        assert_eq!(list.0[1].address, Address::Unix("/dev/log".into()));
        assert_eq!(list.0[1].format, SyslogFormat::Rfc3164);
    }

    #[test]
    fn bad_targets_say_why() {
        for (json, says) in [
            (r#"{"address": "tcp://host"}"#, "HOST:PORT"),
            (r#"{"address": "tcp://host:0"}"#, "HOST:PORT"),
            (r#"{"address": "http://host:80"}"#, "is not udp://"),
            (r#"{"address": "unix:dev/log"}"#, "absolute path"),
            (
                r#"{"address": "udp://h:1", "facility": "nope"}"#,
                "unknown variant `nope`",
            ),
            (
                r#"{"address": "udp://h:1", "max_message_bytes": 10}"#,
                "between",
            ),
            (
                r#"{"address": "udp://h:1", "buffer_bytes": 100}"#,
                "must hold",
            ),
            (
                r#"{"address": "udp://h:1", "format": "gelf"}"#,
                "unknown variant",
            ),
            (
                r#"{"address": "udp://h:1", "port": 1}"#,
                "unknown field `port`",
            ),
            (r#"{"format": "rfc5424"}"#, "missing field `address`"),
            (
                r#"{"address": "udp://h:1", "buffer_bytes": "1M"}"#,
                "whole number",
            ),
            (r#"7"#, "expected a target"),
            (
                r#"[{"address": "udp://h:1"}, {"address": "udp://h:1"}]"#,
                "twice",
            ),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(says), "{json}: {err}");
        }
    }
}

//! `log_forward` (docs/logs.md): the syslog collectors every record is also sent to. A
//! target or a list of targets; each is checked here (address, format, facility, sizes)
//! so that the output layer only ever sees a target it can use.
//!
//! This module parses and checks; it never opens a socket.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;

/// The smallest `max_message_bytes`: room for a header and some text.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// The target as written (docs/configuration.md, `log_forward.*`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub address: String,
    #[serde(default)]
    pub format: Option<SyslogFormat>,
    #[serde(default)]
    pub facility: Option<String>,
    #[serde(default)]
    pub buffer_bytes: Option<usize>,
    #[serde(default)]
    pub max_message_bytes: Option<usize>,
}

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

impl TargetConfig {
    fn check(self) -> Result<ForwardTarget, String> {
        let address = Address::parse(&self.address)?;
        let facility_name = self.facility.as_deref().unwrap_or("daemon");
        let facility = FACILITIES
            .iter()
            .position(|f| *f == facility_name)
            .ok_or_else(|| {
                format!(
                    "unknown facility `{facility_name}` (one of {})",
                    FACILITIES.join(", ")
                )
            })? as u8;
        let max = self.max_message_bytes.unwrap_or(2048);
        if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&max) {
            return Err(format!(
                "max_message_bytes must be between {MIN_MESSAGE_BYTES} and {MAX_MESSAGE_BYTES}, not {max}"
            ));
        }
        let buffer_bytes = self.buffer_bytes.unwrap_or(1 << 20);
        if buffer_bytes < max {
            return Err(format!(
                "buffer_bytes ({buffer_bytes}) must hold one message of max_message_bytes ({max})"
            ));
        }
        // A local socket speaks what syslog(3) writes; a collector over the network
        // gets the structured form.
        let format = self.format.unwrap_or(match address {
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
}

/// `log_forward`: one target or a list of them, each checked as it is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogForward(pub Vec<ForwardTarget>);

impl<'de> Deserialize<'de> for LogForward {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LogForward;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a target {\"address\": ...} or a list of them")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LogForward, A::Error> {
                let raw = TargetConfig::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(LogForward(vec![raw.check().map_err(de::Error::custom)?]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LogForward, A::Error> {
                let mut out = Vec::new();
                while let Some(raw) = seq.next_element::<TargetConfig>()? {
                    let t = raw.check().map_err(de::Error::custom)?;
                    if out.iter().any(|o: &ForwardTarget| o.address == t.address) {
                        return Err(de::Error::custom(format!("{} is named twice", t.address)));
                    }
                    out.push(t);
                }
                Ok(LogForward(out))
            }
        }
        d.deserialize_any(V)
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
                "unknown facility",
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
            (r#"{"address": "udp://h:1", "port": 1}"#, "unknown field"),
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

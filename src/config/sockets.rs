//! What a `sockets` entry says (docs/sockets-and-upgrades.md): its address (TCP, UDP or a
//! Unix stream socket), its mode and its name, parsed and checked as the configuration
//! is read. Binding them is `process::sockets`.

use super::SocketConfig;
use std::net::SocketAddr;
use std::path::PathBuf;

/// What a `listen` string names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    Unix(PathBuf),
}

/// Parses `"host:port"`, `"udp:host:port"` or `"unix:/absolute/path"`.
pub fn parse(listen: &str) -> Result<Address, String> {
    if let Some(path) = listen.strip_prefix("unix:") {
        if !path.starts_with('/') || path.len() > 107 {
            return Err(format!(
                "`{listen}`: a Unix socket needs an absolute path of at most 107 bytes"
            ));
        }
        return Ok(Address::Unix(PathBuf::from(path)));
    }
    let (udp, addr) = match listen.strip_prefix("udp:") {
        Some(rest) => (true, rest),
        None => (false, listen.strip_prefix("tcp:").unwrap_or(listen)),
    };
    match addr.parse::<SocketAddr>() {
        Ok(a) if udp => Ok(Address::Udp(a)),
        Ok(a) => Ok(Address::Tcp(a)),
        Err(_) => Err(format!(
            "`{listen}` is neither host:port, udp:host:port nor unix:/absolute/path"
        )),
    }
}

/// Checks one entry as the config validation needs it: address, mode, name.
pub fn check(s: &SocketConfig) -> Result<(), String> {
    let addr = parse(&s.listen)?;
    if let Some(mode) = &s.mode {
        if !matches!(addr, Address::Unix(_)) {
            return Err(format!(
                "`{}`: mode applies to unix: sockets only",
                s.listen
            ));
        }
        parse_mode(mode)?;
    }
    if let Some(name) = &s.name {
        // sd_listen_fds_with_names splits on ':'; systemd allows at most 255 printable
        // ASCII characters.
        let ok = !name.is_empty()
            && name.len() <= 255
            && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if !ok {
            return Err(format!(
                "name `{name}`: use 1-255 printable ASCII characters, no `:` or space"
            ));
        }
    }
    Ok(())
}

/// `"0660"` as a permission mode.
pub fn parse_mode(mode: &str) -> Result<u32, String> {
    u32::from_str_radix(mode, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("mode `{mode}` is not an octal mode such as \"0660\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(listen: &str) -> SocketConfig {
        SocketConfig {
            listen: listen.into(),
            name: None,
            mode: None,
        }
    }

    #[test]
    fn addresses_parse() {
        assert!(matches!(parse("127.0.0.1:80"), Ok(Address::Tcp(_))));
        assert!(matches!(parse("[::1]:80"), Ok(Address::Tcp(_))));
        assert!(matches!(parse("udp:127.0.0.1:53"), Ok(Address::Udp(_))));
        assert_eq!(
            parse("unix:/run/a.sock"),
            Ok(Address::Unix("/run/a.sock".into()))
        );
        assert!(parse("unix:rel").is_err());
        assert!(parse("localhost:80").is_err());
        assert!(parse("udp:nope").is_err());
    }

    #[test]
    fn names_and_modes_are_checked() {
        let mut s = cfg("unix:/run/a.sock");
        s.mode = Some("0660".into());
        s.name = Some("web".into());
        assert!(check(&s).is_ok());
        s.mode = Some("999".into());
        assert!(check(&s).is_err());
        let mut t = cfg("127.0.0.1:80");
        t.mode = Some("0660".into());
        assert!(check(&t).unwrap_err().contains("unix: sockets only"));
        t.mode = None;
        t.name = Some("a:b".into());
        assert!(check(&t).is_err());
    }
}

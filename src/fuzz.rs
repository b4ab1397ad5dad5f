//! Entry points for the fuzz targets under `fuzz/`: each feeds untrusted bytes to one
//! parser the way the daemon does, and must return (never panic) whatever the input.

/// The configuration parser and validator, on a file's contents.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::config::parse_and_validate(&text);
}

/// The control socket's request parser, on one request line.
pub fn control_request(data: &[u8]) {
    let _ = crate::control::socket::parse_request(data);
}

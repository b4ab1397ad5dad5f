//! The `grpc` health check (docs/health.md): one `grpc.health.v1.Health/Check` call over
//! plaintext HTTP/2 with prior knowledge. It speaks just enough HTTP/2 for one unary
//! call on stream 1: the preface, the SETTINGS exchange (with the ACK servers wait for),
//! PING answers, one HEADERS + DATA request, and the response's HEADERS, DATA and
//! trailers, whose HPACK is decoded in full by `hpack`. Everything is bounded by the
//! check's timeout and by small size limits; nothing from the peer may panic it, and
//! it never keeps a connection between checks.

use super::hpack;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const PATH: &str = "/grpc.health.v1.Health/Check";
/// The largest frame we accept (the HTTP/2 default; we never advertise another).
const MAX_FRAME: usize = 16_384;
/// Bound on the header blocks and body of the one response.
pub(crate) const MAX_RESPONSE: usize = 64 * 1024;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// Runs one check: Ok when the server answers SERVING for `service`.
pub fn check(address: &str, service: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    call(address, service, deadline).map_err(|e| format!("grpc {address}: {e}"))
}

fn call(address: &str, service: &str, deadline: Instant) -> Result<(), String> {
    let sa = address
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };
    let mut stream = TcpStream::connect_timeout(&sa, left().ok_or("timed out")?)
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        stream: &mut stream,
        deadline,
    };
    conn.write(&request(address, service))?;
    let response = conn.read_response()?;
    verdict(&response)
}

/// The answer-reading half of a check on `bytes` as a server's answer, for the fuzz
/// target: what it decoded (the header fields, counted as the bound counts them, and
/// the body's length), or why it failed.
pub(crate) fn fuzz_answer(bytes: &[u8]) -> Result<(usize, usize), String> {
    struct Replay<'a>(&'a [u8]);
    impl Read for Replay<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for Replay<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Wire for Replay<'_> {
        fn set_timeouts(&self, _: Duration) -> io::Result<()> {
            Ok(())
        }
    }
    let mut wire = Replay(bytes);
    let mut conn = Conn {
        stream: &mut wire,
        deadline: Instant::now() + Duration::from_secs(3600),
    };
    let response = conn.read_response()?;
    let listed = response.headers.iter().map(|(n, v)| n.len() + v.len() + 32);
    let _ = verdict(&response);
    Ok((listed.sum(), response.body.len()))
}

/// What came back on stream 1.
#[derive(Default)]
struct Response {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// The connection as `Conn` uses it: the check's TCP stream, or bytes a fuzzer made.
trait Wire: Read + Write {
    fn set_timeouts(&self, t: Duration) -> io::Result<()>;
}

impl Wire for TcpStream {
    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

struct Conn<'a> {
    stream: &'a mut dyn Wire,
    deadline: Instant,
}

impl Conn<'_> {
    fn left(&self) -> Result<Duration, String> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| "timed out waiting for the answer".to_string())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        let t = self.left()?;
        self.stream
            .set_timeouts(t)
            .and_then(|_| self.stream.write_all(bytes))
            .map_err(|e| io_error("send", e))
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), String> {
        let mut at = 0;
        while at < buf.len() {
            let t = self.left()?;
            self.stream
                .set_timeouts(t)
                .map_err(|e| io_error("receive", e))?;
            match self.stream.read(&mut buf[at..]) {
                Ok(0) => return Err("connection closed before the answer".into()),
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error("receive", e)),
            }
        }
        Ok(())
    }

    /// Reads frames until stream 1 ends, answering SETTINGS and PING on the way.
    fn read_response(&mut self) -> Result<Response, String> {
        let mut hpack = hpack::Decoder::default();
        let mut response = Response::default();
        // A header block being assembled from HEADERS + CONTINUATION frames, and
        // whether the stream ends with it.
        let mut block: Option<(Vec<u8>, bool)> = None;
        let mut total = 0usize;
        loop {
            let mut head = [0u8; 9];
            self.read_exact(&mut head)?;
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            if len > MAX_FRAME {
                return Err(format!("frame of {len} bytes is above {MAX_FRAME}"));
            }
            total += len;
            if total > MAX_RESPONSE {
                return Err(format!("answer larger than {MAX_RESPONSE} bytes"));
            }
            let mut payload = vec![0u8; len];
            self.read_exact(&mut payload)?;
            if block.is_some() && kind != CONTINUATION {
                return Err("header block interrupted".into());
            }
            match kind {
                SETTINGS if flags & ACK == 0 => self.write(&frame(SETTINGS, ACK, 0, &[]))?,
                PING if flags & ACK == 0 => self.write(&frame(PING, ACK, 0, &payload))?,
                GOAWAY => return Err(goaway(&payload)),
                RST_STREAM if stream == 1 => {
                    let code = payload
                        .get(..4)
                        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    return Err(format!("stream reset by the server (HTTP/2 error {code})"));
                }
                HEADERS if stream == 1 => {
                    let fragment = unpad(&payload, flags, true)?;
                    block = Some((fragment.to_vec(), flags & END_STREAM != 0));
                }
                CONTINUATION if stream == 1 => match &mut block {
                    Some((b, _)) => b.extend_from_slice(&payload),
                    None => return Err("CONTINUATION without HEADERS".into()),
                },
                DATA if stream == 1 => {
                    response
                        .body
                        .extend_from_slice(unpad(&payload, flags, false)?);
                    if flags & END_STREAM != 0 {
                        return Ok(response);
                    }
                }
                _ => {}
            }
            if matches!(kind, HEADERS | CONTINUATION) && stream == 1 && flags & END_HEADERS != 0 {
                if let Some((b, end)) = block.take() {
                    response.headers.extend(hpack.decode(&b)?);
                    if end {
                        return Ok(response);
                    }
                }
            }
        }
    }
}

fn io_error(what: &str, e: io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            "timed out waiting for the answer".into()
        }
        _ => format!("{what}: {e}"),
    }
}

fn goaway(payload: &[u8]) -> String {
    let code = payload
        .get(4..8)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let debug = payload
        .get(8..)
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    format!("connection refused by the server (GOAWAY, HTTP/2 error {code}) {debug}")
        .trim_end()
        .to_string()
}

/// The payload of a HEADERS or DATA frame without its padding (and priority fields).
fn unpad(payload: &[u8], flags: u8, headers: bool) -> Result<&[u8], String> {
    let mut body = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        pad = usize::from(*body.first().ok_or("bad padding")?);
        body = &body[1..];
    }
    if headers && flags & PRIORITY != 0 {
        body = body.get(5..).ok_or("bad priority fields")?;
    }
    body.get(..body.len().checked_sub(pad).ok_or("bad padding")?)
        .ok_or_else(|| "bad padding".into())
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK string literal without Huffman coding (lengths here stay small).
fn literal(out: &mut Vec<u8>, s: &str) {
    int(out, 7, 0, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn int(out: &mut Vec<u8>, prefix: u32, bits: u8, mut v: usize) {
    let max = (1usize << prefix) - 1;
    if v < max {
        out.push(bits | v as u8);
        return;
    }
    out.push(bits | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// The connection preface, our SETTINGS (no server push), and the whole request.
fn request(authority: &str, service: &str) -> Vec<u8> {
    let mut headers = vec![0x83, 0x86]; // :method POST, :scheme http (static indices)
                                        // Literals without indexing, with the name from
                                        // the static table where it is.
    for (index, value) in [(4, PATH), (1, authority), (31, "application/grpc")] {
        int(&mut headers, 4, 0, index);
        literal(&mut headers, value);
    }
    for (name, value) in [
        ("te", "trailers"),
        ("user-agent", "orchestrator-health-check"),
    ] {
        headers.push(0);
        literal(&mut headers, name);
        literal(&mut headers, value);
    }
    // HealthCheckRequest { string service = 1; }, in a gRPC length-prefixed message.
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a);
        let mut len = service.len();
        while len >= 128 {
            message.push((len % 128) as u8 | 0x80);
            len /= 128;
        }
        message.push(len as u8);
        message.extend_from_slice(service.as_bytes());
    }
    let mut body = vec![0];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);

    let mut out = PREFACE.to_vec();
    // ENABLE_PUSH = 0, and MAX_HEADER_LIST_SIZE: the bound the decoder holds to.
    let mut settings = vec![0, 2, 0, 0, 0, 0, 0, 6];
    settings.extend_from_slice(&(hpack::MAX_HEADER_LIST as u32).to_be_bytes());
    out.extend(frame(SETTINGS, 0, 0, &settings));
    out.extend(frame(HEADERS, END_HEADERS, 1, &headers));
    out.extend(frame(DATA, END_STREAM, 1, &body));
    out
}

/// Reads the answer: HTTP status, grpc-status (trailers, or headers for a
/// trailers-only answer), then the HealthCheckResponse's status.
fn verdict(r: &Response) -> Result<(), String> {
    let get = |name: &str| {
        r.headers
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    match get(":status") {
        Some("200") => {}
        Some(s) => return Err(format!("HTTP status {s}")),
        None => return Err("no HTTP status in the answer".into()),
    }
    let code = get("grpc-status").ok_or("no grpc-status in the answer")?;
    if code != "0" {
        let name = code
            .parse::<usize>()
            .ok()
            .and_then(|c| CODES.get(c))
            .unwrap_or(&"");
        let message = percent_decode(get("grpc-message").unwrap_or(""));
        let mut reason = format!("grpc-status {code}");
        if !name.is_empty() {
            reason += &format!(" ({name})");
        }
        if !message.is_empty() {
            reason += &format!(": {message}");
        }
        return Err(reason);
    }
    let message = match r.body.get(..5) {
        Some([0, a, b, c, d]) => {
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            r.body.get(5..5 + len).ok_or("truncated gRPC message")?
        }
        Some(_) => return Err("compressed gRPC message (none was asked for)".into()),
        None => return Err("no gRPC message in the answer".into()),
    };
    match serving_status(message)? {
        1 => Ok(()),
        s => Err(format!(
            "status {}",
            ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"]
                .get(s as usize)
                .map_or_else(|| s.to_string(), |n| n.to_string())
        )),
    }
}

const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn varint(buf: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at).ok_or("truncated protobuf")?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("bad protobuf varint".into())
}

/// Field 1 (`status`, an enum) of a HealthCheckResponse; absent means 0 (UNKNOWN).
fn serving_status(msg: &[u8]) -> Result<u64, String> {
    let (mut at, mut status) = (0, 0);
    while at < msg.len() {
        let key = varint(msg, &mut at)?;
        match key & 7 {
            0 => {
                let v = varint(msg, &mut at)?;
                if key >> 3 == 1 {
                    status = v;
                }
            }
            1 => at += 8,
            2 => at += varint(msg, &mut at)? as usize,
            5 => at += 4,
            _ => return Err("bad protobuf wire type".into()),
        }
    }
    if at > msg.len() {
        return Err("truncated protobuf".into());
    }
    Ok(status)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(headers: &[(&str, &str)], body: &[u8]) -> Response {
        Response {
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
        }
    }

    #[test]
    fn verdicts() {
        let ok = [(":status", "200"), ("grpc-status", "0")];
        assert_eq!(verdict(&answer(&ok, &[0, 0, 0, 0, 2, 8, 1])), Ok(()));
        let e = verdict(&answer(&ok, &[0, 0, 0, 0, 2, 8, 2])).unwrap_err();
        assert_eq!(e, "status NOT_SERVING");
        assert_eq!(
            verdict(&answer(&ok, &[0, 0, 0, 0, 0])).unwrap_err(),
            "status UNKNOWN"
        );
        let nf = [
            (":status", "200"),
            ("grpc-status", "5"),
            ("grpc-message", "unknown%20service"),
        ];
        assert_eq!(
            verdict(&answer(&nf, &[])).unwrap_err(),
            "grpc-status 5 (NOT_FOUND): unknown service"
        );
        assert!(verdict(&answer(&[(":status", "404")], &[]))
            .unwrap_err()
            .contains("404"));
        assert!(verdict(&answer(&ok, &[0, 0, 0, 0, 9, 8])).is_err());
    }

    #[test]
    fn the_request_carries_the_service_name() {
        let r = request("h:1", "svc");
        assert!(r.starts_with(PREFACE));
        assert!(r.ends_with(&[0, 0, 0, 0, 5, 0x0a, 3, b's', b'v', b'c']));
        let mut d = hpack::Decoder::default();
        // The HEADERS frame follows the preface and the 12-byte SETTINGS frame.
        let at = PREFACE.len() + 9 + 12;
        let len = usize::from(r[at + 2]);
        let h = d.decode(&r[at + 9..at + 9 + len]).unwrap();
        assert!(h.contains(&(":path".into(), PATH.into())));
        assert!(h.contains(&("te".into(), "trailers".into())));
    }

    #[test]
    fn a_server_that_accepts_and_never_answers_times_out() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let started = Instant::now();
        let e = check(&addr, "", Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("timed out"), "{e}");
        assert!(started.elapsed() < Duration::from_millis(1000));
        drop(l);
        let e = check(&addr, "", Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("connect"), "{e}");
    }

    /// A server whose answer is one 4 KB table entry referenced over and over, in a
    /// header block of HEADERS and CONTINUATION frames: the check fails, saying why,
    /// instead of decoding hundreds of megabytes.
    #[test]
    fn an_amplifying_header_block_fails_the_check() {
        let attack = include_bytes!("../../fuzz/corpus/http2_answer/amplification");
        let e = fuzz_answer(attack).unwrap_err();
        assert!(e.contains("header list larger than 16384 bytes"), "{e}");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            c.write_all(attack).unwrap();
            let _ = c.read(&mut [0u8; 1024]);
        });
        let e = check(&addr, "", Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("header list larger than"), "{e}");
        server.join().unwrap();
        // The same frames with a small answer pass.
        let serving = include_bytes!("../../fuzz/corpus/http2_answer/serving");
        assert!(fuzz_answer(serving).is_ok_and(|(listed, body)| listed > 0 && body == 7));
    }
}

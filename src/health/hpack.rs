//! HPACK (RFC 7541) header-block decoding for the gRPC health check: integers, string
//! literals with or without Huffman coding, the static table and a dynamic table with
//! size updates and eviction. Decoding only: the requests we send use literals that
//! need no table. It must never trust a length from the peer: every read is bounds-
//! checked and every failure is an `Err` with a short reason.

use std::collections::VecDeque;

/// The table size we allow the peer (the HTTP/2 default; we never advertise another).
pub const TABLE_SIZE: usize = 4096;

/// The most a decoder hands out over all its header blocks, counted as HTTP/2's
/// `SETTINGS_MAX_HEADER_LIST_SIZE` counts (name + value + 32 per field). A short
/// reference to a table entry decodes to the whole entry, so without this bound one
/// 64 KiB block of references to a 4 KB entry would decode to 240 MB.
pub const MAX_HEADER_LIST: usize = 16 * 1024;

const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Code lengths of the Huffman code (RFC 7541 Appendix B), symbols 0..=256 (256 is
/// EOS). The code is canonical, so the codes themselves follow from the lengths.
const HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    30,
];
const MAX_CODE_LEN: usize = 30;
const EOS: u16 = 256;

/// Canonical decoding tables: for each length, its first code, how many codes have
/// it, and where its symbols start in `symbols` (sorted by length, then symbol).
struct Canonical {
    first: [u32; MAX_CODE_LEN + 1],
    count: [u16; MAX_CODE_LEN + 1],
    offset: [u16; MAX_CODE_LEN + 1],
    symbols: [u16; 257],
}

fn canonical() -> Canonical {
    let mut t = Canonical {
        first: [0; MAX_CODE_LEN + 1],
        count: [0; MAX_CODE_LEN + 1],
        offset: [0; MAX_CODE_LEN + 1],
        symbols: [0; 257],
    };
    for &len in &HUFFMAN_LENGTHS {
        t.count[len as usize] += 1;
    }
    let (mut code, mut at) = (0u32, 0u16);
    for len in 1..=MAX_CODE_LEN {
        code = (code + u32::from(t.count[len - 1])) << 1;
        t.first[len] = code;
        t.offset[len] = at;
        at += t.count[len];
    }
    let mut next = t.offset;
    for (sym, &len) in HUFFMAN_LENGTHS.iter().enumerate() {
        t.symbols[next[len as usize] as usize] = sym as u16;
        next[len as usize] += 1;
    }
    t
}

/// Decodes a Huffman-coded string. Padding must be at most 7 bits, all ones.
pub fn huffman_decode(input: &[u8]) -> Result<Vec<u8>, String> {
    let t = canonical();
    let mut out = Vec::with_capacity(input.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0usize);
    for byte in input {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let i = code.wrapping_sub(t.first[len]);
            if i < u32::from(t.count[len]) {
                let sym = t.symbols[(t.offset[len] as u32 + i) as usize];
                if sym == EOS {
                    return Err("Huffman string contains EOS".into());
                }
                out.push(sym as u8);
                (code, len) = (0, 0);
            } else if len == MAX_CODE_LEN {
                return Err("invalid Huffman code".into());
            }
        }
    }
    if len > 7 || code != (1 << len) - 1 {
        return Err("invalid Huffman padding".into());
    }
    Ok(out)
}

/// The decoder's state across header blocks of one connection.
pub struct Decoder {
    /// Newest first: index 62 is `dynamic[0]`.
    dynamic: VecDeque<(String, String)>,
    size: usize,
    max: usize,
    /// What the blocks decoded so far add up to, counted against `MAX_HEADER_LIST`.
    listed: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            dynamic: VecDeque::new(),
            size: 0,
            max: TABLE_SIZE,
            listed: 0,
        }
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.buf.get(self.at).ok_or("truncated header block")?;
        self.at += 1;
        Ok(b)
    }

    /// An integer with an N-bit prefix (RFC 7541 5.1).
    fn int(&mut self, prefix: u32) -> Result<usize, String> {
        let mask = (1u16 << prefix) as u8 - 1;
        let mut v = (self.byte()? & mask) as usize;
        if v < mask as usize {
            return Ok(v);
        }
        for shift in (0..28).step_by(7) {
            let b = self.byte()?;
            v += ((b & 0x7f) as usize) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("header integer too large".into())
    }

    fn string(&mut self) -> Result<String, String> {
        let huffman = self.buf.get(self.at).ok_or("truncated header block")? & 0x80 != 0;
        let len = self.int(7)?;
        let end = self.at.checked_add(len).ok_or("bad string length")?;
        let raw = self
            .buf
            .get(self.at..end)
            .ok_or("truncated header string")?;
        self.at = end;
        let bytes = if huffman {
            huffman_decode(raw)?
        } else {
            raw.to_vec()
        };
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

impl Decoder {
    fn entry(&self, index: usize) -> Result<(&str, &str), String> {
        let entry = match index {
            0 => None,
            1..=61 => STATIC.get(index - 1).copied(),
            _ => self
                .dynamic
                .get(index - 62)
                .map(|(n, v)| (n.as_str(), v.as_str())),
        };
        entry.ok_or_else(|| format!("header index {index} out of range"))
    }

    /// Counts a field of `len` bytes (name + value) against the list's bound, before
    /// anything is copied for it.
    fn admit(&mut self, len: usize) -> Result<(), String> {
        self.listed = self.listed.saturating_add(len).saturating_add(32);
        if self.listed > MAX_HEADER_LIST {
            return Err(format!(
                "header list larger than {MAX_HEADER_LIST} bytes once decoded"
            ));
        }
        Ok(())
    }

    /// The field at `index`, counted against the list's bound.
    fn field(&mut self, index: usize) -> Result<(String, String), String> {
        let (n, v) = self.entry(index)?;
        let len = n.len() + v.len();
        self.admit(len)?;
        let (n, v) = self.entry(index)?;
        Ok((n.to_string(), v.to_string()))
    }

    fn evict_to(&mut self, max: usize) {
        while self.size > max {
            match self.dynamic.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => self.size = 0,
            }
        }
    }

    fn insert(&mut self, name: String, value: String) {
        let size = name.len() + value.len() + 32;
        if size > self.max {
            // An entry larger than the table empties it (RFC 7541 4.4).
            self.dynamic.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max - size);
        self.size += size;
        self.dynamic.push_front((name, value));
    }

    /// Decodes one complete header block into (name, value) pairs.
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, String> {
        let mut c = Cursor { buf: block, at: 0 };
        let mut headers = Vec::new();
        while c.at < block.len() {
            let first = block[c.at];
            if first & 0x80 != 0 {
                let index = c.int(7)?;
                headers.push(self.field(index)?);
            } else if first & 0xc0 == 0x40 {
                let (name, value) = self.literal(&mut c, 6)?;
                self.insert(name.clone(), value.clone());
                headers.push((name, value));
            } else if first & 0xe0 == 0x20 {
                let max = c.int(5)?;
                if max > TABLE_SIZE {
                    return Err(format!("table size update to {max} above {TABLE_SIZE}"));
                }
                self.max = max;
                self.evict_to(max);
            } else {
                // Without indexing (0000) or never indexed (0001): same layout.
                headers.push(self.literal(&mut c, 4)?);
            }
        }
        Ok(headers)
    }

    /// A literal field, counted against the list's bound. Its strings are no longer
    /// than the block, so they may be read before they are counted.
    fn literal(&mut self, c: &mut Cursor, prefix: u32) -> Result<(String, String), String> {
        let index = c.int(prefix)?;
        let name = if index == 0 {
            c.string()?
        } else {
            self.entry(index)?.0.to_string()
        };
        let value = c.string()?;
        self.admit(name.len() + value.len())?;
        Ok((name, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn the_huffman_code_is_complete_and_matches_the_rfc() {
        let kraft: u64 = HUFFMAN_LENGTHS.iter().map(|&l| 1u64 << (30 - l)).sum();
        assert_eq!(kraft, 1 << 30);
        let t = canonical();
        let code_of = |sym: u16| {
            let len = HUFFMAN_LENGTHS[sym as usize] as usize;
            let pos = (t.offset[len]..t.offset[len] + t.count[len])
                .position(|i| t.symbols[i as usize] == sym)
                .unwrap();
            t.first[len] + pos as u32
        };
        assert_eq!(code_of(0), 0x1ff8);
        assert_eq!(code_of(b'a' as u16), 0x3);
        assert_eq!(code_of(b' ' as u16), 0x14);
        assert_eq!(code_of(128), 0xfffe6);
        assert_eq!(code_of(255), 0x3ffffee);
        assert_eq!(code_of(EOS), 0x3fffffff);
        assert_eq!(
            huffman_decode(&hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff")).unwrap(),
            b"www.example.com"
        );
        assert!(huffman_decode(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(huffman_decode(&[0x00]).is_err(), "padding of zeros");
    }

    #[test]
    fn rfc_7541_c4_requests_with_huffman_and_the_dynamic_table() {
        let mut d = Decoder::default();
        let h = d
            .decode(&hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"))
            .unwrap();
        assert_eq!(h[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(d.size, 57);
        let h = d.decode(&hex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
        assert_eq!(h[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(h[4], ("cache-control".into(), "no-cache".into()));
        let h = d
            .decode(&hex(
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ))
            .unwrap();
        assert_eq!(h[4], ("custom-key".into(), "custom-value".into()));
        assert_eq!(d.size, 164);
    }

    #[test]
    fn rfc_7541_c6_responses_evict_from_a_small_table() {
        let mut d = Decoder {
            max: 256,
            ..Decoder::default()
        };
        d.decode(&hex(
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        ))
        .unwrap();
        d.decode(&hex("4883 640e ffc1 c0bf")).unwrap();
        let h = d
            .decode(&hex(
                "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
            ))
            .unwrap();
        assert_eq!(h[0], (":status".into(), "200".into()));
        assert_eq!(
            h[5],
            (
                "set-cookie".into(),
                "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1".into()
            )
        );
        assert_eq!(d.size, 215);
        assert_eq!(d.dynamic.len(), 3);
    }

    #[test]
    fn hostile_blocks_are_errors_not_panics() {
        let mut d = Decoder::default();
        assert!(d
            .decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f])
            .is_err());
        assert!(d.decode(&[0xbe]).is_err(), "empty dynamic table");
        assert!(d.decode(&[0x80]).is_err(), "index 0");
        assert!(d.decode(&[0x40, 0x7f, 0xff, 0x7f]).is_err());
        assert!(
            d.decode(&[0x3f, 0xe2, 0x1f]).is_err(),
            "size update above 4096"
        );
        assert!(d.decode(&[0x00, 0x05, b'a']).is_err());
    }

    /// One 4 KB table entry, then references to it filling a 64 KiB block: each
    /// reference is one byte and decodes to the whole entry.
    fn amplification(references: usize) -> Vec<u8> {
        let mut block = vec![0x40, 0x01, b'x', 0x7f];
        // The value's length, 4000, as a 7-bit-prefix integer: 127 + 3873.
        let mut rest = 4000 - 127;
        while rest >= 128 {
            block.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        block.push(rest as u8);
        block.extend(std::iter::repeat_n(b'v', 4000));
        block.extend(std::iter::repeat_n(0x80 | 62, references));
        block
    }

    #[test]
    fn references_to_a_large_entry_cannot_amplify_the_decoded_list() {
        let attack = amplification(64 * 1024 - 4010);
        assert!(attack.len() <= 64 * 1024);
        let r = Decoder::default().decode(&attack);
        let e = r.map(|h| h.len()).unwrap_err();
        assert!(e.contains("header list larger than 16384 bytes"), "{e}");
        // The same entry referenced a few times stays within the bound and decodes.
        let h = Decoder::default().decode(&amplification(2)).unwrap();
        assert_eq!(h.len(), 3);
        assert!(h.iter().all(|(n, v)| n == "x" && v.len() == 4000));
        // The bound holds across the blocks of one connection (headers, trailers).
        let mut d = Decoder::default();
        d.decode(&amplification(2)).unwrap();
        assert!(d.decode(&[0x80 | 62]).is_ok(), "16,132 bytes in all");
        assert!(
            d.decode(&[0x80 | 62, 0x80 | 62]).is_err(),
            "over 16 KiB in all"
        );
    }

    /// `n` literal fields without indexing, each a one-byte name and a one-byte value:
    /// 34 bytes each as the list's bound counts them.
    fn small_fields(n: usize) -> Vec<u8> {
        [0x00, 0x01, b'a', 0x01, b'b'].repeat(n)
    }

    #[test]
    fn many_small_fields_count_their_per_field_overhead() {
        // 481 * 34 = 16,354 bytes: within the bound.
        let h = Decoder::default().decode(&small_fields(481)).unwrap();
        assert_eq!(h.len(), 481);
        assert!(h.iter().all(|(n, v)| n == "a" && v == "b"));
        // 482 * 34 = 16,388, and 600 * 34 = 20,400: over it, though their names and
        // values alone are a few hundred bytes.
        for n in [482, 600] {
            let r = Decoder::default().decode(&small_fields(n));
            let e = r.map(|h| h.len()).unwrap_err();
            assert!(
                e.contains("header list larger than 16384 bytes"),
                "{n}: {e}"
            );
        }
    }
}

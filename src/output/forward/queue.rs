//! A forwarding target's buffer: encoded messages waiting for the collector, bounded by
//! bytes. Beyond the bound the oldest go, counted per service, so that a collector that
//! is down or slow costs a fixed amount of memory and never blocks whoever pushes.
//!
//! Pure data: the forwarder thread and the log writer share it behind a mutex.

use std::collections::VecDeque;
use std::sync::Arc;

/// What each message costs besides its bytes (its entry), so that the bound holds for
/// memory, not only for text.
pub const ENTRY_COST: usize = 16;

struct Entry {
    len: u32,
    /// Whose record it is: an index into `dropped`. A number, not the service's name,
    /// so that the two threads do not share a reference count per message.
    who: u32,
}

pub struct Queue {
    /// The messages' bytes, oldest first, from `head` on: taken from the front by
    /// moving `head`, moved back to the start once the dead part outgrows the live one
    /// (so at most twice the live bytes are held, and each byte is moved about once).
    bytes: Vec<u8>,
    head: usize,
    entries: VecDeque<Entry>,
    /// Bytes plus `ENTRY_COST` per message, at most `cap`.
    used: usize,
    cap: usize,
    /// Messages dropped for each service since the start (the daemon's own under ""),
    /// and the names entries point to: a handful of services, searched in a line (a
    /// map costs more code than it saves).
    dropped: Vec<(Arc<str>, u64)>,
    /// The last `who` found, tried first.
    last_who: u32,
    /// Messages dropped since the forwarder last said so.
    unreported: u64,
}

impl Queue {
    pub fn new(cap: usize) -> Queue {
        Queue {
            bytes: Vec::new(),
            head: 0,
            entries: VecDeque::new(),
            used: 0,
            cap,
            dropped: Vec::new(),
            last_who: 0,
            unreported: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The number that stands for `service` (`None`: the daemon's own) in `push`.
    pub fn who(&mut self, service: Option<&Arc<str>>) -> u32 {
        let name = service.map_or("", |s| s);
        let found = |(s, _): &(Arc<str>, u64)| **s == *name;
        if self.dropped.get(self.last_who as usize).is_some_and(found) {
            return self.last_who;
        }
        let i = match self.dropped.iter().position(found) {
            Some(i) => i,
            None => {
                let arc = service.cloned().unwrap_or_else(|| Arc::from(""));
                self.dropped.push((arc, 0));
                self.dropped.len() - 1
            }
        };
        self.last_who = i as u32;
        self.last_who
    }

    /// Adds one message of `who`'s, dropping the oldest until it fits; a message larger
    /// than the whole buffer is itself dropped. Returns whether the queue was empty
    /// before (the forwarder may be asleep).
    pub fn push(&mut self, msg: &[u8], who: u32) -> bool {
        let was_empty = self.entries.is_empty();
        let cost = msg.len() + ENTRY_COST;
        if cost > self.cap {
            self.count_drop(who);
            return was_empty;
        }
        while self.used + cost > self.cap {
            self.drop_oldest();
        }
        if self.head > self.bytes.len() - self.head {
            self.bytes.copy_within(self.head.., 0);
            self.bytes.truncate(self.bytes.len() - self.head);
            self.head = 0;
        }
        self.bytes.extend_from_slice(msg);
        self.entries.push_back(Entry {
            len: msg.len() as u32,
            who,
        });
        self.used += cost;
        was_empty
    }

    fn drop_oldest(&mut self) {
        let Some(e) = self.entries.pop_front() else {
            return;
        };
        self.head += e.len as usize;
        self.used -= e.len as usize + ENTRY_COST;
        self.count_drop(e.who);
        if self.entries.is_empty() {
            self.bytes.clear();
            self.head = 0;
        }
    }

    fn count_drop(&mut self, who: u32) {
        self.unreported += 1;
        if let Some((_, n)) = self.dropped.get_mut(who as usize) {
            *n += 1;
        }
    }

    /// Moves whole messages, oldest first, to the end of `out` in one copy, and their
    /// lengths to `lens`, until about `limit` bytes are taken (at least one message);
    /// returns how many.
    pub fn take(&mut self, limit: usize, out: &mut Vec<u8>, lens: &mut Vec<usize>) -> usize {
        let mut taken = 0;
        let mut bytes = 0;
        while let Some(e) = self.entries.front() {
            let len = e.len as usize;
            if taken > 0 && bytes + len > limit {
                break;
            }
            lens.push(len);
            self.entries.pop_front();
            self.used -= len + ENTRY_COST;
            bytes += len;
            taken += 1;
        }
        out.extend_from_slice(
            self.bytes
                .get(self.head..self.head + bytes)
                .unwrap_or_default(),
        );
        self.head += bytes;
        if self.entries.is_empty() {
            self.bytes.clear();
            self.head = 0;
        }
        taken
    }

    /// Messages dropped since the last call.
    pub fn take_unreported(&mut self) -> u64 {
        std::mem::take(&mut self.unreported)
    }

    /// Messages dropped so far for each service ("" for the daemon's own).
    pub fn dropped(&self) -> &[(Arc<str>, u64)] {
        &self.dropped
    }

    /// Messages dropped so far for `service` ("" for the daemon's own).
    #[cfg(test)]
    fn dropped_for(&self, service: &str) -> Option<u64> {
        self.dropped
            .iter()
            .find(|(s, n)| **s == *service && *n > 0)
            .map(|d| d.1)
    }

    pub fn used(&self) -> usize {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(q: &mut Queue, msg: &[u8], service: Option<&Arc<str>>) -> bool {
        let who = q.who(service);
        q.push(msg, who)
    }

    /// `take`, message by message.
    fn take(q: &mut Queue, limit: usize, mut each: impl FnMut(&[u8])) -> usize {
        let (mut out, mut lens) = (Vec::new(), Vec::new());
        let n = q.take(limit, &mut out, &mut lens);
        let mut start = 0;
        for len in lens {
            each(&out[start..start + len]);
            start += len;
        }
        n
    }

    fn drain(q: &mut Queue) -> Vec<String> {
        let mut out = Vec::new();
        take(q, usize::MAX, |m| {
            out.push(String::from_utf8_lossy(m).into_owned())
        });
        out
    }

    #[test]
    fn keeps_order_and_wakes_only_when_it_was_empty() {
        let mut q = Queue::new(1000);
        let web: Arc<str> = Arc::from("web");
        assert!(put(&mut q, b"one", Some(&web)));
        assert!(!put(&mut q, b"two", None));
        assert_eq!(q.used(), 6 + 2 * ENTRY_COST);
        assert_eq!(drain(&mut q), ["one", "two"]);
        assert!(q.is_empty());
        assert_eq!(q.used(), 0);
        assert!(put(&mut q, b"three", None));
    }

    #[test]
    fn drops_the_oldest_beyond_the_bound_and_counts_them_per_service() {
        let web: Arc<str> = Arc::from("web");
        let db: Arc<str> = Arc::from("db");
        // Room for exactly three 4-byte messages.
        let mut q = Queue::new(3 * (4 + ENTRY_COST));
        put(&mut q, b"web1", Some(&web));
        put(&mut q, b"db-1", Some(&db));
        put(&mut q, b"web2", Some(&web));
        assert_eq!(q.take_unreported(), 0);
        put(&mut q, b"web3", Some(&web)); // drops web1
        put(&mut q, b"own1", None); // drops db-1
        assert!(q.used() <= 3 * (4 + ENTRY_COST));
        assert_eq!(q.dropped_for("web"), Some(1));
        assert_eq!(q.dropped_for("db"), Some(1));
        assert_eq!(q.take_unreported(), 2);
        assert_eq!(q.take_unreported(), 0);
        assert_eq!(drain(&mut q), ["web2", "web3", "own1"]);
        // A message bigger than the whole buffer is dropped itself, keeping the rest.
        put(&mut q, b"keep", Some(&db));
        put(&mut q, &[b'x'; 100], None);
        assert_eq!(q.dropped_for(""), Some(1));
        assert_eq!(drain(&mut q), ["keep"]);
    }

    #[test]
    fn holds_at_most_about_twice_its_bound_however_long_it_runs() {
        let cap = 10 * (10 + ENTRY_COST);
        let mut q = Queue::new(cap);
        for i in 0..10_000u32 {
            put(&mut q, format!("{i:010}").as_bytes(), None);
            if i % 7 == 0 {
                take(&mut q, 25, |_| {});
            }
            assert!(q.bytes.len() <= 2 * cap + 10, "{}", q.bytes.len());
        }
        let mut last = Vec::new();
        take(&mut q, usize::MAX, |m| last = m.to_vec());
        assert_eq!(last, b"0000009999");
    }

    #[test]
    fn takes_whole_messages_up_to_a_limit() {
        let mut q = Queue::new(1000);
        for m in [&b"aaaa"[..], b"bbbb", b"cccc"] {
            put(&mut q, m, None);
        }
        let mut got = Vec::new();
        assert_eq!(take(&mut q, 9, |m| got.extend_from_slice(m)), 2);
        assert_eq!(got, b"aaaabbbb");
        // One message is always taken, however small the limit.
        got.clear();
        assert_eq!(take(&mut q, 1, |m| got.extend_from_slice(m)), 1);
        assert_eq!(got, b"cccc");
    }
}

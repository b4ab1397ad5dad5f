//! A forwarding target's buffer: encoded messages waiting for the collector, bounded by
//! bytes. Beyond the bound the oldest go, counted per service, so that a collector that
//! is down or slow costs a fixed amount of memory and never blocks whoever pushes.
//!
//! Pure data: the forwarder thread and the log writer share it behind a mutex.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// What each message costs besides its bytes (its entry), so that the bound holds for
/// memory, not only for text.
pub const ENTRY_COST: usize = 16;

struct Entry {
    len: usize,
    /// The service whose record it is; `None` for the daemon's own.
    service: Option<Arc<str>>,
}

pub struct Queue {
    bytes: VecDeque<u8>,
    entries: VecDeque<Entry>,
    /// Bytes plus `ENTRY_COST` per message, at most `cap`.
    used: usize,
    cap: usize,
    /// Messages dropped for each service since the start (the daemon's own under "").
    dropped: BTreeMap<Arc<str>, u64>,
    /// Messages dropped since the forwarder last said so.
    unreported: u64,
}

impl Queue {
    pub fn new(cap: usize) -> Queue {
        Queue {
            bytes: VecDeque::new(),
            entries: VecDeque::new(),
            used: 0,
            cap,
            dropped: BTreeMap::new(),
            unreported: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds one message, dropping the oldest until it fits; a message larger than the
    /// whole buffer is itself dropped. Returns whether the queue was empty before (the
    /// forwarder may be asleep).
    pub fn push(&mut self, msg: &[u8], service: Option<&Arc<str>>) -> bool {
        let was_empty = self.entries.is_empty();
        let cost = msg.len() + ENTRY_COST;
        if cost > self.cap {
            self.count_drop(service);
            return was_empty;
        }
        while self.used + cost > self.cap {
            self.drop_oldest();
        }
        self.bytes.extend(msg);
        self.entries.push_back(Entry {
            len: msg.len(),
            service: service.cloned(),
        });
        self.used += cost;
        was_empty
    }

    fn drop_oldest(&mut self) {
        let Some(e) = self.entries.pop_front() else {
            return;
        };
        self.bytes.drain(..e.len);
        self.used -= e.len + ENTRY_COST;
        self.count_drop(e.service.as_ref());
    }

    fn count_drop(&mut self, service: Option<&Arc<str>>) {
        let key = service.cloned().unwrap_or_else(|| Arc::from(""));
        *self.dropped.entry(key).or_insert(0) += 1;
        self.unreported += 1;
    }

    /// Moves whole messages, oldest first, into `out` (each one through `put`) until
    /// about `limit` bytes are taken; returns how many.
    pub fn take(&mut self, limit: usize, mut put: impl FnMut(&[u8])) -> usize {
        let mut taken = 0;
        let mut bytes = 0;
        let mut msg = Vec::new();
        while let Some(e) = self.entries.front() {
            if taken > 0 && bytes + e.len > limit {
                break;
            }
            let len = e.len;
            msg.clear();
            let (a, b) = self.bytes.as_slices();
            let from_a = len.min(a.len());
            msg.extend_from_slice(&a[..from_a]);
            msg.extend_from_slice(&b[..len - from_a]);
            self.bytes.drain(..len);
            put(&msg);
            self.entries.pop_front();
            self.used -= len + ENTRY_COST;
            bytes += len;
            taken += 1;
        }
        taken
    }

    /// Messages dropped since the last call.
    pub fn take_unreported(&mut self) -> u64 {
        std::mem::take(&mut self.unreported)
    }

    /// Messages dropped so far for each service ("" for the daemon's own).
    pub fn dropped(&self) -> &BTreeMap<Arc<str>, u64> {
        &self.dropped
    }

    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut Queue) -> Vec<String> {
        let mut out = Vec::new();
        q.take(usize::MAX, |m| {
            out.push(String::from_utf8_lossy(m).into_owned())
        });
        out
    }

    #[test]
    fn keeps_order_and_wakes_only_when_it_was_empty() {
        let mut q = Queue::new(1000);
        let web: Arc<str> = Arc::from("web");
        assert!(q.push(b"one", Some(&web)));
        assert!(!q.push(b"two", None));
        assert_eq!(q.used(), 6 + 2 * ENTRY_COST);
        assert_eq!(drain(&mut q), ["one", "two"]);
        assert!(q.is_empty());
        assert_eq!(q.used(), 0);
        assert!(q.push(b"three", None));
    }

    #[test]
    fn drops_the_oldest_beyond_the_bound_and_counts_them_per_service() {
        let web: Arc<str> = Arc::from("web");
        let db: Arc<str> = Arc::from("db");
        // Room for exactly three 4-byte messages.
        let mut q = Queue::new(3 * (4 + ENTRY_COST));
        q.push(b"web1", Some(&web));
        q.push(b"db-1", Some(&db));
        q.push(b"web2", Some(&web));
        assert_eq!(q.take_unreported(), 0);
        q.push(b"web3", Some(&web)); // drops web1
        q.push(b"own1", None); // drops db-1
        assert!(q.used() <= 3 * (4 + ENTRY_COST));
        assert_eq!(q.dropped().get("web"), Some(&1));
        assert_eq!(q.dropped().get("db"), Some(&1));
        assert_eq!(q.take_unreported(), 2);
        assert_eq!(q.take_unreported(), 0);
        assert_eq!(drain(&mut q), ["web2", "web3", "own1"]);
        // A message bigger than the whole buffer is dropped itself, keeping the rest.
        q.push(b"keep", Some(&db));
        q.push(&[b'x'; 100], None);
        assert_eq!(q.dropped().get(""), Some(&1));
        assert_eq!(drain(&mut q), ["keep"]);
    }

    #[test]
    fn takes_whole_messages_up_to_a_limit() {
        let mut q = Queue::new(1000);
        for m in [&b"aaaa"[..], b"bbbb", b"cccc"] {
            q.push(m, None);
        }
        let mut got = Vec::new();
        assert_eq!(q.take(9, |m| got.extend_from_slice(m)), 2);
        assert_eq!(got, b"aaaabbbb");
        // One message is always taken, however small the limit.
        got.clear();
        assert_eq!(q.take(1, |m| got.extend_from_slice(m)), 1);
        assert_eq!(got, b"cccc");
    }
}

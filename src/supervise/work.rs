//! The loop's work queue: the (service, machine event) items still to be stepped, in
//! the order they arose, and the one drain that steps them.
//!
//! Invariant: at most one machine step is in progress at any time. An event that
//! arises while a step is being carried out (what an action's execution found, a
//! dependent woken by a state change, a check skipped) is queued, never fed at once;
//! the outermost `feed` drains the queue, first in first out, and returns only once
//! it is empty. So a machine never sees an event while it or another machine is
//! mid-step, and the queue is always empty between two top-level calls.

use super::machine::Event;

#[derive(Default)]
pub(super) struct Work {
    /// Oldest first; short (a few items per service), so taking the first is cheap.
    queue: Vec<(String, Event)>,
    /// Set while a drain runs: a `feed` made meanwhile only queues.
    draining: bool,
    /// Set while one item is being stepped (the machine and its actions).
    in_step: bool,
}

impl Work {
    /// Queues `event` for `name`, behind what is queued already.
    pub(super) fn push(&mut self, name: &str, event: Event) {
        self.queue.push((name.to_string(), event));
    }

    /// Whether the caller is to drain: no drain runs already. It then owns the drain
    /// until `end`.
    pub(super) fn begin(&mut self) -> bool {
        if self.draining {
            return false;
        }
        self.draining = true;
        true
    }

    pub(super) fn end(&mut self) {
        debug_assert!(self.queue.is_empty() && !self.in_step);
        self.draining = false;
    }

    /// The next item, marked as being stepped until `stepped`.
    pub(super) fn next(&mut self) -> Option<(String, Event)> {
        debug_assert!(self.draining && !self.in_step, "a machine entered mid-step");
        if self.queue.is_empty() {
            return None;
        }
        let item = self.queue.remove(0);
        self.in_step = true;
        Some(item)
    }

    pub(super) fn stepped(&mut self) {
        debug_assert!(self.in_step);
        self.in_step = false;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the loop: stepping an item may queue follow-ups, as execute and
    /// the wake-up of dependents do; records the order items were stepped in.
    fn drain(
        work: &mut Work,
        seen: &mut Vec<(String, Event)>,
        follow: impl Fn(&str, &Event) -> Vec<(String, Event)>,
    ) {
        assert!(work.begin());
        while let Some((name, event)) = work.next() {
            // A feed made mid-step only queues.
            assert!(!work.begin());
            for (n, e) in follow(&name, &event) {
                work.push(&n, e);
            }
            seen.push((name, event));
            work.stepped();
        }
        work.end();
    }

    #[test]
    fn drained_first_in_first_out_one_step_at_a_time() {
        let mut work = Work::default();
        work.push("db", Event::Start);
        let mut seen = Vec::new();
        drain(&mut work, &mut seen, |name, event| match (name, event) {
            ("db", Event::Start) => vec![
                ("db".into(), Event::Timer),
                ("web".into(), Event::DepsChanged),
                ("api".into(), Event::DepsChanged),
            ],
            ("web", Event::DepsChanged) => vec![("web".into(), Event::Timer)],
            _ => Vec::new(),
        });
        let order: Vec<(&str, &Event)> = seen.iter().map(|(n, e)| (n.as_str(), e)).collect();
        assert_eq!(
            order,
            [
                ("db", &Event::Start),
                ("db", &Event::Timer),
                ("web", &Event::DepsChanged),
                ("api", &Event::DepsChanged),
                ("web", &Event::Timer),
            ]
        );
        assert_eq!(work.len(), 0);
        // The drain is over: the next feed drains again.
        assert!(work.begin());
        work.end();
    }

    #[test]
    #[should_panic(expected = "a machine entered mid-step")]
    #[cfg(debug_assertions)]
    fn entering_a_machine_mid_step_is_caught() {
        let mut work = Work::default();
        work.push("db", Event::Start);
        work.push("web", Event::Start);
        assert!(work.begin());
        let _ = work.next();
        let _ = work.next();
    }
}

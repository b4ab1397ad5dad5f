//! Work held back until a batch is over, so that thread creation holds up nobody:
//!
//! - at start-up, the autostart services are cloned one after another, and what follows
//!   each clone (its waiter thread, its `Spawned` event) waits until the last is cloned;
//! - the output readers of runs just spawned start once the queue is drained, when
//!   each run's machine has taken its `Spawned`: a run's `started` record then comes
//!   before its first line (the output waits in the pipe meanwhile).
//!
//! Its rule: whatever is held comes back exactly once, in the order it was held, and
//! nothing is held at start-up past `end_start_up`. It holds values, not processes, so
//! the rule is tested without one.

pub(super) struct Held<C, R> {
    starting: bool,
    /// Clones made while `starting`, by service, in their order.
    cloned: Vec<(String, C)>,
    /// Readers waiting for their run's machine to know the run.
    readers: Vec<R>,
    /// A run was spawned after start-up during this drain: its readers start at its end.
    readers_due: bool,
}

impl<C, R> Default for Held<C, R> {
    fn default() -> Self {
        Held {
            starting: false,
            cloned: Vec::new(),
            readers: Vec::new(),
            readers_due: false,
        }
    }
}

impl<C, R> Held<C, R> {
    /// Start-up begins: spawns are clones only until `end_start_up`.
    pub(super) fn begin_start_up(&mut self) {
        self.starting = true;
    }

    pub(super) fn starting(&self) -> bool {
        self.starting
    }

    /// A clone made during start-up, finished in `end_start_up`.
    pub(super) fn cloned(&mut self, service: &str, clone: C) {
        self.cloned.push((service.to_string(), clone));
    }

    /// Start-up's spawns are over: the clones to finish, in their order. A spawn after
    /// this (a dependent woken meanwhile) is a whole one again.
    pub(super) fn end_start_up(&mut self) -> Vec<(String, C)> {
        self.starting = false;
        std::mem::take(&mut self.cloned)
    }

    /// A run's readers, held until its machine knows the run.
    pub(super) fn reader(&mut self, reader: R) {
        self.readers.push(reader);
    }

    /// A run was spawned during this drain (after start-up): its readers are due when
    /// the drain ends.
    pub(super) fn spawned(&mut self) {
        if !self.starting {
            self.readers_due = true;
        }
    }

    /// The drain is over: the readers to start now, if a run was spawned during it.
    pub(super) fn drained(&mut self) -> Vec<R> {
        if std::mem::take(&mut self.readers_due) {
            self.readers()
        } else {
            Vec::new()
        }
    }

    /// Every reader held, to start now.
    pub(super) fn readers(&mut self) -> Vec<R> {
        std::mem::take(&mut self.readers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_up_clones_come_back_once_in_order_and_only_then() {
        let mut b: Held<u32, ()> = Held::default();
        b.begin_start_up();
        assert!(b.starting());
        b.cloned("db", 1);
        b.cloned("web", 2);
        // Spawns during start-up leave no readers due: start-up starts them itself.
        b.spawned();
        assert!(b.drained().is_empty());
        assert_eq!(
            b.end_start_up(),
            [("db".to_string(), 1), ("web".to_string(), 2)]
        );
        assert!(!b.starting());
        assert!(b.end_start_up().is_empty());
    }

    #[test]
    fn readers_wait_for_the_end_of_the_drain_that_spawned_their_run() {
        let mut b: Held<(), &str> = Held::default();
        b.reader("web stdout");
        b.reader("web stderr");
        // No spawn in this drain (the readers are start-up's): nothing is due.
        assert!(b.drained().is_empty());
        b.spawned();
        assert_eq!(b.drained(), ["web stdout", "web stderr"]);
        // Taken once.
        b.spawned();
        assert!(b.drained().is_empty());
    }

    #[test]
    fn start_up_takes_every_reader_held() {
        let mut b: Held<(), u8> = Held::default();
        b.begin_start_up();
        b.reader(1);
        b.reader(2);
        b.end_start_up();
        assert_eq!(b.readers(), [1, 2]);
        assert!(b.readers().is_empty());
    }
}

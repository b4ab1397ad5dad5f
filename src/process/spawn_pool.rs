//! The spawner pool: long-lived threads that start many services at once, so that a
//! start storm (start-up, reload) is not serialised behind one thread's clone-and-exec
//! waits. It only queues `spawn::spawn` calls and hands back their results; it never
//! touches a child itself, and its threads never exit (see `Pool`).

use crate::config::discovery::ServiceSpec;
use crate::process::sockets::Passed;
use crate::process::spawn::{spawn, Child, SpawnError};

/// Long-lived threads that start many services at once (at start-up and reload), so
/// that a start storm is not serialised behind one thread's clone-and-exec waits.
///
/// The threads never exit: a child's parent-death signal follows the thread that
/// cloned it, so a pool thread must live as long as the orchestrator (they wait on
/// their queue without a timeout, which costs nothing while idle). Any thread of the
/// process may wait for any child, so the usual waiter threads work unchanged.
pub struct Pool {
    jobs: Option<crossbeam_channel::Sender<Job>>,
    results: (
        crossbeam_channel::Sender<Done>,
        crossbeam_channel::Receiver<Done>,
    ),
    size: usize,
}

/// A finished spawn: the job's index and its result.
type Done = (usize, Result<Child, SpawnError>);

struct Job {
    index: usize,
    spec: ServiceSpec,
    cgroup_files: Vec<std::fs::File>,
    sockets: Passed,
}

impl Job {
    fn run(&self) -> Result<Child, SpawnError> {
        spawn(&self.spec, &self.cgroup_files, &self.sockets)
    }
}

impl Pool {
    /// A pool of two threads per CPU (a spawner mostly sleeps while its child execs),
    /// at most 8; none on a single CPU.
    pub fn new() -> Pool {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Pool {
            jobs: None,
            results: crossbeam_channel::unbounded(),
            size: if cpus < 2 { 1 } else { (2 * cpus).min(8) },
        }
    }

    /// Queues one spawn (`index` identifies it in `collect`); spawns it right here when
    /// there is no pool. Returns the result only in that case.
    pub fn submit(
        &mut self,
        index: usize,
        spec: ServiceSpec,
        cgroup_files: Vec<std::fs::File>,
        sockets: Passed,
    ) -> Option<Result<Child, SpawnError>> {
        let job = Job {
            index,
            spec,
            cgroup_files,
            sockets,
        };
        let Some(tx) = self.sender() else {
            return Some(job.run());
        };
        match tx.send(job) {
            Ok(()) => None,
            // The workers never exit, so this cannot happen; spawn here if it does.
            Err(crossbeam_channel::SendError(job)) => Some(job.run()),
        }
    }

    /// Waits for `n` queued spawns; their (index, result), in the order they finish.
    pub fn collect(&mut self, n: usize) -> Vec<Done> {
        (0..n).map_while(|_| self.results.1.recv().ok()).collect()
    }

    /// The queue of the pool's threads, started on first use; none without a pool
    /// (one CPU) or when no thread could be started.
    fn sender(&mut self) -> Option<&crossbeam_channel::Sender<Job>> {
        if self.size < 2 {
            return None;
        }
        if self.jobs.is_some() {
            return self.jobs.as_ref();
        }
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let mut started = 0;
        for i in 0..self.size {
            let (rx, results) = (rx.clone(), self.results.0.clone());
            let thread = std::thread::Builder::new()
                .name(format!("spawner-{i}"))
                .stack_size(64 * 1024)
                .spawn(move || {
                    for job in rx {
                        let result = job.run();
                        drop(job.cgroup_files);
                        let _ = results.send((job.index, result));
                    }
                    // Never exit: the children this thread cloned would get their
                    // parent-death signal. Parked, it costs nothing.
                    loop {
                        std::thread::park();
                    }
                });
            if thread.is_ok() {
                started += 1;
            }
        }
        if started > 0 {
            self.jobs = Some(tx);
        }
        self.jobs.as_ref()
    }
}

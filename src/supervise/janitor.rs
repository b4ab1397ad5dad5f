//! The cgroup janitor: the cgroups of finished runs that still had members when they
//! were to be removed, and when to try again.
//!
//! Its rule: a busy cgroup is never waited for in the loop. Its removal is tried again
//! from the loop's deadline (`retry_at`) every `RETRY`, at most `TRIES` times (about
//! the 2 s that teardown of a big group can take), then it is left in place with a
//! warning; a service started again meanwhile uses its cgroup again, so the janitor
//! lets go of it. At exit, what is still busy is waited for briefly instead, so that
//! nothing is left behind. The janitor holds no handle to cgroupfs: the removal itself
//! is passed in, so its bookkeeping is tested without a cgroup.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often removal of a cgroup that still had members is tried again, and how many
/// times.
pub(super) const RETRY: Duration = Duration::from_millis(100);
pub(super) const TRIES: u32 = 20;

/// One service's cgroups (one per hierarchy) that still had members.
#[derive(Debug, PartialEq)]
pub(super) struct Busy {
    pub service: String,
    pub dirs: Vec<PathBuf>,
    tries: u32,
}

#[derive(Default)]
pub(super) struct Janitor {
    busy: Vec<Busy>,
    retry_at: Option<Instant>,
}

impl Janitor {
    /// `dirs` of `service` could not be removed yet: try again from the loop.
    pub(super) fn keep(&mut self, service: &str, dirs: Vec<PathBuf>, now: Instant) {
        if dirs.is_empty() {
            return;
        }
        self.busy.push(Busy {
            service: service.to_string(),
            dirs,
            tries: 0,
        });
        self.retry_at.get_or_insert(now + RETRY);
    }

    /// When the loop must call `retry` next.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Tries each kept cgroup again once `retry_at` has come: `reused(service)` says a
    /// service runs again (its cgroup is let go of), `remove(dirs)` returns the dirs
    /// still busy. Returns the services given up on.
    pub(super) fn retry(
        &mut self,
        now: Instant,
        reused: impl Fn(&str) -> bool,
        mut remove: impl FnMut(&[PathBuf]) -> Vec<PathBuf>,
    ) -> Vec<String> {
        if self.retry_at.is_none_or(|at| now < at) {
            return Vec::new();
        }
        self.retry_at = None;
        let mut given_up = Vec::new();
        for b in std::mem::take(&mut self.busy) {
            if reused(&b.service) {
                continue;
            }
            let left = remove(&b.dirs);
            if left.is_empty() {
                continue;
            }
            if b.tries + 1 < TRIES {
                self.busy.push(Busy {
                    dirs: left,
                    tries: b.tries + 1,
                    ..b
                });
                self.retry_at = Some(now + RETRY);
            } else {
                given_up.push(b.service);
            }
        }
        given_up
    }

    /// At exit: everything still kept, for a last, waiting removal.
    pub(super) fn drain(&mut self) -> Vec<Busy> {
        self.retry_at = None;
        std::mem::take(&mut self.busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(names: &[&str]) -> Vec<PathBuf> {
        names.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn nothing_kept_means_no_deadline() {
        let mut j = Janitor::default();
        j.keep("web", Vec::new(), Instant::now());
        assert_eq!(j.retry_at(), None);
        assert!(j.drain().is_empty());
    }

    #[test]
    fn a_busy_cgroup_is_retried_from_the_deadline_until_it_goes() {
        let t0 = Instant::now();
        let mut j = Janitor::default();
        j.keep("web", dirs(&["/cg/web", "/cg1/web"]), t0);
        assert_eq!(j.retry_at(), Some(t0 + RETRY));
        // Not due yet: nothing is tried.
        let tried = std::cell::Cell::new(0);
        let remove = |d: &[PathBuf]| {
            tried.set(tried.get() + 1);
            d[1..].to_vec()
        };
        assert!(j.retry(t0, |_| false, remove).is_empty());
        assert_eq!(tried.get(), 0);
        // Due: one of the two goes; the other is kept for the next deadline.
        assert!(j.retry(t0 + RETRY, |_| false, remove).is_empty());
        assert_eq!(tried.get(), 1);
        assert_eq!(j.retry_at(), Some(t0 + RETRY * 2));
        // The last one goes: nothing is kept, no deadline is left.
        assert!(j
            .retry(t0 + RETRY * 2, |_| false, |_| Vec::new())
            .is_empty());
        assert_eq!(j.retry_at(), None);
        assert!(j.drain().is_empty());
    }

    #[test]
    fn a_cgroup_that_stays_busy_is_given_up_after_its_tries() {
        let mut now = Instant::now();
        let mut j = Janitor::default();
        j.keep("stuck", dirs(&["/cg/stuck"]), now);
        let mut given_up = Vec::new();
        let mut rounds = 0;
        while let Some(at) = j.retry_at() {
            // Bounded: a janitor that never gives up fails here rather than hanging.
            assert!(rounds < TRIES, "still retrying after {TRIES} tries");
            now = at;
            given_up = j.retry(now, |_| false, |d| d.to_vec());
            rounds += 1;
        }
        assert_eq!(rounds, TRIES);
        assert_eq!(given_up, ["stuck"]);
    }

    #[test]
    fn a_service_started_again_takes_its_cgroup_back() {
        let t0 = Instant::now();
        let mut j = Janitor::default();
        j.keep("web", dirs(&["/cg/web"]), t0);
        j.keep("db", dirs(&["/cg/db"]), t0);
        let mut removed = Vec::new();
        j.retry(
            t0 + RETRY,
            |s| s == "web",
            |d| {
                removed.extend_from_slice(d);
                d.to_vec()
            },
        );
        assert_eq!(removed, dirs(&["/cg/db"]));
        let left = j.drain();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].service, "db");
    }
}

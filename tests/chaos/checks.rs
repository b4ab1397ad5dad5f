//! The invariants the chaos run checks after every step, from `status` and one /proc
//! scan:
//! - the daemon answers `status` within 1 s (`Chaos::ping`);
//! - each service is in one of the five states;
//! - a running service's pid runs its configured program;
//! - never two live runs of one service: every live main-mode process of a service
//!   (its program itself, not the children it starts) is in one process group;
//! - a stopped, failed or restarting service has no process left (by command line or
//!   cgroup);
//! - a service an operator stopped stays stopped until started again;
//! - no zombie child of the daemon lasts over 1 s.
//!
//! Processes take a moment to die after SIGKILL and a status read races the next exit,
//! so a violation must persist for a grace period (1 s) before it is reported; the
//! zombie bound is measured across steps.

use super::procs::{self, Proc};
use super::Chaos;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const STATES: [&str; 5] = ["stopped", "starting", "running", "failed", "restarting"];
const GRACE: Duration = Duration::from_secs(1);
const ZOMBIE_BOUND: Duration = Duration::from_secs(1);

impl Chaos {
    /// Checks every invariant; fails the run with its seed on a violation that lasts.
    pub fn check(&mut self) {
        let first = Instant::now();
        loop {
            let status = self.ping();
            let scan = procs::scan(&self.model.progs, &self.cgroup_id);
            self.check_zombies(&scan);
            let problems = self.violations(&status, &scan);
            if problems.is_empty() {
                return;
            }
            if first.elapsed() >= GRACE {
                self.fail(&problems.join("; "));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn violations(&self, status: &[Value], scan: &[Proc]) -> Vec<String> {
        let mut out = Vec::new();
        let live: Vec<&Proc> = scan.iter().filter(|p| !p.zombie).collect();
        let mut by_service: BTreeMap<&str, Vec<&Proc>> = BTreeMap::new();
        for p in &live {
            if let Some(o) = &p.owner {
                by_service.entry(o.as_str()).or_default().push(p);
            }
        }
        let known: BTreeSet<&str> = status.iter().filter_map(|s| s["name"].as_str()).collect();
        for s in status {
            let name = s["name"].as_str().unwrap_or_default();
            let state = s["state"].as_str().unwrap_or_default();
            if !STATES.contains(&state) {
                out.push(format!("{name} is in state {state:?}"));
            }
            let mine = by_service.get(name).cloned().unwrap_or_default();
            if state == "running" {
                if let Some(pid) = s["pid"].as_i64() {
                    let program = self.model.program(name);
                    if procs::runs_program(pid, &program) == Some(false) {
                        out.push(format!(
                            "{name} is running as pid {pid}, not {}",
                            program.display()
                        ));
                    }
                }
            }
            let groups: BTreeSet<i32> = mine
                .iter()
                .filter(|p| p.main_mode)
                .map(|p| p.pgid)
                .collect();
            if groups.len() > 1 {
                out.push(format!(
                    "{name} has live runs in groups {groups:?}: {mine:?}"
                ));
            }
            // No run: stopped, failed, or waiting out a restart delay.
            if matches!(state, "stopped" | "failed" | "restarting") && !mine.is_empty() {
                out.push(format!("{name} is {state} with processes left: {mine:?}"));
            }
            if self.held.contains(name) && state != "stopped" {
                out.push(format!("{name} was stopped by the operator but is {state}"));
            }
        }
        // A service the daemon no longer knows (removed by a reload) has nothing left.
        for (name, mine) in &by_service {
            if !known.contains(name) && !self.model.present(name) {
                out.push(format!(
                    "removed service {name} has processes left: {mine:?}"
                ));
            }
        }
        out
    }

    fn check_zombies(&mut self, scan: &[Proc]) {
        let now = Instant::now();
        let daemon = self.daemon.pid;
        let current: BTreeSet<(i32, u64)> = scan
            .iter()
            .filter(|p| p.zombie && p.ppid == daemon)
            .map(|p| (p.pid, p.start_time))
            .collect();
        self.zombies.retain(|k, _| current.contains(k));
        for k in current {
            let seen = *self.zombies.entry(k).or_insert(now);
            if now.duration_since(seen) > ZOMBIE_BOUND {
                self.fail(&format!("zombie child {} of the daemon for over 1 s", k.0));
            }
        }
    }
}

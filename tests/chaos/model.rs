//! The chaos run's model of what it configured: services of every kind (crashing, slow
//! to stop, forking, escaping their group, flooding output, health-checked), their
//! programs, the configuration file they make, and the edits a reload may bring, valid
//! or not. Everything here is drawn from the run's seeded random source, so that a
//! seed gives the same services and the same edits.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Steady,
    Crasher,
    SlowStop,
    Forker,
    Escaper,
    Flooder,
    TcpCheck,
    ExecCheck,
}

const KINDS: [Kind; 8] = [
    Kind::Steady,
    Kind::Crasher,
    Kind::SlowStop,
    Kind::Forker,
    Kind::Escaper,
    Kind::Flooder,
    Kind::TcpCheck,
    Kind::ExecCheck,
];

/// One service as configured.
#[derive(Debug, Clone)]
pub struct Svc {
    pub name: String,
    pub kind: Kind,
    /// In the configuration (a reload may remove it and bring it back).
    pub present: bool,
    pub enabled: bool,
    pub deps: Vec<String>,
    pub restart: &'static str,
    pub backoff_ms: u64,
    pub stop_timeout_ms: u64,
    pub max_attempts: u32,
    /// Bumped by a reload edit: the process changes, so a running service restarts.
    pub env_gen: u32,
    /// For a crasher: how long a run lasts and how it ends.
    pub crash_after_ms: u64,
    pub crash_code: i32,
}

pub struct Model {
    pub svcs: Vec<Svc>,
    pub progs: PathBuf,
    pub socket: PathBuf,
    pub subreaper: bool,
    /// A port that accepts (the test accepts and drops), and one that refuses.
    pub open_port: u16,
    pub closed_port: u16,
}

impl Model {
    pub fn new(rng: &mut fastrand::Rng, dir: &Path, socket: PathBuf, ports: (u16, u16)) -> Model {
        let n = rng.usize(7..=11);
        let mut svcs = Vec::new();
        for i in 0..n {
            let kind = KINDS[rng.usize(..KINDS.len())];
            let name = format!("s{i}");
            // Dependencies only on earlier services: the graph never has a cycle.
            let deps = if i > 0 && rng.f32() < 0.4 {
                vec![format!("s{}", rng.usize(..i))]
            } else {
                Vec::new()
            };
            svcs.push(Svc {
                name,
                kind,
                present: true,
                enabled: true,
                deps,
                restart: ["always", "on-failure", "never"][rng.usize(..3)],
                backoff_ms: rng.u64(0..=100),
                stop_timeout_ms: rng.u64(100..=500),
                max_attempts: rng.u32(0..=5),
                env_gen: 0,
                crash_after_ms: rng.u64(50..=800),
                crash_code: [0, 3][rng.usize(..2)],
            });
        }
        Model {
            svcs,
            progs: dir.join("progs"),
            socket,
            subreaper: rng.bool(),
            open_port: ports.0,
            closed_port: ports.1,
        }
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.progs.join(name)
    }

    pub fn health_file(&self, name: &str) -> PathBuf {
        self.progs.join(format!("{name}.healthy"))
    }

    /// The body of a service's `/bin/sh` program. Children are the same program with a
    /// `child` argument, so that /proc names their service.
    pub fn script(&self, s: &Svc) -> String {
        let child = "if [ \"$1\" = child ]; then while :; do sleep 0.2; done; fi\n";
        let idle = "trap 'exit 0' TERM\nwhile :; do sleep 0.05; done";
        let body = match s.kind {
            Kind::Steady | Kind::TcpCheck | Kind::ExecCheck => idle.to_string(),
            Kind::Crasher => format!(
                "sleep {}.{:03}\nexit {}",
                s.crash_after_ms / 1000,
                s.crash_after_ms % 1000,
                s.crash_code
            ),
            Kind::SlowStop => "trap '' TERM\nwhile :; do sleep 0.05; done".into(),
            Kind::Forker => format!("\"$0\" child &\n\"$0\" child &\n{idle}"),
            // One child in a session of its own, one double-forked (its parent gone).
            Kind::Escaper => format!("setsid \"$0\" child &\n( \"$0\" child & )\n{idle}"),
            Kind::Flooder => "trap 'exit 0' TERM\nwhile :; do\n  head -c 20000 /dev/zero | tr '\\0' x; echo\n  i=0; while [ $i -lt 100 ]; do echo \"line $i of a flood\"; i=$((i+1)); done\n  sleep 0.1\ndone".into(),
        };
        format!("{child}{body}")
    }

    fn service_json(&self, s: &Svc) -> Value {
        let mut v = json!({
            "binary_path": self.program(&s.name),
            "pass_service_args": false,
            "enabled": s.enabled,
            "depends_on": s.deps,
            "restart": s.restart,
            "initial_backoff_ms": s.backoff_ms,
            "stop_timeout_ms": s.stop_timeout_ms,
            "max_restart_attempts": s.max_attempts,
            "environment": {"GEN": s.env_gen.to_string()},
        });
        let check = match s.kind {
            Kind::TcpCheck => {
                // Even generations pass, odd ones fail: an edit flips the health.
                let port = if s.env_gen.is_multiple_of(2) {
                    self.open_port
                } else {
                    self.closed_port
                };
                Some(
                    json!({"type": "tcp", "address": format!("127.0.0.1:{port}"),
                    "interval_ms": 100, "timeout_ms": 300, "failure_threshold": 2}),
                )
            }
            Kind::ExecCheck => Some(json!({"type": "exec",
                "command": ["/bin/sh", "-c", format!("test -e {}", self.health_file(&s.name).display())],
                "interval_ms": 100, "timeout_ms": 500, "failure_threshold": 2})),
            _ => None,
        };
        if let Some(c) = check {
            v["health_check"] = c;
        }
        v
    }

    pub fn config(&self) -> Value {
        let services: serde_json::Map<String, Value> = self
            .svcs
            .iter()
            .filter(|s| s.present)
            .map(|s| (s.name.clone(), self.service_json(s)))
            .collect();
        json!({
            "orchestrator": {
                "control_socket": self.socket,
                "services_dir": "services",
                "initial_backoff_ms": 20,
                "max_backoff_ms": 200,
                "backoff_jitter": 0.2,
                "max_restart_attempts": 5,
                "stop_timeout_ms": 300,
                "shutdown_timeout_ms": 5000,
                "subreaper": self.subreaper,
            },
            "services": services,
        })
    }

    pub fn present(&self, name: &str) -> bool {
        self.svcs.iter().any(|s| s.name == name && s.present)
    }

    /// Present services that depend on `name`, directly or not.
    pub fn dependents(&self, name: &str) -> Vec<String> {
        let mut found: Vec<String> = Vec::new();
        let mut frontier = vec![name.to_string()];
        while let Some(n) = frontier.pop() {
            for s in self.svcs.iter().filter(|s| s.present) {
                if s.deps.contains(&n) && !found.contains(&s.name) {
                    found.push(s.name.clone());
                    frontier.push(s.name.clone());
                }
            }
        }
        found
    }

    /// Applies one valid edit; returns what it did, and the services a reload forgets
    /// (their operator's stop ends with them).
    pub fn valid_edit(&mut self, rng: &mut fastrand::Rng) -> (String, Vec<String>) {
        let i = rng.usize(..self.svcs.len());
        let what = rng.u32(..6);
        let s = &mut self.svcs[i];
        if !s.present {
            s.present = true;
            return (format!("add {}", s.name), vec![s.name.clone()]);
        }
        let desc = match what {
            0 => {
                s.env_gen += 1;
                format!("environment of {}", s.name)
            }
            1 => {
                s.stop_timeout_ms = rng.u64(100..=500);
                format!("stop_timeout_ms of {}", s.name)
            }
            2 => {
                s.restart = ["always", "on-failure", "never"][rng.usize(..3)];
                format!("restart of {}: {}", s.name, s.restart)
            }
            3 => {
                // Only on earlier services still configured: no cycle, no unknown name.
                let earlier: Vec<String> = self.svcs[..i]
                    .iter()
                    .filter(|o| o.present)
                    .map(|o| o.name.clone())
                    .collect();
                let s = &mut self.svcs[i];
                s.deps = match earlier.len() {
                    n if n > 0 && rng.bool() => vec![earlier[rng.usize(..n)].clone()],
                    _ => Vec::new(),
                };
                format!("depends_on of {}: {:?}", s.name, s.deps)
            }
            4 => {
                s.enabled = !s.enabled;
                format!("enabled of {}: {}", s.name, s.enabled)
            }
            _ => {
                // Removed, with whatever depends on it dropping the dependency.
                let name = s.name.clone();
                s.present = false;
                for o in &mut self.svcs {
                    o.deps.retain(|d| *d != name);
                }
                return (format!("remove {name}"), vec![name]);
            }
        };
        (desc, Vec::new())
    }

    /// A configuration the daemon must refuse, as text.
    pub fn invalid_config(&self, rng: &mut fastrand::Rng) -> (String, String) {
        let mut cfg = self.config();
        let names: Vec<String> = self
            .svcs
            .iter()
            .filter(|s| s.present)
            .map(|s| s.name.clone())
            .collect();
        let pick = names.get(rng.usize(..names.len().max(1))).cloned();
        let Some(name) = pick else {
            return ("malformed JSON".into(), "{\"orchestrator\": ".into());
        };
        let svc = &mut cfg["services"][&name];
        let what = match rng.u32(..5) {
            0 => {
                svc["stop_timeot_ms"] = json!(100);
                "unknown key"
            }
            1 => {
                svc["depends_on"] = json!(["no-such-service"]);
                "unknown dependency"
            }
            2 => {
                svc["depends_on"] = json!([name]);
                "dependency cycle"
            }
            3 => {
                svc["restart"] = json!("sometimes");
                "bad restart policy"
            }
            _ => {
                let text = serde_json::to_string(&cfg).unwrap();
                return ("malformed JSON".into(), text[..text.len() / 2].to_string());
            }
        };
        (
            format!("{what} ({name})"),
            serde_json::to_string_pretty(&cfg).unwrap(),
        )
    }
}

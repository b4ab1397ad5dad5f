//! Prometheus text exposition (docs/status-and-metrics.md): every known service has every
//! metric, whatever its state, each family with HELP and TYPE, counters ending in `_total`.

use crate::common::protocol::{Metrics, ServiceMetrics as Row, STATES};
use std::fmt::Write;

/// Escapes a label value: backslash, double quote and newline.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The text `metrics` and `/metrics` answer with, the one rendering of `m`.
pub fn render(m: &Metrics) -> String {
    let rows = &m.services;
    let (dropped_records, write_errors, notify_rejected) =
        (m.log_records_dropped, m.log_write_errors, m.notify_rejected);
    let mut out = String::with_capacity(256 + rows.len() * 1024);
    let mut family =
        |name: &str, kind: &str, help: &str, body: &dyn Fn(&mut String, &Row, &str)| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for r in rows {
                let label = escape_label(&r.name);
                body(&mut out, r, &label);
            }
        };
    family(
        "orchestrator_service_up",
        "gauge",
        "1 if the service is running, else 0.",
        &|o, r, l| {
            let _ = writeln!(
                o,
                "orchestrator_service_up{{service=\"{l}\"}} {}",
                u8::from(r.state == "running")
            );
        },
    );
    family(
        "orchestrator_service_info",
        "gauge",
        "Always 1; labels say which binary the service runs (SHA-256), for grouping a fleet by version.",
        &|o, r, l| {
            if let Some(sha) = &r.sha256 {
                let _ = writeln!(
                    o,
                    "orchestrator_service_info{{service=\"{l}\",sha256=\"{}\"}} 1",
                    escape_label(sha)
                );
            }
        },
    );
    family(
        "orchestrator_service_restarts_total",
        "counter",
        "Restarts since the orchestrator started.",
        &|o, r, l| {
            let _ = writeln!(
                o,
                "orchestrator_service_restarts_total{{service=\"{l}\"}} {}",
                r.restarts
            );
        },
    );
    family(
        "orchestrator_service_state",
        "gauge",
        "1 for the state the service is in, 0 for the others.",
        &|o, r, l| {
            for s in STATES {
                let _ = writeln!(
                    o,
                    "orchestrator_service_state{{service=\"{l}\",state=\"{s}\"}} {}",
                    u8::from(r.state == s)
                );
            }
        },
    );
    family(
        "orchestrator_service_uptime_seconds",
        "gauge",
        "Seconds since the current run started (0 without a process).",
        &|o, r, l| {
            let _ = writeln!(
                o,
                "orchestrator_service_uptime_seconds{{service=\"{l}\"}} {:.3}",
                r.uptime_seconds
            );
        },
    );
    family(
        "orchestrator_service_memory_rss_bytes",
        "gauge",
        "Resident memory of the service's process group.",
        &|o, r, l| {
            let _ = writeln!(
                o,
                "orchestrator_service_memory_rss_bytes{{service=\"{l}\"}} {}",
                r.rss_bytes
            );
        },
    );
    family(
        "orchestrator_service_cpu_seconds_total",
        "counter",
        "CPU time of the service's current process group.",
        &|o, r, l| {
            let _ = writeln!(
                o,
                "orchestrator_service_cpu_seconds_total{{service=\"{l}\"}} {:.2}",
                r.cpu_seconds
            );
        },
    );
    family(
        "orchestrator_log_lines_total",
        "counter",
        "Output lines read from the service, by stream.",
        &|o, r, l| {
            let _ = writeln!(
                o,
                "orchestrator_log_lines_total{{service=\"{l}\",stream=\"stdout\"}} {}",
                r.stdout_lines
            );
            let _ = writeln!(
                o,
                "orchestrator_log_lines_total{{service=\"{l}\",stream=\"stderr\"}} {}",
                r.stderr_lines
            );
        },
    );
    family(
        "orchestrator_log_lines_unwritten_total",
        "counter",
        "Output lines that could not be written to the service's log file (disk full, directory gone).",
        &|o, r, l| {
            let _ = writeln!(o, "orchestrator_log_lines_unwritten_total{{service=\"{l}\"}} {}", r.unwritten);
        },
    );
    family(
        "orchestrator_log_forward_dropped_total",
        "counter",
        "Records dropped from a log_forward target's buffer while its collector was away or slow.",
        &|o, r, l| {
            for (target, n) in &r.forward_dropped {
                let t = escape_label(target);
                let _ = writeln!(
                    o,
                    "orchestrator_log_forward_dropped_total{{service=\"{l}\",target=\"{t}\"}} {n}"
                );
            }
        },
    );
    family(
        "orchestrator_notify_dropped_total",
        "counter",
        "Notify datagrams from the service dropped (over 4 KiB or not text).",
        &|o, r, l| {
            let _ = writeln!(
                o,
                "orchestrator_notify_dropped_total{{service=\"{l}\"}} {}",
                r.notify_dropped
            );
        },
    );
    let _ = writeln!(out, "# HELP orchestrator_notify_rejected_total Notify datagrams from processes of no service, dropped.");
    let _ = writeln!(out, "# TYPE orchestrator_notify_rejected_total counter");
    let _ = writeln!(out, "orchestrator_notify_rejected_total {notify_rejected}");
    let _ = writeln!(
        out,
        "# HELP orchestrator_log_write_errors_total Failed writes to the orchestrator's own log."
    );
    let _ = writeln!(out, "# TYPE orchestrator_log_write_errors_total counter");
    let _ = writeln!(out, "orchestrator_log_write_errors_total {write_errors}");
    let _ = writeln!(out, "# HELP orchestrator_log_records_dropped_total Orchestrator log records dropped while its log could not be written.");
    let _ = writeln!(out, "# TYPE orchestrator_log_records_dropped_total counter");
    let _ = writeln!(
        out,
        "orchestrator_log_records_dropped_total {dropped_records}"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_help_type_and_each_service() {
        let services = vec![
            Row {
                name: "a\"b".into(),
                state: "running",
                restarts: 2,
                uptime_seconds: 1.5,
                rss_bytes: 4096,
                cpu_seconds: 0.5,
                stdout_lines: 3,
                stderr_lines: 1,
                sha256: Some("ab12".into()),
                forward_dropped: vec![("tcp://logs:514".into(), 7)],
                ..Row::default()
            },
            Row {
                name: "idle".into(),
                state: "stopped",
                ..Row::default()
            },
        ];
        let text = render(&Metrics {
            services,
            ..Metrics::default()
        });
        for fam in [
            "orchestrator_service_up",
            "orchestrator_service_restarts_total",
            "orchestrator_service_state",
            "orchestrator_service_uptime_seconds",
            "orchestrator_service_memory_rss_bytes",
            "orchestrator_service_cpu_seconds_total",
            "orchestrator_log_lines_total",
        ] {
            assert!(text.contains(&format!("# HELP {fam} ")), "{fam}");
            assert!(text.contains(&format!("# TYPE {fam} ")), "{fam}");
            assert!(text.contains(&format!("{fam}{{service=\"idle\"")), "{fam}");
        }
        assert!(text.contains("orchestrator_service_up{service=\"a\\\"b\"} 1"));
        assert!(text.contains(
            "orchestrator_log_forward_dropped_total{service=\"a\\\"b\",target=\"tcp://logs:514\"} 7"
        ));
        assert!(text.contains("orchestrator_service_info{service=\"a\\\"b\",sha256=\"ab12\"} 1"));
        assert!(text.contains("orchestrator_service_state{service=\"idle\",state=\"stopped\"} 1"));
        assert!(text.contains("orchestrator_service_state{service=\"idle\",state=\"running\"} 0"));
    }
}

//! Service output and the daemon's log: pipe readers, the sink thread, log files, time.
pub mod escape;
pub mod files;
pub mod forward;
pub mod handover;
pub mod reader;
pub mod record;
pub mod sink;
pub mod syslog;
pub mod timefmt;

/// `1 service`, `3 services`: a count for a message a person reads.
pub fn count(n: usize, one: &str, many: &str) -> String {
    match n {
        1 => format!("1 {one}"),
        n => format!("{n} {many}"),
    }
}

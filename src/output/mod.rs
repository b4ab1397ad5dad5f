//! Service output and the daemon's log: pipe readers, the sink thread, log files, time.
pub mod escape;
pub mod files;
pub mod handover;
pub mod reader;
pub mod sink;
pub mod timefmt;

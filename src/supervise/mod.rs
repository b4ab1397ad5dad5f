//! Supervision: the pure per-service machine and the loop that drives it.
pub mod backoff;
pub mod event;
pub mod machine;
pub mod persist;
pub mod supervisor;

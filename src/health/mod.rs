//! Health-check clients (SPEC 7).
pub mod exec;
pub mod probe;

//! Health-check clients (SPEC 7).
pub mod probe;

//! Health-check clients (SPEC 7).
pub mod exec;
pub mod grpc;
pub(crate) mod hpack;
pub mod notify;
pub mod probe;

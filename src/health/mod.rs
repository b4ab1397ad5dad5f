//! Health-check clients (docs/health.md).
pub mod exec;
pub mod grpc;
pub(crate) mod hpack;
pub mod notify;
pub mod probe;

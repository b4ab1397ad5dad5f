//! The daemon's interfaces: the control socket and its client, metrics, the instance
//! lock, binary identities.
pub mod client;
pub mod instance;
pub mod metrics;
pub mod metrics_http;
pub mod pause;
pub mod sha256;
pub mod socket;

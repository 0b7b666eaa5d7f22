//! The server's outward faces: its configuration as the operator gives it, and (with the
//! cluster issue) the client protocols. Must not reach into Raft internals.

pub mod config;
pub mod resp;

pub use config::{ConfigError, PeerMap, ServerConfig, TimingConfig};

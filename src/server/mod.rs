//! The server's outward faces: its configuration as the operator gives it, and the RESP
//! front's codec and command meanings. Must not reach into Raft internals.

pub mod config;
pub mod resp;
pub mod resp_commands;

pub use config::{ConfigError, PeerMap, ServerConfig, TimingConfig};

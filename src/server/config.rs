//! A server's configuration, validated: who it is, who its peers are, where it listens,
//! where its data lives, how many cores and groups it runs and its Raft timing. Parsing of
//! operator text (`--peers 1=host:port,...`) lives here so it can be tested without clap.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::ids::{NodeId, Ticks};

/// Largest cluster accepted; Raft groups beyond seven voters gain nothing but latency.
pub const CLUSTER_NODES_MAX: usize = 7;
/// Most cores one node runs.
pub const CORES_MAX: usize = 256;
/// Most Raft groups one node runs.
pub const GROUPS_MAX: u32 = 1 << 20;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("peer `{0}` is not of the form ID=HOST:PORT (e.g. 1=127.0.0.1:7001)")]
    PeerSyntax(String),
    #[error("peer id `{0}` is not a positive integer")]
    PeerId(String),
    #[error("cannot resolve address `{address}`: {reason}")]
    Address { address: String, reason: String },
    #[error("node {0} appears twice in --peers")]
    DuplicateNode(NodeId),
    #[error("nodes {first} and {second} share the address {address}")]
    DuplicateAddress {
        first: NodeId,
        second: NodeId,
        address: SocketAddr,
    },
    #[error("--peers lists {count} nodes; between 1 and {CLUSTER_NODES_MAX} are supported")]
    ClusterSize { count: usize },
    #[error("this node ({0}) is not in --peers; list every node, this one included")]
    SelfMissing(NodeId),
    #[error("--cores {0}: must be between 1 and {CORES_MAX}")]
    Cores(usize),
    #[error("--groups {groups}: must be between --cores ({cores}) and {GROUPS_MAX}")]
    Groups { groups: u32, cores: usize },
    #[error(
        "timing: need 0 < heartbeat ticks ({heartbeat}) < election ticks ({election}) and tick > 0 ms ({tick_ms})"
    )]
    Timing {
        tick_ms: u64,
        heartbeat: u32,
        election: u32,
    },
}

/// Every node of the cluster and its peer address, this node included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerMap {
    nodes: BTreeMap<NodeId, SocketAddr>,
}

impl PeerMap {
    /// Parses `1=host:port,2=host:port,...`.
    pub fn parse(text: &str) -> Result<PeerMap, ConfigError> {
        let mut nodes = BTreeMap::new();
        for item in text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let (id, address) = item
                .split_once('=')
                .ok_or_else(|| ConfigError::PeerSyntax(item.to_string()))?;
            let id = id.trim();
            let node = id
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| ConfigError::PeerId(id.to_string()))?;
            let address = resolve(address.trim())?;
            if nodes.insert(NodeId(node), address).is_some() {
                return Err(ConfigError::DuplicateNode(NodeId(node)));
            }
        }
        if nodes.is_empty() || nodes.len() > CLUSTER_NODES_MAX {
            return Err(ConfigError::ClusterSize { count: nodes.len() });
        }
        let mut seen: BTreeMap<SocketAddr, NodeId> = BTreeMap::new();
        for (&node, &address) in &nodes {
            if let Some(&first) = seen.get(&address) {
                return Err(ConfigError::DuplicateAddress {
                    first,
                    second: node,
                    address,
                });
            }
            seen.insert(address, node);
        }
        Ok(PeerMap { nodes })
    }

    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.keys().copied()
    }

    pub fn address(&self, node: NodeId) -> Option<SocketAddr> {
        self.nodes.get(&node).copied()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Resolves `host:port` to its first address.
pub fn resolve(address: &str) -> Result<SocketAddr, ConfigError> {
    let error = |reason: String| ConfigError::Address {
        address: address.to_string(),
        reason,
    };
    let mut resolved = address
        .to_socket_addrs()
        .map_err(|e| error(e.to_string()))?;
    resolved
        .next()
        .ok_or_else(|| error("no address found".to_string()))
}

/// Raft timing: the length of a tick and the timeouts counted in ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimingConfig {
    pub tick: Duration,
    pub election_timeout_ticks: Ticks,
    pub heartbeat_interval_ticks: Ticks,
}

impl TimingConfig {
    pub fn new(tick_ms: u64, election: u32, heartbeat: u32) -> Result<TimingConfig, ConfigError> {
        if tick_ms == 0 || heartbeat == 0 || heartbeat >= election {
            return Err(ConfigError::Timing {
                tick_ms,
                heartbeat,
                election,
            });
        }
        Ok(TimingConfig {
            tick: Duration::from_millis(tick_ms),
            election_timeout_ticks: Ticks(election),
            heartbeat_interval_ticks: Ticks(heartbeat),
        })
    }
}

/// Everything a server needs to start, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub node: NodeId,
    pub peers: PeerMap,
    pub client: SocketAddr,
    pub resp: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub cores: usize,
    pub groups: u32,
    pub timing: TimingConfig,
    /// Pin each core's executor to its CPU (production; off in tests).
    pub pin: bool,
    /// Spin before parking (production on dedicated cores; never in tests).
    pub spin: bool,
}

impl ServerConfig {
    /// Checks what no single field can: this node is among the peers, cores and groups fit.
    pub fn validate(self) -> Result<ServerConfig, ConfigError> {
        if self.peers.address(self.node).is_none() {
            return Err(ConfigError::SelfMissing(self.node));
        }
        if self.cores == 0 || self.cores > CORES_MAX {
            return Err(ConfigError::Cores(self.cores));
        }
        if (self.groups as usize) < self.cores || self.groups > GROUPS_MAX {
            return Err(ConfigError::Groups {
                groups: self.groups,
                cores: self.cores,
            });
        }
        Ok(self)
    }

    /// This node's own peer address.
    pub fn peer_address(&self) -> SocketAddr {
        self.peers
            .address(self.node)
            .unwrap_or_else(|| panic!("validated config lacks node {}", self.node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(peers: &str) -> Result<ServerConfig, ConfigError> {
        ServerConfig {
            node: NodeId(1),
            peers: PeerMap::parse(peers)?,
            client: resolve("127.0.0.1:7101")?,
            resp: None,
            data_dir: PathBuf::from("data"),
            cores: 2,
            groups: 8,
            timing: TimingConfig::new(10, 30, 3)?,
            pin: false,
            spin: false,
        }
        .validate()
    }

    #[test]
    fn a_three_node_peer_list_parses() {
        // Ids and addresses come back as given, in id order.
        let config = config("3=127.0.0.1:7003, 1=127.0.0.1:7001,2=localhost:7002").expect("valid");
        assert_eq!(
            config.peers.nodes().collect::<Vec<_>>(),
            [NodeId(1), NodeId(2), NodeId(3)]
        );
        assert_eq!(
            config.peer_address(),
            resolve("127.0.0.1:7001").expect("address")
        );
    }

    #[test]
    fn every_bad_peer_list_is_refused_with_its_reason() {
        // Each mistake an operator can make is named, not guessed around.
        assert_eq!(
            config("1-127.0.0.1:1"),
            Err(ConfigError::PeerSyntax("1-127.0.0.1:1".into()))
        );
        assert_eq!(
            config("0=127.0.0.1:1"),
            Err(ConfigError::PeerId("0".into()))
        );
        assert_eq!(
            config("1=127.0.0.1:1,1=127.0.0.1:2"),
            Err(ConfigError::DuplicateNode(NodeId(1)))
        );
        assert!(matches!(
            config("1=127.0.0.1:1,2=127.0.0.1:1"),
            Err(ConfigError::DuplicateAddress { .. })
        ));
        assert_eq!(
            config("2=127.0.0.1:1"),
            Err(ConfigError::SelfMissing(NodeId(1)))
        );
        assert_eq!(config(""), Err(ConfigError::ClusterSize { count: 0 }));
        assert!(matches!(
            config("1=nonsense"),
            Err(ConfigError::Address { .. })
        ));
    }

    #[test]
    fn timing_and_sizes_are_checked() {
        // Heartbeats must come more often than elections; groups cover every core.
        assert!(TimingConfig::new(10, 3, 3).is_err());
        assert!(TimingConfig::new(0, 10, 1).is_err());
        let mut bad = config("1=127.0.0.1:1").expect("valid");
        bad.groups = 1;
        assert_eq!(
            bad.clone().validate(),
            Err(ConfigError::Groups {
                groups: 1,
                cores: 2
            })
        );
        bad.cores = 0;
        assert_eq!(bad.validate(), Err(ConfigError::Cores(0)));
    }
}

//! `ringraft server`: one glommio executor per core, each opening its WAL in
//! `<data-dir>/core-<n>/`, building its shard from what the WAL restored, joining the channel
//! mesh, linking to the same core of every peer node, listening for clients (every core) and
//! for peers (core 0, which hands each accepted connection to the core its hello names), and
//! driving its shard until a stop (SIGTERM/SIGINT) has drained it, then lingering until
//! its last peer frames are written and its clients have gone (`SHUTDOWN_LINGER_MS` at most).
//!
//! Logging: the main thread runs in a span `node{node, core=main}` and each executor thread
//! in a span `core{node, core}`, so every line of the server carries node and core; lines
//! about a group add `group` and `term` (reactor::events).
//!
//! Raft I/O (driver, WAL, peers) and client traffic run in separate task queues. The peer
//! port is bound with std (which refuses a port another process holds; glommio's bind would
//! share it through SO_REUSEPORT). This module decides nothing about Raft.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::shared_channel::{self, SharedReceiver, SharedSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::{Latency, Shares};
use thiserror::Error;

use crate::constants::{
    MESH_CHANNEL_CAPACITY, PEER_BIND_RETRY_MS, REQUEST_TIMEOUT_MS, SHUTDOWN_LINGER_MS,
};
use std::collections::HashMap;

use crate::ids::{CoreId, GroupId, LogIndex, NodeId, Ticks};
use crate::kv::store::SnapshotStore;
use crate::log::{Log, WalConfig};
use crate::reactor::client::run_client_listener;
use crate::reactor::context::{CoreContext, CoreIdentity, Input, MeshMessage, StatusBoard};
use crate::reactor::disk::DmaDisk;
use crate::reactor::driver::{
    DriverLinks, WalQueue, run_driver, run_mesh_receiver, run_ticks, run_wal,
};
use crate::reactor::executor::{CorePlacement, ExecutorConfig, ExecutorError, spawn_executor};
use crate::reactor::peer::{
    HELLO_BYTES, Hello, LinkTarget, PeerError, PeerLink, check_hello, read_batches, read_frame,
    spawn_link,
};
use crate::reactor::resp::run_resp_listener;
use crate::reactor::shard_api::{
    GroupRestart, ShardConfig, ShardCore, ShardFactory, SnapshotPolicy,
};
use crate::reactor::snapshots::Snapshots;
use crate::reactor::snapstore::{DmaSnapshotStore, restore_newest};
use crate::server::ServerConfig;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error(
        "cannot listen for peers on {address}: {reason} (another ringraft or another program holds the port: stop it or fix --peers)"
    )]
    PeerPort {
        address: SocketAddr,
        reason: std::io::Error,
    },
    #[error("cannot listen for clients on {address}: {detail} (choose a free --client port)")]
    ClientPort { address: SocketAddr, detail: String },
    #[error("cannot install the SIGTERM/SIGINT handler: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    #[error(
        "core {core}: opening the WAL in {dir}: {detail} (check that the directory exists and is writable; if the error names a corrupt file and offset, restore or remove that node's data and let it catch up from its peers)"
    )]
    Wal {
        core: CoreId,
        dir: PathBuf,
        detail: String,
    },
    #[error("core {core}: connecting the channels between cores failed")]
    Mesh { core: CoreId },
    #[error("core {core}: snapshots in {dir}: {detail}")]
    Snapshots {
        core: CoreId,
        dir: PathBuf,
        detail: String,
    },
}

/// Server settings that are not part of the operator's `ServerConfig`.
#[derive(Clone, Copy, Debug)]
pub struct ServerOptions {
    /// Bytes of each WAL segment file.
    pub wal_segment_bytes: u64,
    /// Seed of the shards' randomness (election timeouts); mixed with node and core.
    pub seed: u64,
    /// A group takes a snapshot after this many applied entries (0: never).
    pub snapshot_entries: u64,
    /// Bytes per second one core may spend sending snapshots to followers.
    pub snapshot_send_bytes_per_second: u64,
}

/// Runs the server until it is stopped; returns once every core has stopped.
pub fn run_server<S: ShardCore + 'static>(
    config: ServerConfig,
    options: ServerOptions,
    factory: ShardFactory<S>,
) -> Result<(), ServerError> {
    let _span = tracing::error_span!("node", node = %config.node, core = %"main").entered();
    crate::reactor::signals::install().map_err(ServerError::Signals)?;
    let peer_address = config.peer_address();
    let peer_listener = bind_peer_port(peer_address)?;
    let nodes: Vec<NodeId> = config.peers.nodes().collect();
    let board = Arc::new(StatusBoard::new(config.cores, &nodes, config.node));
    let (mut senders, mut receivers) = mesh_channels(config.cores);
    let mut peer_fd = Some(peer_listener.into_raw_fd());
    let mut handles = Vec::with_capacity(config.cores);
    for index in (0..config.cores).rev() {
        let setup = CoreSetup {
            config: config.clone(),
            options,
            core: CoreId(index as u16),
            board: board.clone(),
            mesh_senders: senders.pop().unwrap_or_default(),
            mesh_receivers: receivers.pop().unwrap_or_default(),
            peer_fd: if index == 0 { peer_fd.take() } else { None },
            factory,
        };
        let mut executor = ExecutorConfig::new(&format!("ringraft-core-{index}"));
        executor.span =
            tracing::error_span!(parent: None, "core", node = %config.node, core = index);
        if config.pin {
            executor.placement = CorePlacement::Pinned { cpu: index };
        }
        if config.spin {
            executor.spin_before_park = Some(Duration::from_micros(50));
        }
        handles.push(spawn_executor(&executor, move || run_core(setup))?);
    }
    tracing::info!(peers = %peer_address, clients = %config.client,
        cores = config.cores, groups = config.groups, "ringraft server started");
    let mut first_error = None;
    for handle in handles {
        let result = handle
            .join()
            .map_err(ServerError::from)
            .and_then(|inner| inner);
        if let Err(error) = result {
            tracing::error!(%error, "core failed: stopping the other cores");
            // Other cores keep running without this one only to no purpose: stop them.
            crate::reactor::signals::request_stop();
            first_error.get_or_insert(error);
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => {
            tracing::info!("server stopped");
            Ok(())
        }
    }
}

/// Binds the peer port with std, which refuses a port another process listens on. A port
/// still held for a moment by a killed predecessor (its io_uring is torn down after it has
/// exited) is retried for `PEER_BIND_RETRY_MS`.
fn bind_peer_port(address: SocketAddr) -> Result<std::net::TcpListener, ServerError> {
    let deadline = Instant::now() + Duration::from_millis(PEER_BIND_RETRY_MS);
    let mut warned = false;
    loop {
        match std::net::TcpListener::bind(address) {
            Ok(listener) => return Ok(listener),
            Err(reason)
                if reason.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
            {
                if !warned {
                    tracing::warn!(%address,
                        "peer port in use; retrying briefly (a previous instance may still be \
                         closing; if this fails, stop whatever holds the port or fix --peers)");
                    warned = true;
                }
                // Start-up only, before any executor runs.
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(reason) => return Err(ServerError::PeerPort { address, reason }),
        }
    }
}

type MeshEnds = (
    Vec<Vec<Option<SharedSender<MeshMessage>>>>,
    Vec<Vec<Option<SharedReceiver<MeshMessage>>>>,
);

/// Channels between every ordered pair of distinct cores: `senders[i][j]` sends from core i
/// to core j, `receivers[j][i]` receives it.
fn mesh_channels(cores: usize) -> MeshEnds {
    let mut senders: Vec<Vec<Option<SharedSender<MeshMessage>>>> = (0..cores)
        .map(|_| (0..cores).map(|_| None).collect())
        .collect();
    let mut receivers: Vec<Vec<Option<SharedReceiver<MeshMessage>>>> = (0..cores)
        .map(|_| (0..cores).map(|_| None).collect())
        .collect();
    for (from, row) in senders.iter_mut().enumerate() {
        for (to, slot) in row.iter_mut().enumerate() {
            if from != to {
                let (sender, receiver) = shared_channel::new_bounded(MESH_CHANNEL_CAPACITY);
                *slot = Some(sender);
                receivers[to][from] = Some(receiver);
            }
        }
    }
    (senders, receivers)
}

struct CoreSetup<S> {
    config: ServerConfig,
    options: ServerOptions,
    core: CoreId,
    board: Arc<StatusBoard>,
    mesh_senders: Vec<Option<SharedSender<MeshMessage>>>,
    mesh_receivers: Vec<Option<SharedReceiver<MeshMessage>>>,
    peer_fd: Option<RawFd>,
    factory: ShardFactory<S>,
}

async fn run_core<S: ShardCore + 'static>(setup: CoreSetup<S>) -> Result<(), ServerError> {
    let config = &setup.config;
    let core = setup.core;
    let executor = glommio::executor();
    let raft_queue =
        executor.create_task_queue(Shares::Static(1000), Latency::NotImportant, "raft");
    let client_queue =
        executor.create_task_queue(Shares::Static(500), Latency::NotImportant, "client");
    let (log, restored) = open_wal(config, setup.options, core).await?;
    let nodes: Vec<NodeId> = config.peers.nodes().collect();
    let snap_dir = crate::reactor::snapstore::snapshot_dir(&config.data_dir, core);
    let snapshot_error = |detail: String| ServerError::Snapshots {
        core,
        dir: snap_dir.clone(),
        detail,
    };
    let store = DmaSnapshotStore::open(&snap_dir)
        .await
        .map_err(|error| snapshot_error(error.to_string()))?;
    let shard_config = shard_config(config, setup.options, core, store.alignment());
    let mut restarts = HashMap::new();
    let started = Instant::now();
    for group in shard_config.groups() {
        let wal = restored
            .iter()
            .find(|(g, _)| *g == group)
            .map(|(_, r)| r.clone());
        let restart = restore_group(&store, group, wal)
            .await
            .map_err(|error| snapshot_error(error.to_string()))?;
        restarts.insert(group, restart);
    }
    if restarts.values().any(|r| r.snapshot.is_some()) {
        tracing::info!(
            millis = started.elapsed().as_millis() as u64,
            "snapshots loaded"
        );
    }
    let shard = (setup.factory)(shard_config, &mut |group| {
        restarts.remove(&group).unwrap_or_default()
    });
    let identity = CoreIdentity {
        node: config.node,
        core,
        cores: config.cores,
        groups_total: config.groups,
        nodes: nodes.clone(),
    };
    let (context, ring) = CoreContext::new(identity, setup.board.clone(), raft_queue, client_queue);
    connect_mesh(&context, setup.mesh_senders, setup.mesh_receivers).await?;
    let client_listener =
        TcpListener::bind(config.client).map_err(|error| ServerError::ClientPort {
            address: config.client,
            detail: error.to_string(),
        })?;
    spawn(
        run_client_listener(context.clone(), client_listener),
        client_queue,
    );
    if let Some(address) = config.resp {
        let listener = TcpListener::bind(address).map_err(|error| ServerError::ClientPort {
            address,
            detail: error.to_string(),
        })?;
        spawn(run_resp_listener(context.clone(), listener), client_queue);
    }
    if let Some(fd) = setup.peer_fd {
        // SAFETY: the fd is a listening TCP socket bound by std in `run_server`, handed to this
        // core alone.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        spawn(run_peer_listener(context.clone(), listener), raft_queue);
    }
    let mut peers = std::collections::HashMap::new();
    let settled = context.settled.clone();
    for node in nodes.iter().copied().filter(|&node| node != config.node) {
        let Some(address) = config.peers.address(node) else {
            continue;
        };
        let hello = Hello {
            from: config.node,
            to: node,
            core,
        };
        let up = if core.0 == 0 {
            context.board.up_flag(node)
        } else {
            None
        };
        peers.insert(
            node,
            spawn_link(
                LinkTarget {
                    hello,
                    address,
                    up,
                    settled: settled.clone(),
                },
                raft_queue,
            ),
        );
    }
    let snapshots = Snapshots::start(
        context.clone(),
        Rc::new(store),
        peers.clone(),
        setup.options.snapshot_send_bytes_per_second,
        raft_queue,
    );
    let (wal_queue, wal_ring) = WalQueue::new();
    spawn(
        run_wal(context.clone(), log, wal_queue.clone(), wal_ring),
        raft_queue,
    );
    spawn(run_ticks(context.clone(), config.timing.tick), raft_queue);
    let links_to_flush: Vec<Rc<PeerLink>> = peers.values().cloned().collect();
    let links = DriverLinks {
        peers,
        wal: wal_queue,
        snapshots,
    };
    let driver =
        glommio::spawn_local_into(run_driver(context.clone(), shard, links, ring), raft_queue)
            .map_err(|_| ServerError::Mesh { core })?;
    driver.await;
    linger(&context, &links_to_flush).await;
    Ok(())
}

/// After the driver stopped: waits until every peer link has written its last frames (a
/// vote, an acknowledgement, the hand-over's TimeoutNow) and every client connection of this
/// core has closed, for at most `SHUTDOWN_LINGER_MS`. The context stays stopping meanwhile:
/// a request still arriving is answered `ShuttingDown`, so its client retries elsewhere and
/// closes the connection instead of finding it reset.
async fn linger(context: &CoreContext, links: &[Rc<PeerLink>]) {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(SHUTDOWN_LINGER_MS);
    loop {
        let links_unflushed = links.iter().filter(|link| !link.is_flushed()).count();
        let connections = context.connection_count();
        if links_unflushed == 0 && connections == 0 {
            tracing::info!(
                millis = started.elapsed().as_millis() as u64,
                "linger done: peer links flushed, client connections closed"
            );
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            tracing::info!(
                connections,
                links_unflushed,
                "linger time over: closing what is still open (idle clients reconnect to \
                 another node)"
            );
            return;
        }
        // Rung by a closing connection or a link that has written everything.
        futures_lite::future::or(
            context.settled.wait(),
            glommio::timer::sleep(deadline - now),
        )
        .await;
    }
}

fn spawn<F: std::future::Future<Output = ()> + 'static>(
    future: F,
    queue: glommio::TaskQueueHandle,
) {
    match glommio::spawn_local_into(future, queue) {
        Ok(task) => {
            task.detach();
        }
        Err(error) => tracing::error!(%error,
            "cannot start a task (a bug; please report it)"),
    }
}

fn shard_config(
    config: &ServerConfig,
    options: ServerOptions,
    core: CoreId,
    snapshot_alignment: usize,
) -> ShardConfig {
    let tick_ms = config.timing.tick.as_millis().max(1);
    let request_timeout_ticks = u32::try_from(u128::from(REQUEST_TIMEOUT_MS) / tick_ms)
        .unwrap_or(u32::MAX)
        .max(1);
    ShardConfig {
        node: config.node,
        core,
        cores: config.cores,
        groups_total: config.groups,
        nodes: config.peers.nodes().collect(),
        election_timeout_ticks: config.timing.election_timeout_ticks,
        heartbeat_interval_ticks: config.timing.heartbeat_interval_ticks,
        request_timeout_ticks: Ticks(request_timeout_ticks),
        seed: options.seed ^ config.node.0.rotate_left(32) ^ u64::from(core.0),
        snapshot: SnapshotPolicy {
            entries: options.snapshot_entries,
            alignment: snapshot_alignment,
        },
        wal_record_capacity_bytes: options
            .wal_segment_bytes
            .saturating_sub(crate::constants::WAL_HEADER_BLOCK_BYTES),
    }
}

/// Loads the newest snapshot of `group` that decodes (logging the ones skipped) and lists
/// the files kept at or below it.
async fn restore_group(
    store: &DmaSnapshotStore,
    group: GroupId,
    wal: Option<crate::log::recovery::RestoredGroup>,
) -> Result<GroupRestart, crate::kv::store::StoreError> {
    let loaded = restore_newest(store, group).await?;
    // A file that does not decode is set aside under another name: it would otherwise count
    // among the files kept, and the one older than it, which the log continues, be removed.
    for skipped in &loaded.skipped {
        let path = store.path_of(skipped.id);
        let aside = path.with_extension("snap.corrupt");
        match std::fs::rename(&path, &aside) {
            Ok(()) => tracing::warn!(%group, path = %aside.display(),
                "set a snapshot that does not decode aside; remove it once inspected"),
            Err(error) => tracing::warn!(%group, path = %path.display(), %error,
                "cannot set a snapshot that does not decode aside"),
        }
    }
    let Some((id, restored)) = loaded.restored else {
        return Ok(GroupRestart {
            wal,
            ..GroupRestart::default()
        });
    };
    let mut kept: Vec<LogIndex> = store
        .list(group)
        .await?
        .into_iter()
        .map(|other| other.last.index)
        .filter(|&index| index <= id.last.index)
        .collect();
    kept.sort_unstable();
    Ok(GroupRestart {
        wal,
        snapshot: Some(restored),
        kept,
    })
}

type Restored = Vec<(crate::ids::GroupId, crate::log::recovery::RestoredGroup)>;

async fn open_wal(
    config: &ServerConfig,
    options: ServerOptions,
    core: CoreId,
) -> Result<(Log<Rc<DmaDisk>>, Restored), ServerError> {
    let dir = config.data_dir.join(format!("core-{}", core.0));
    let wal_error = |detail: String| ServerError::Wal {
        core,
        dir: dir.clone(),
        detail,
    };
    let started = Instant::now();
    let disk = DmaDisk::open(&dir)
        .await
        .map_err(|error| wal_error(error.to_string()))?;
    let wal_config = WalConfig {
        segment_bytes: options.wal_segment_bytes,
        ..WalConfig::default()
    };
    // Shared with the WAL task's spare creation (`run_wal`).
    let (log, summary) = Log::open(Rc::new(disk), wal_config)
        .await
        .map_err(|error| wal_error(error.to_string()))?;
    let restored: Restored = log
        .group_ids()
        .into_iter()
        .filter_map(|group| log.restored(group).map(|r| (group, r)))
        .collect();
    tracing::info!(dir = %dir.display(),
        segments = summary.segment_count, batches = summary.batch_count,
        records = summary.record_count, bytes = summary.bytes_scanned,
        groups = summary.group_count, torn_tail = summary.torn_tail.is_some(),
        millis = started.elapsed().as_millis() as u64, "WAL recovered");
    if let Some(torn) = &summary.torn_tail {
        tracing::warn!(segment = %torn.segment, offset = torn.offset, reason = %torn.reason,
            "WAL: cut the torn tail of a write a crash interrupted (it was never acknowledged; \
             nothing to do unless this repeats without crashes: then check the disk)");
    }
    for (group, found) in &restored {
        log_restored(*group, found);
    }
    Ok((log, restored))
}

/// One line per group the WAL restored: its hard state and the entries it still holds.
fn log_restored(group: crate::ids::GroupId, found: &crate::log::recovery::RestoredGroup) {
    let hard_state = found.hard_state.unwrap_or_default();
    let vote = hard_state
        .vote
        .map_or_else(|| "none".to_string(), |node| node.to_string());
    let first_index = found
        .first_index
        .map_or_else(|| "none".to_string(), |index| index.to_string());
    let snapshot_index = found.snapshot.as_ref().map_or_else(
        || "none".to_string(),
        |snapshot| snapshot.last.index.to_string(),
    );
    tracing::info!(%group, term = %hard_state.term, %vote, commit = %hard_state.commit,
        %first_index, last_index = %found.last_index, %snapshot_index, "WAL restored group");
}

/// Connects this core's ends of the mesh: receivers first (each in its own task, so the
/// other cores' senders can connect), then senders.
async fn connect_mesh(
    context: &Rc<CoreContext>,
    senders: Vec<Option<SharedSender<MeshMessage>>>,
    receivers: Vec<Option<SharedReceiver<MeshMessage>>>,
) -> Result<(), ServerError> {
    let on_peer_connection: Rc<dyn Fn(RawFd, Hello)> = {
        let context = context.clone();
        Rc::new(move |fd, hello| {
            // SAFETY: the fd is an accepted TCP connection duplicated by core 0 for this
            // core alone; core 0 closed its own copy.
            let stream = unsafe { TcpStream::from_raw_fd(fd) };
            spawn(
                serve_peer(context.clone(), stream, hello),
                context.raft_queue,
            );
        })
    };
    for receiver in receivers.into_iter().flatten() {
        let context_for_task = context.clone();
        let on_peer = on_peer_connection.clone();
        spawn(
            async move {
                let receiver = receiver.connect().await;
                run_mesh_receiver(context_for_task, receiver, on_peer).await;
            },
            context.raft_queue,
        );
    }
    let mut connected = Vec::with_capacity(senders.len());
    for sender in senders {
        match sender {
            Some(sender) => connected.push(Some(Rc::new(sender.connect().await))),
            None => connected.push(None),
        }
    }
    context.set_mesh(connected);
    Ok(())
}

/// Core 0: accepts peer connections, reads each hello and hands the connection to its core.
async fn run_peer_listener(context: Rc<CoreContext>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => spawn(accept_peer(context.clone(), stream), context.raft_queue),
            Err(error) => {
                tracing::warn!(%error,
                    "accepting a peer connection failed (out of file descriptors? raise `ulimit -n`)");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn accept_peer(context: Rc<CoreContext>, mut stream: TcpStream) {
    let address = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let hello = match read_frame(&mut stream, HELLO_BYTES)
        .await
        .and_then(|payload| {
            let hello = Hello::decode(&payload)?;
            check_hello(&hello, context.node, &context.nodes, context.cores)?;
            Ok(hello)
        }) {
        Ok(hello) => hello,
        Err(error) => {
            tracing::warn!(peer = ?address, %error,
                "refused a peer connection: bad hello");
            return;
        }
    };
    if hello.core == context.core {
        serve_peer(context, stream, hello).await;
        return;
    }
    // SAFETY: dup of a valid, open socket; the original is closed right after.
    let fd = unsafe { libc::dup(stream.as_raw_fd()) };
    drop(stream);
    if fd < 0 {
        tracing::warn!(peer = %hello.from,
            error = %std::io::Error::last_os_error(),
            "cannot hand a peer connection to its core (out of file descriptors? raise `ulimit -n`)");
        return;
    }
    context.send_to_core(hello.core, MeshMessage::PeerConnection { fd, hello });
}

/// Reads a peer's batches into this core's shard until the connection ends.
async fn serve_peer(context: Rc<CoreContext>, stream: TcpStream, hello: Hello) {
    tracing::info!(peer = %hello.from,
        "peer connection accepted");
    let deliver_context = context.clone();
    let mut stream = futures_lite::io::BufReader::with_capacity(
        crate::constants::SOCKET_READ_BUFFER_BYTES,
        stream,
    );
    let reason = read_batches(&mut stream, hello, |batch| {
        let context = deliver_context.clone();
        async move {
            if let Some(permit) = context.permit().await {
                context.push(Input::Peer(batch, permit));
            }
        }
    })
    .await;
    match reason {
        PeerError::Closed => tracing::info!(
            peer = %hello.from, "peer connection closed by the peer"),
        reason => tracing::warn!(peer = %hello.from,
            %reason, "closing a peer connection: bad frame"),
    }
}

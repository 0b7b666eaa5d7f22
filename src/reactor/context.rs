//! What the tasks of one core share: the queue of inputs for the core's shard (with its
//! doorbell and the permits that give backpressure to peer readers), the channels to the
//! other cores of this node, the registry of this core's client connections, and the
//! node-wide status board (every core's group status, every peer's up/down).
//!
//! It owns delivery, not decisions: it must not look inside requests or batches beyond
//! routing them to the core or connection named on them.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use glommio::TaskQueueHandle;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::channels::shared_channel::ConnectedSender;
use glommio::sync::{Semaphore, StaticPermit};

use crate::constants::CORE_INPUTS_QUEUED_MAX;
use crate::ids::{CoreId, GroupId, NodeId};
use crate::kv::KvMachine;
use crate::kv::store::SnapshotId;
use crate::raft::types::{Entry, Message, SnapshotStatus};
use crate::reactor::peer::Hello;
use crate::reactor::shard_api::{Origin, WalTicket};
use crate::shard::Batch;
use crate::wire::client::{ClientRequest, GroupStatus, NodeStatus};

/// An input for the shard of this core.
pub enum Input {
    Ticks(u32),
    /// The permit is held until the shard has taken the batch.
    Peer(Batch, StaticPermit),
    /// The request, decoded, and its payload as the client sent it.
    Client(Origin, ClientRequest, bytes::Bytes),
    WalDurable(WalTicket),
    Fetched(GroupId, Vec<Entry>),
    Stop,
    /// The snapshot writer wrote one chunk of a snapshot the shard takes.
    SnapshotChunkWritten(SnapshotId),
    /// A snapshot the shard takes is durable, or failed.
    SnapshotWritten(SnapshotId, Result<(), String>),
    /// A snapshot a leader streamed is staged and durable: its offer and its state machine.
    SnapshotStaged(GroupId, Message, KvMachine),
    /// A transfer of a snapshot to a follower ended.
    SnapshotSent(GroupId, NodeId, SnapshotStatus),
}

/// What one core sends another of the same node.
pub enum MeshMessage {
    /// A client request payload exactly as it arrived (not re-encoded), for the owning core.
    ClientRequest { origin: Origin, payload: Vec<u8> },
    /// An encoded response frame for a connection of the receiving core.
    Reply { connection: u64, frame: Vec<u8> },
    /// An accepted peer connection whose hello names the receiving core.
    PeerConnection { fd: RawFd, hello: Hello },
}

/// Node-wide state every core reads and writes rarely (once per tick at most).
pub struct StatusBoard {
    /// Per core, its groups' latest status.
    pub groups: Vec<Mutex<Vec<GroupStatus>>>,
    /// Per node: whether this node's core 0 has a live connection to it (self: always up).
    pub nodes: Vec<(NodeId, Arc<AtomicBool>)>,
}

impl StatusBoard {
    pub fn new(cores: usize, nodes: &[NodeId], me: NodeId) -> StatusBoard {
        StatusBoard {
            groups: (0..cores).map(|_| Mutex::new(Vec::new())).collect(),
            nodes: nodes
                .iter()
                .map(|&node| (node, Arc::new(AtomicBool::new(node == me))))
                .collect(),
        }
    }

    pub fn publish(&self, core: CoreId, status: Vec<GroupStatus>) {
        if let Some(slot) = self.groups.get(usize::from(core.0)) {
            // A poisoned slot only means another core panicked; its data is still a status.
            let mut slot = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *slot = status;
        }
    }

    pub fn snapshot(&self) -> (Vec<GroupStatus>, Vec<NodeStatus>) {
        let mut groups = Vec::new();
        for slot in &self.groups {
            let slot = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            groups.extend_from_slice(&slot);
        }
        groups.sort_by_key(|status| status.group);
        let nodes = self
            .nodes
            .iter()
            .map(|(node, up)| NodeStatus {
                node: *node,
                up: up.load(Ordering::Relaxed),
            })
            .collect();
        (groups, nodes)
    }

    pub fn up_flag(&self, node: NodeId) -> Option<Arc<AtomicBool>> {
        self.nodes
            .iter()
            .find(|(candidate, _)| *candidate == node)
            .map(|(_, flag)| flag.clone())
    }
}

/// Wakes the one task waiting for a condition that other tasks may have changed (a
/// doorbell: rings while nobody waits are remembered as one).
pub struct Bell {
    ring: LocalSender<()>,
    waiter: LocalReceiver<()>,
}

impl Bell {
    pub fn new() -> Rc<Bell> {
        let (ring, waiter) = local_channel::new_bounded(1);
        Rc::new(Bell { ring, waiter })
    }

    pub fn ring(&self) {
        // Full: already rung, and one ring wakes the waiter as well as many.
        let _ = self.ring.try_send(());
    }

    /// Returns at the next ring (at once if rung since the last wait).
    pub async fn wait(&self) {
        let _ = self.waiter.recv().await;
    }
}

/// One client connection as the rest of the core sees it.
struct ConnectionSlot {
    writer: LocalSender<Vec<u8>>,
    in_flight: Rc<Cell<usize>>,
}

pub struct CoreContext {
    pub node: NodeId,
    pub core: CoreId,
    pub cores: usize,
    pub groups_total: u32,
    pub nodes: Vec<NodeId>,
    pub board: Arc<StatusBoard>,
    pub raft_queue: TaskQueueHandle,
    pub client_queue: TaskQueueHandle,
    inputs: RefCell<VecDeque<Input>>,
    doorbell: LocalSender<()>,
    permits: Rc<Semaphore>,
    /// Indexed by core; `None` for this core.
    mesh: RefCell<Vec<Option<Rc<ConnectedSender<MeshMessage>>>>>,
    connections: RefCell<HashMap<u64, ConnectionSlot>>,
    next_connection: Cell<u64>,
    /// Set once the core stops taking new client requests into the shard.
    stopping: Cell<bool>,
    /// Rung when a client connection closes or a peer link has written all it was given:
    /// what a stopped core waits for before it exits.
    pub settled: Rc<Bell>,
}

/// Who a core is, within its node.
pub struct CoreIdentity {
    pub node: NodeId,
    pub core: CoreId,
    pub cores: usize,
    pub groups_total: u32,
    pub nodes: Vec<NodeId>,
}

impl CoreContext {
    /// The context and the receiving end of its doorbell (for the driver loop).
    pub fn new(
        identity: CoreIdentity,
        board: Arc<StatusBoard>,
        raft_queue: TaskQueueHandle,
        client_queue: TaskQueueHandle,
    ) -> (Rc<CoreContext>, LocalReceiver<()>) {
        let (doorbell, ring) = local_channel::new_bounded(1);
        let context = CoreContext {
            node: identity.node,
            core: identity.core,
            cores: identity.cores,
            groups_total: identity.groups_total,
            nodes: identity.nodes,
            board,
            raft_queue,
            client_queue,
            inputs: RefCell::new(VecDeque::new()),
            doorbell,
            permits: Rc::new(Semaphore::new(CORE_INPUTS_QUEUED_MAX as u64)),
            mesh: RefCell::new(Vec::new()),
            connections: RefCell::new(HashMap::new()),
            next_connection: Cell::new(0),
            stopping: Cell::new(false),
            settled: Bell::new(),
        };
        (Rc::new(context), ring)
    }

    pub fn set_mesh(&self, mesh: Vec<Option<Rc<ConnectedSender<MeshMessage>>>>) {
        assert_eq!(
            mesh.len(),
            self.cores,
            "mesh of {} cores, expected {}",
            mesh.len(),
            self.cores
        );
        *self.mesh.borrow_mut() = mesh;
    }

    /// Queues an input for the shard and rings the doorbell.
    pub fn push(&self, input: Input) {
        self.inputs.borrow_mut().push_back(input);
        // A full doorbell has already been rung; the driver drains everything when it wakes.
        let _ = self.doorbell.try_send(());
    }

    /// Every queued input, oldest first.
    pub fn take_inputs(&self) -> VecDeque<Input> {
        std::mem::take(&mut *self.inputs.borrow_mut())
    }

    /// Waits for room in the shard's input queue (backpressure for peer readers).
    pub async fn permit(&self) -> Option<StaticPermit> {
        self.permits.acquire_static_permit(1).await.ok()
    }

    pub fn set_stopping(&self) {
        self.stopping.set(true);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    /// Sends a message to another core; waits in a task of its own when the channel is full.
    pub fn send_to_core(&self, core: CoreId, message: MeshMessage) {
        let sender = self
            .mesh
            .borrow()
            .get(usize::from(core.0))
            .and_then(Option::clone);
        let Some(sender) = sender else {
            tracing::error!(to_core = %core,
                "no channel to core {core}: message dropped (a bug; please report it)");
            return;
        };
        let Err(error) = sender.try_send(message) else {
            return;
        };
        // Full: wait for room in a task of its own. Closed: the other core has stopped.
        if let glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(message)) = error {
            let task = glommio::spawn_local_into(
                async move {
                    // The receiver ends only when its core has stopped; nothing to deliver to.
                    let _ = sender.send(message).await;
                },
                self.raft_queue,
            );
            if let Ok(task) = task {
                task.detach();
            }
        }
    }

    /// Registers a client connection; returns its id, the receiver of its outgoing frames and
    /// its in-flight counter.
    pub fn register_connection(&self) -> (u64, LocalReceiver<Vec<u8>>, Rc<Cell<usize>>) {
        let id = self.next_connection.get();
        self.next_connection.set(id + 1);
        let (writer, frames) = local_channel::new_unbounded();
        let in_flight = Rc::new(Cell::new(0));
        self.connections.borrow_mut().insert(
            id,
            ConnectionSlot {
                writer,
                in_flight: in_flight.clone(),
            },
        );
        (id, frames, in_flight)
    }

    pub fn unregister_connection(&self, connection: u64) {
        self.connections.borrow_mut().remove(&connection);
        self.settled.ring();
    }

    /// Hands a response frame to a connection of this core. `counted`: the frame answers a
    /// request counted in flight. A connection that has gone drops the frame.
    pub fn deliver(&self, connection: u64, frame: Vec<u8>, counted: bool) {
        let connections = self.connections.borrow();
        let Some(slot) = connections.get(&connection) else {
            return;
        };
        if counted {
            slot.in_flight.set(slot.in_flight.get().saturating_sub(1));
        }
        // Unbounded: bounded in effect by the in-flight limit per connection.
        let _ = slot.writer.try_send(frame);
    }

    /// Client connections open on this core.
    pub fn connection_count(&self) -> usize {
        self.connections.borrow().len()
    }
}

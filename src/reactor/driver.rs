//! The loop that drives one core's shard (DESIGN §2): wake on a tick, a peer frame, a client
//! request or a WAL completion; feed the inputs; call `round`; send batches at once; hand the
//! WAL append to the one WAL task (while one append runs, later tickets queue; the WAL task
//! then folds every queued append into one write, `log::fold_appends`); deliver replies (through the channel mesh when the
//! connection lives on another core). Also the tick task (elapsed ticks from `Instant`
//! deadlines, GLOMMIO.md: timers drift) and the WAL task.
//!
//! It must not decide anything the simulator would miss: what to send, persist or answer is
//! the shard's. A failed WAL write or sync is fatal: logged, and the process exits non-zero.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use flatbuffers::FlatBufferBuilder;
use glommio::channels::local_channel::LocalReceiver;

use crate::constants::{SHUTDOWN_DRAIN_MS, SHUTDOWN_FORWARD_QUIET_MS, TICKS_PER_WAKE_MAX};
use crate::ids::{GroupId, LogIndex, NodeId};
use crate::log::disk::{Disk, DiskError, DiskOp, SegmentSeq};
use crate::log::{Log, LogError, fold_appends};
use crate::raft::types::{Fetch, Persist};
use crate::reactor::context::{CoreContext, Input, MeshMessage};
use crate::reactor::disk::DmaDisk;
use crate::reactor::peer::{PeerLink, encode_frame};
use crate::reactor::shard_api::{ShardCore, ShardOutput, WalTicket};
use crate::reactor::snapshots::{SnapshotJob, Snapshots};
use crate::wire::FrameHeader;
use crate::wire::client::{ClientResponse, encode_response};

/// Exit status of a process whose WAL failed (DESIGN §6: crash and recover).
pub const EXIT_WAL_FAILED: i32 = 3;

/// Work for the WAL task, in order.
pub enum WalJob {
    Append(WalTicket, Vec<(GroupId, Persist)>),
    Fetch(GroupId, Fetch),
    /// The group's entries up to the index are folded into a snapshot the core keeps.
    Compact(GroupId, LogIndex),
}

/// The queue of the WAL task and the count of appends not yet durable.
pub struct WalQueue {
    jobs: RefCell<VecDeque<WalJob>>,
    doorbell: glommio::channels::local_channel::LocalSender<()>,
    appends_pending: Cell<usize>,
}

impl WalQueue {
    pub fn new() -> (Rc<WalQueue>, LocalReceiver<()>) {
        let (doorbell, ring) = glommio::channels::local_channel::new_bounded(1);
        let queue = WalQueue {
            jobs: RefCell::new(VecDeque::new()),
            doorbell,
            appends_pending: Cell::new(0),
        };
        (Rc::new(queue), ring)
    }

    fn push(&self, job: WalJob) {
        if matches!(job, WalJob::Append(..)) {
            self.appends_pending.set(self.appends_pending.get() + 1);
        }
        self.jobs.borrow_mut().push_back(job);
        let _ = self.doorbell.try_send(());
    }

    fn is_idle(&self) -> bool {
        self.appends_pending.get() == 0
    }

    /// Wakes the WAL task with no job (a spare segment it is creating is ready).
    fn ring(&self) {
        let _ = self.doorbell.try_send(());
    }
}

/// A spare segment the WAL task creates beside its appends: zero-filling 64 MiB takes tens
/// of milliseconds, which appends queued behind it would otherwise wait for.
struct SpareFill {
    seq: SegmentSeq,
    task: glommio::task::JoinHandle<Result<(), DiskError>>,
    done: Rc<Cell<bool>>,
}

impl SpareFill {
    /// Starts creating the spare `log` reserves, if one is short.
    fn start(log: &mut Log<Rc<DmaDisk>>, queue: &Rc<WalQueue>) -> Option<SpareFill> {
        let (seq, size_bytes) = log.reserve_spare()?;
        let disk = Rc::clone(log.disk());
        let done = Rc::new(Cell::new(false));
        let (done_flag, queue) = (Rc::clone(&done), Rc::clone(queue));
        let task = glommio::spawn_local(async move {
            let created = disk.create_segment(seq, size_bytes).await;
            done_flag.set(true);
            queue.ring();
            created
        })
        .detach();
        Some(SpareFill { seq, task, done })
    }

    /// Waits for the creation to end and makes the segment a ready spare.
    async fn adopt(self, log: &mut Log<Rc<DmaDisk>>) {
        let created = self.task.await.unwrap_or_else(|| {
            Err(DiskError::new(
                DiskOp::Create,
                Some(self.seq),
                "the creating task was cancelled",
            ))
        });
        if let Err(error) = log.adopt_spare(self.seq, created).await {
            wal_failed("create a spare segment", &error);
        }
    }
}

/// Runs the WAL: appends (the ones queued together folded into one write and sync) and
/// fetches, one at a time, in order.
pub async fn run_wal(
    context: Rc<CoreContext>,
    mut log: Log<Rc<DmaDisk>>,
    queue: Rc<WalQueue>,
    ring: LocalReceiver<()>,
) {
    let mut purge_wanted = false;
    let mut filling: Option<SpareFill> = None;
    while ring.recv().await.is_some() {
        if let Some(fill) = filling.take_if(|fill| fill.done.get()) {
            fill.adopt(&mut log).await;
        }
        loop {
            let job = queue.jobs.borrow_mut().pop_front();
            let Some(job) = job else { break };
            match job {
                WalJob::Append(ticket, mut persists) => {
                    // Group commit across rounds: appends queued behind the last sync go
                    // out together, as one write and one sync.
                    let mut tickets = vec![ticket];
                    loop {
                        let mut jobs = queue.jobs.borrow_mut();
                        if !matches!(jobs.front(), Some(WalJob::Append(..))) {
                            break;
                        }
                        let Some(WalJob::Append(next_ticket, next)) = jobs.pop_front() else {
                            break;
                        };
                        match fold_appends(&mut persists, next) {
                            Ok(()) => tickets.push(next_ticket),
                            Err(next) => {
                                jobs.push_front(WalJob::Append(next_ticket, next));
                                break;
                            }
                        }
                    }
                    let batch: Vec<(GroupId, &Persist)> = persists
                        .iter()
                        .map(|(group, persist)| (*group, persist))
                        .collect();
                    loop {
                        match log.append(&batch).await {
                            Ok(_) => break,
                            // Rare: the appends used up every ready spare while the next
                            // was being created. Nothing was written; wait for it.
                            Err(LogError::SpareNotReady { .. }) if filling.is_some() => {
                                if let Some(fill) = filling.take() {
                                    fill.adopt(&mut log).await;
                                }
                            }
                            Err(error) => wal_failed("append", &error),
                        }
                    }
                    queue
                        .appends_pending
                        .set(queue.appends_pending.get() - tickets.len());
                    for ticket in tickets {
                        context.push(Input::WalDurable(ticket));
                    }
                }
                WalJob::Fetch(group, fetch) => match log.fetch_for(group, &fetch).await {
                    Ok(entries) => context.push(Input::Fetched(group, entries)),
                    Err(error) => wal_failed("read back", &error),
                },
                WalJob::Compact(group, index) => {
                    log.compact(group, index);
                    purge_wanted = true;
                }
            }
        }
        // Off the latency path: nothing else is queued. Segments holding only compacted
        // entries are recycled into spares or removed. Not while a spare is being created:
        // the states purge may append again could need it.
        if purge_wanted && filling.is_none() && queue.jobs.borrow().is_empty() {
            purge_wanted = false;
            match log.release_freed().await {
                Ok(0) => {}
                Ok(freed) => tracing::debug!(freed, "WAL segments freed after compaction"),
                Err(error) => wal_failed("purge", &error),
            }
        }
        // Beside the appends: one spare at a time is created by its own task.
        if filling.is_none() {
            filling = SpareFill::start(&mut log, &queue);
        }
    }
}

fn wal_failed(what: &str, error: &dyn std::fmt::Display) -> ! {
    tracing::error!(%error,
        "WAL {what} failed: stopping the node; check the disk and restart it (recovery trusts only checksummed records)");
    std::process::exit(EXIT_WAL_FAILED);
}

/// Feeds elapsed ticks to the shard, from `Instant` deadlines, and the stop request.
pub async fn run_ticks(context: Rc<CoreContext>, tick: Duration) {
    let start = Instant::now();
    let tick_nanos = tick.as_nanos().max(1);
    let mut ticks_done: u128 = 0;
    let mut stop_sent = false;
    loop {
        let next = start + tick.mul_f64((ticks_done + 1) as f64);
        let now = Instant::now();
        if next > now {
            glommio::timer::sleep(next - now).await;
        }
        let due = Instant::now().duration_since(start).as_nanos() / tick_nanos;
        let elapsed = due.saturating_sub(ticks_done);
        ticks_done = due;
        let fed = u32::try_from(elapsed)
            .unwrap_or(u32::MAX)
            .min(TICKS_PER_WAKE_MAX);
        if fed > 0 {
            context.push(Input::Ticks(fed));
        }
        if !stop_sent && crate::reactor::signals::stop_requested() {
            stop_sent = true;
            context.push(Input::Stop);
        }
    }
}

/// Receives what other cores send this one.
pub async fn run_mesh_receiver(
    context: Rc<CoreContext>,
    receiver: glommio::channels::shared_channel::ConnectedReceiver<MeshMessage>,
    on_peer_connection: Rc<dyn Fn(std::os::fd::RawFd, crate::reactor::peer::Hello)>,
) {
    while let Some(message) = receiver.recv().await {
        match message {
            MeshMessage::ClientRequest { origin, payload } => {
                match crate::wire::client::decode_request(&payload) {
                    Ok(request) => {
                        context.push(Input::Client(origin, request, bytes::Bytes::from(payload)));
                    }
                    Err((_, error)) => tracing::error!(
                        %error, "a forwarded request no longer decodes (a bug; please report it)"),
                }
            }
            MeshMessage::Reply { connection, frame } => context.deliver(connection, frame, true),
            MeshMessage::PeerConnection { fd, hello } => on_peer_connection(fd, hello),
        }
    }
}

/// Everything the driver loop sends through.
pub struct DriverLinks {
    /// Indexed by peer node.
    pub peers: HashMap<NodeId, Rc<PeerLink>>,
    pub wal: Rc<WalQueue>,
    pub snapshots: Rc<Snapshots>,
}

/// The driver loop: returns once a stop was requested, the shard has drained (or the drain
/// deadline passed) and no WAL append is pending.
pub async fn run_driver<S: ShardCore>(
    context: Rc<CoreContext>,
    mut shard: S,
    links: DriverLinks,
    ring: LocalReceiver<()>,
) {
    let mut out = ShardOutput::default();
    let mut builder = FlatBufferBuilder::new();
    let mut stop_deadline: Option<Instant> = None;
    // While stopping: when a peer last forwarded a request here.
    let mut last_forward_in: Option<Instant> = None;
    while ring.recv().await.is_some() {
        let mut ticked = false;
        for input in context.take_inputs() {
            match input {
                Input::Ticks(count) => {
                    ticked = true;
                    for _ in 0..count {
                        shard.tick();
                    }
                }
                Input::Peer(mut batch, permit) => {
                    let from = batch.from;
                    if stop_deadline.is_some() && !batch.forwards.is_empty() {
                        last_forward_in = Some(Instant::now());
                    }
                    // Snapshot data goes to the snapshot tasks, checked here since the shard's
                    // own check (in `step_batch`) no longer sees it; the rest to the shard.
                    let has_snapshot_items =
                        !batch.snapshot_chunks.is_empty() || !batch.snapshot_acks.is_empty();
                    if has_snapshot_items && let Err(error) = batch.validate() {
                        tracing::warn!(peer = %from, %error, "batch from a peer refused");
                        continue;
                    }
                    for chunk in batch.snapshot_chunks.drain(..) {
                        links.snapshots.handle(SnapshotJob::Chunk(from, chunk));
                    }
                    for ack in batch.snapshot_acks.drain(..) {
                        links.snapshots.handle(SnapshotJob::Ack(from, ack));
                    }
                    if let Err(error) = shard.on_peer_batch(batch) {
                        tracing::warn!(peer = %from,
                            %error, "batch from a peer refused");
                    }
                    drop(permit);
                }
                Input::Client(origin, request, raw) => {
                    shard.on_client_request(origin, request, raw)
                }
                Input::WalDurable(ticket) => shard.on_wal_durable(ticket),
                Input::Fetched(group, entries) => shard.on_fetched(group, entries),
                Input::SnapshotChunkWritten(id) => shard.on_snapshot_chunk_written(id),
                Input::SnapshotWritten(id, result) => shard.on_snapshot_written(id, result),
                Input::SnapshotStaged(group, offer, machine) => {
                    shard.on_snapshot_staged(group, offer, machine)
                }
                Input::SnapshotSent(group, to, status) => shard.on_snapshot_sent(group, to, status),
                Input::Stop => {
                    tracing::info!(
                        "stop requested: handing over leaderships, finishing WAL writes"
                    );
                    context.set_stopping();
                    shard.begin_shutdown();
                    stop_deadline = Some(Instant::now() + Duration::from_millis(SHUTDOWN_DRAIN_MS));
                }
            }
        }
        loop {
            out.clear();
            shard.round(&mut out);
            dispatch(&context, &links, &mut builder, &mut out);
            if !shard.has_work() {
                break;
            }
            glommio::yield_if_needed().await;
        }
        if ticked {
            publish_status(&context, &shard);
        }
        if let Some(deadline) = stop_deadline {
            // Requests already accepted are answered before the core stops (a write waits
            // until it applies here, under the new leader too), so no client is left with a
            // closed connection and an unknown outcome.
            let forwards_quiet = last_forward_in
                .is_none_or(|at| at.elapsed() >= Duration::from_millis(SHUTDOWN_FORWARD_QUIET_MS));
            let drained = shard.is_drained() && shard.in_flight_count() == 0 && forwards_quiet;
            if (drained || Instant::now() >= deadline) && links.wal.is_idle() {
                if !drained {
                    log_undrained(&shard);
                }
                tracing::info!("core stopped");
                return;
            }
        }
    }
}

/// The drain deadline passed: names what is left, so the operator knows what follows.
fn log_undrained<S: ShardCore>(shard: &S) {
    for group in shard.status() {
        if group.role == crate::raft::RoleKind::Leader {
            tracing::warn!(group = %group.group, term = %group.term,
                "stopping while still leading the group (drain deadline passed): its other \
                 nodes elect a leader after an election timeout; check they run (`ringraft status`)");
        }
    }
    let in_flight = shard.in_flight_count();
    if in_flight == 0 {
        return;
    }
    tracing::warn!(
        in_flight,
        "stopping with client requests unanswered (drain deadline passed): their clients \
         see the connection close and must check whether their writes took effect"
    );
}

/// Carries out one round's output.
fn dispatch(
    context: &CoreContext,
    links: &DriverLinks,
    builder: &mut FlatBufferBuilder<'static>,
    out: &mut ShardOutput,
) {
    crate::reactor::events::log_events(&mut out.events);
    for batch in out.batches.drain(..) {
        match links.peers.get(&batch.to) {
            Some(link) => link.send(encode_frame(builder, &batch, context.core)),
            None => tracing::error!(peer = %batch.to,
                "the shard addressed a node that is not in --peers (a bug; please report it)"),
        }
    }
    for (group, index) in out.wal_compactions.drain(..) {
        links.wal.push(WalJob::Compact(group, index));
    }
    for write in out.snapshot_writes.drain(..) {
        links.snapshots.handle(SnapshotJob::Write(write));
    }
    for (group, offer) in out.snapshot_offers.drain(..) {
        links.snapshots.handle(SnapshotJob::Offer(group, offer));
    }
    if let Some((ticket, persists)) = out.wal_append.take() {
        links.wal.push(WalJob::Append(ticket, persists));
    }
    for (group, fetch) in out.fetches.drain(..) {
        links.wal.push(WalJob::Fetch(group, fetch));
    }
    for (origin, response) in out.replies.drain(..) {
        let frame = response_frame(builder, &response);
        if origin.core == context.core {
            context.deliver(origin.connection, frame, true);
        } else {
            context.send_to_core(
                origin.core,
                MeshMessage::Reply {
                    connection: origin.connection,
                    frame,
                },
            );
        }
    }
}

/// A response as one frame (header and payload).
pub fn response_frame(
    builder: &mut FlatBufferBuilder<'static>,
    response: &ClientResponse,
) -> Vec<u8> {
    let payload = encode_response(builder, response);
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&FrameHeader::encode(payload.len()));
    frame.extend_from_slice(payload);
    frame
}

/// Publishes the groups' status for `Status` requests (the shard logs leader changes).
fn publish_status<S: ShardCore>(context: &CoreContext, shard: &S) {
    context.board.publish(context.core, shard.status());
}

//! Scripted interaction tests of the pure Raft core with golden transcripts, in the style of
//! etcd-io/raft's datadriven tests. Each file in `tests/testdata/raft/` is a script of
//! commands, each followed by `----` and the transcript of what the nodes did (messages
//! sent, state persisted, entries applied, roles taken). The harness replays the commands
//! against real `RaftNode`s over an in-memory, step-by-step controlled network and disk, and
//! compares. `RINGRAFT_BLESS=1 cargo test --release --test raft_interaction` rewrites the
//! transcripts; read every changed one before committing it.
//!
//! This file owns the script language and the harness. It must not reach into the core
//! beyond its public API, and it must not decide anything the core should.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ringraft::ids::{EntryId, GroupId, LogIndex, NodeId, Ticks};
use ringraft::prng::Prng;
use ringraft::raft::{
    AppendResponse, Entry, EntryKind, HardState, Membership, Message, MessageBody, Persist,
    RaftConfig, RaftNode, ReadContext, Ready, RestoredState, SnapshotMeta, SnapshotStatus,
};

/// One command of a script, with the transcript it is expected to produce.
struct Case {
    /// Comment lines (with their `#`) and blank lines that precede the command.
    preamble: Vec<String>,
    command: String,
    /// Line number of the command, for failure messages.
    line: usize,
    expected: Vec<String>,
}

fn parse_script(path: &Path, text: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut preamble = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((number, line)) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            preamble.push(line.to_string());
            continue;
        }
        let separator = lines.next().map(|(_, l)| l);
        assert_eq!(
            separator,
            Some("----"),
            "{}:{}: command {line:?} must be followed by a line '----'",
            path.display(),
            number + 1
        );
        let mut expected = Vec::new();
        while let Some((_, output)) = lines.peek() {
            if output.trim().is_empty() {
                break;
            }
            expected.push(output.to_string());
            lines.next();
        }
        cases.push(Case {
            preamble: std::mem::take(&mut preamble),
            command: line.to_string(),
            line: number + 1,
            expected,
        });
    }
    cases
}

fn render_script(cases: &[Case], outputs: &[Vec<String>]) -> String {
    let mut text = String::new();
    for (case, output) in cases.iter().zip(outputs) {
        for line in &case.preamble {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(&case.command);
        text.push_str("\n----\n");
        for line in output {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// What the in-memory disk of one test node holds: a snapshot (its state machine data is
/// implied: the harness checks only the log) and the entries after it.
#[derive(Default)]
struct TestDisk {
    hard_state: HardState,
    snapshot: Option<SnapshotMeta>,
    /// Entries after the snapshot: the first one has index `snapshot_index() + 1`.
    entries: Vec<Entry>,
}

impl TestDisk {
    fn snapshot_index(&self) -> LogIndex {
        self.snapshot
            .as_ref()
            .map_or(LogIndex::ZERO, |snapshot| snapshot.last.index)
    }

    fn last_index(&self) -> LogIndex {
        self.snapshot_index().plus(self.entries.len() as u64)
    }

    fn last_id(&self) -> EntryId {
        match (self.entries.last(), &self.snapshot) {
            (Some(entry), _) => entry.id,
            (None, Some(snapshot)) => snapshot.last,
            (None, None) => EntryId::ZERO,
        }
    }

    /// Position in `entries` of entry `index` (which must be after the snapshot).
    fn position(&self, index: LogIndex) -> usize {
        (index.get() - self.snapshot_index().get() - 1) as usize
    }

    /// Thesis §5.1: entries after the snapshot stay if the log holds its last entry.
    fn set_snapshot(&mut self, snapshot: &SnapshotMeta) {
        let last = snapshot.last;
        let holds_last = last.index > self.snapshot_index()
            && last.index <= self.last_index()
            && self.entries[self.position(last.index)].id == last;
        if holds_last {
            let through = self.position(last.index) + 1;
            self.entries.drain(..through);
        } else {
            self.entries.clear();
        }
        self.snapshot = Some(snapshot.clone());
    }

    fn write(&mut self, persist: &Persist) {
        if let Some(snapshot) = &persist.snapshot {
            self.set_snapshot(snapshot);
        }
        if let Some(first) = persist.entries.first() {
            assert!(
                first.index() > self.snapshot_index() && first.index() <= self.last_index().next(),
                "write at {} leaves a gap after {} (or lands in the snapshot)",
                first.index(),
                self.last_index()
            );
            let keep = self.position(first.index());
            self.entries.truncate(keep);
            self.entries.extend(persist.entries.iter().cloned());
        }
        if let Some(hard_state) = persist.hard_state {
            self.hard_state = hard_state;
        }
    }

    fn term_runs(&self) -> Vec<EntryId> {
        let mut runs: Vec<EntryId> = Vec::new();
        for entry in &self.entries {
            if runs.last().is_none_or(|run| run.term != entry.term()) {
                runs.push(entry.id);
            }
        }
        runs
    }
}

struct TestNode {
    raft: RaftNode,
    config: RaftConfig,
    disk: TestDisk,
    /// Writes handed out by `Ready` and not yet synced, with the messages waiting on them.
    pending: Vec<(Option<Persist>, Vec<Message>)>,
    applied: LogIndex,
    restarts: u64,
}

/// The world of one script: nodes of one group, the messages in flight, the cut links.
struct Env {
    nodes: BTreeMap<NodeId, TestNode>,
    membership: Membership,
    in_flight: Vec<Message>,
    blocked: HashSet<(NodeId, NodeId)>,
}

type Output = Vec<String>;

impl Env {
    fn new() -> Env {
        Env {
            nodes: BTreeMap::new(),
            membership: Membership::default(),
            in_flight: Vec::new(),
            blocked: HashSet::new(),
        }
    }

    fn run(&mut self, command: &str) -> Result<Output, String> {
        let mut words = command.split_whitespace();
        let name = words.next().ok_or("empty command")?;
        let args: Vec<&str> = words.collect();
        let mut out = Output::new();
        match name {
            "add-nodes" => self.add_nodes(&args, &mut out)?,
            "campaign" => {
                let id = self.node_arg(&args, 0)?;
                self.node(id)?.raft.campaign();
                out.push("ok".into());
            }
            "tick" => {
                let id = self.node_arg(&args, 0)?;
                let count: u32 = named_or(&args, 1, 1)?;
                for _ in 0..count {
                    self.node(id)?.raft.tick();
                }
                out.push("ok".into());
            }
            "tick-heartbeat" => {
                let id = self.node_arg(&args, 0)?;
                let node = self.node(id)?;
                for _ in 0..node.config.heartbeat_interval_ticks.get() {
                    node.raft.tick();
                }
                out.push("ok".into());
            }
            "tick-election" => self.tick_election(&args, &mut out)?,
            "propose" => {
                let id = self.node_arg(&args, 0)?;
                let data = args.get(1).ok_or("propose ID DATA")?;
                match self.node(id)?.raft.propose(Bytes::from(data.to_string())) {
                    Ok(entry) => out.push(format!("ok: {entry}")),
                    Err(error) => out.push(format!("refused: {error}")),
                }
            }
            "read-index" => {
                let id = self.node_arg(&args, 0)?;
                let context: u64 = named_or(&args, 1, 0)?;
                match self.node(id)?.raft.read_index(ReadContext(context)) {
                    Ok(()) => out.push("ok".into()),
                    Err(error) => out.push(format!("refused: {error}")),
                }
            }
            "transfer-leader" => {
                let id = self.node_arg(&args, 0)?;
                let target = self.node_arg(&args, 1)?;
                match self.node(id)?.raft.transfer_leader(target) {
                    Ok(()) => out.push("ok".into()),
                    Err(error) => out.push(format!("refused: {error}")),
                }
            }
            "process-ready" => {
                for id in self.node_list(&args)? {
                    self.process_ready(id, &mut out)?;
                }
            }
            "persist" => {
                let writes = option(&args, "writes")?.map_or(usize::MAX, |n| n as usize);
                for id in self.node_list(&args)? {
                    self.persist(id, writes, &mut out)?;
                }
            }
            "deliver-msgs" => {
                let limit = option(&args, "limit")?.map_or(usize::MAX, |n| n as usize);
                for id in self.node_list(&args)? {
                    self.deliver(id, limit, &mut out)?;
                }
            }
            "drop-msgs" => self.drop_messages(&args, &mut out)?,
            "duplicate-msgs" => self.duplicate_messages(&args, &mut out)?,
            "delay-msgs" => self.delay_messages(&args, &mut out)?,
            "stabilize" => self.stabilize(&args, &mut out)?,
            "partition" => self.partition(&args, &mut out)?,
            "heal" => {
                self.blocked.clear();
                out.push("ok".into());
            }
            "restart" => self.restart(&args, &mut out)?,
            "status" => {
                for id in self.node_list(&args)? {
                    self.status(id, &mut out)?;
                }
            }
            "compact" => {
                let id = self.node_arg(&args, 0)?;
                let index: u64 = named_or(&args, 1, 0)?;
                let node = self.node(id)?;
                match node.raft.compact(LogIndex(index)) {
                    Ok(()) => {
                        // The caller's snapshot is durable before it compacts.
                        if let Some(snapshot) = node.raft.snapshot()
                            && snapshot.last.index > node.disk.snapshot_index()
                        {
                            node.disk.set_snapshot(&snapshot);
                        }
                        let snapshot = node
                            .raft
                            .snapshot()
                            .map_or_else(|| "none".to_string(), |s| s.last.to_string());
                        out.push(format!("{id}: snapshot at {snapshot}"));
                    }
                    Err(error) => out.push(format!("refused: {error}")),
                }
            }
            "report-snapshot" => {
                let id = self.node_arg(&args, 0)?;
                let to = self.node_arg(&args, 1)?;
                let status = match args.get(2).copied() {
                    Some("finished") => SnapshotStatus::Finished,
                    Some("failed") => SnapshotStatus::Failed,
                    other => {
                        return Err(format!("report-snapshot ID TO finished|failed: {other:?}"));
                    }
                };
                self.node(id)?.raft.report_snapshot(to, status);
                out.push("ok".into());
            }
            "raft-log" => {
                let id = self.node_arg(&args, 0)?;
                let node = self.node(id)?;
                let hard_state = node.disk.hard_state;
                out.push(format!("{id}: durable {}", show_hard_state(hard_state)));
                if let Some(snapshot) = &node.disk.snapshot {
                    out.push(format!("  snapshot last={}", snapshot.last));
                }
                for entry in &node.disk.entries {
                    out.push(format!("  {}", show_entry(entry)));
                }
            }
            other => return Err(format!("unknown command {other:?}")),
        }
        if out.is_empty() {
            out.push("ok".into());
        }
        Ok(out)
    }

    fn add_nodes(&mut self, args: &[&str], out: &mut Output) -> Result<(), String> {
        let count: u64 = args
            .first()
            .ok_or("add-nodes COUNT [options]")?
            .parse()
            .map_err(|_| "add-nodes: COUNT must be a number")?;
        let first = self.nodes.len() as u64 + 1;
        let ids: Vec<NodeId> = (first..first + count).map(NodeId).collect();
        self.membership = Membership::new(ids.clone());
        for &id in &ids {
            let mut config = RaftConfig::new(id, GroupId(1));
            config.pre_vote = flag(args, "pre-vote")?.unwrap_or(false);
            config.check_quorum = flag(args, "check-quorum")?.unwrap_or(false);
            if let Some(ticks) = option(args, "election")? {
                config.election_timeout_ticks = Ticks(ticks as u32);
            }
            if let Some(ticks) = option(args, "heartbeat")? {
                config.heartbeat_interval_ticks = Ticks(ticks as u32);
            }
            if let Some(entries) = option(args, "append-entries-max")? {
                config.append_entries_max = entries as usize;
            }
            let restored = RestoredState::bootstrap(self.membership.clone());
            let raft = RaftNode::new(config.clone(), restored, Prng::new(id.get()));
            self.nodes.insert(
                id,
                TestNode {
                    raft,
                    config,
                    disk: TestDisk::default(),
                    pending: Vec::new(),
                    applied: LogIndex::ZERO,
                    restarts: 0,
                },
            );
        }
        let names: Vec<String> = ids.iter().map(ToString::to_string).collect();
        out.push(format!("added nodes {}", names.join(" ")));
        Ok(())
    }

    /// Tick until the node's role changes, at most twice the election timeout (the drawn
    /// timeout is below that, §5.2), and report what it became.
    fn tick_election(&mut self, args: &[&str], out: &mut Output) -> Result<(), String> {
        let id = self.node_arg(args, 0)?;
        let node = self.node(id)?;
        let before = node.raft.status().role;
        let limit = 2 * node.config.election_timeout_ticks.get();
        for _ in 0..limit {
            node.raft.tick();
            if node.raft.status().role != before {
                break;
            }
        }
        let status = node.raft.status();
        out.push(format!("{id}: {:?} term {}", status.role, status.term));
        Ok(())
    }

    /// Handle one `Ready`: messages go on the wire now, the write and the messages waiting
    /// for it go to the disk queue, committed entries are applied at once.
    fn process_ready(&mut self, id: NodeId, out: &mut Output) -> Result<bool, String> {
        let node = self.node(id)?;
        if !node.raft.has_ready() {
            return Ok(false);
        }
        let ready = node.raft.ready();
        let Ready {
            soft_state,
            persist,
            messages,
            messages_after_persist,
            committed_entries,
            read_states,
            fetch,
        } = ready;
        out.push(format!("{id}: Ready"));
        let lines_before = out.len();
        if let Some(soft) = soft_state {
            let leader = soft
                .leader
                .map_or_else(|| "none".to_string(), |leader| leader.to_string());
            out.push(format!(
                "  role: {:?} term={} leader={leader}",
                soft.role, soft.term
            ));
        }
        if let Some(persist) = &persist {
            out.push(format!("  persist #{}:", persist.position.0));
            if let Some(snapshot) = &persist.snapshot {
                out.push(format!("    snapshot last={}", snapshot.last));
            }
            if let Some(hard_state) = persist.hard_state {
                out.push(format!("    {}", show_hard_state(hard_state)));
            }
            for entry in &persist.entries {
                out.push(format!("    {}", show_entry(entry)));
            }
        }
        for message in &messages {
            out.push(format!("  send: {}", show_message(message)));
        }
        for message in &messages_after_persist {
            out.push(format!("  send after persist: {}", show_message(message)));
        }
        for entry in &committed_entries {
            out.push(format!("  apply: {}", show_entry(entry)));
        }
        for read in &read_states {
            out.push(format!(
                "  read state: context={} index={}",
                read.context.0, read.index
            ));
        }
        if persist.is_some() || !messages_after_persist.is_empty() {
            node.pending.push((persist, messages_after_persist));
        }
        if let Some(last) = committed_entries.last() {
            node.applied = last.index();
            node.raft.on_applied(last.index());
        }
        if let Some(fetch) = fetch {
            let offset = node.disk.snapshot_index().get();
            let from = fetch.first.get().saturating_sub(offset + 1) as usize;
            let to =
                (fetch.last.get().saturating_sub(offset) as usize).min(node.disk.entries.len());
            let entries = node.disk.entries.get(from..to).unwrap_or_default().to_vec();
            out.push(format!(
                "  fetch [{}, {}]: read {} entries from disk",
                fetch.first,
                fetch.last,
                entries.len()
            ));
            node.raft.on_fetched(entries);
        }
        if out.len() == lines_before {
            out.push("  (empty)".into());
        }
        self.in_flight.extend(messages);
        Ok(true)
    }

    /// Sync the oldest `writes` pending writes of a node, tell the core, and release the
    /// messages held for them.
    fn persist(&mut self, id: NodeId, writes: usize, out: &mut Output) -> Result<bool, String> {
        let node = self.node(id)?;
        if node.pending.is_empty() {
            return Ok(false);
        }
        let mut position = None;
        let mut released = Vec::new();
        let count = writes.min(node.pending.len());
        for (persist, messages) in node.pending.drain(..count) {
            if let Some(persist) = persist {
                node.disk.write(&persist);
                position = Some(persist.position);
            }
            released.extend(messages);
        }
        let last = node.disk.last_id();
        match position {
            Some(position) => {
                out.push(format!(
                    "{id}: synced to #{} (log ends at {last})",
                    position.0
                ));
                node.raft.on_persisted(position);
            }
            None => out.push(format!("{id}: synced (nothing new)")),
        }
        for message in &released {
            out.push(format!("  release: {}", show_message(message)));
        }
        self.in_flight.extend(released);
        Ok(true)
    }

    /// Step the first `limit` in-flight messages addressed to `id`, in send order; cut links
    /// drop them.
    fn deliver(&mut self, id: NodeId, limit: usize, out: &mut Output) -> Result<bool, String> {
        let mut mine = Vec::new();
        let mut rest = Vec::new();
        for message in std::mem::take(&mut self.in_flight) {
            if message.to == id && mine.len() < limit {
                mine.push(message);
            } else {
                rest.push(message);
            }
        }
        self.in_flight = rest;
        if mine.is_empty() {
            return Ok(false);
        }
        out.push(format!("{id}: receive"));
        for message in mine {
            if self.blocked.contains(&(message.from, message.to)) {
                out.push(format!("  dropped (partition): {}", show_message(&message)));
                continue;
            }
            let shown = show_message(&message);
            match self.node(id)?.raft.step(message) {
                Ok(()) => out.push(format!("  {shown}")),
                Err(error) => out.push(format!("  {shown}: refused: {error}")),
            }
        }
        Ok(true)
    }

    fn drop_messages(&mut self, args: &[&str], out: &mut Output) -> Result<(), String> {
        let from = option(args, "from")?.map(NodeId);
        let to = option(args, "to")?.map(NodeId);
        let (dropped, kept): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|m| from.is_none_or(|f| m.from == f) && to.is_none_or(|t| m.to == t));
        self.in_flight = kept;
        for message in &dropped {
            out.push(format!("dropped: {}", show_message(message)));
        }
        Ok(())
    }

    /// The network delivers a message twice: copy matching in-flight messages.
    fn duplicate_messages(&mut self, args: &[&str], out: &mut Output) -> Result<(), String> {
        let from = option(args, "from")?.map(NodeId);
        let to = option(args, "to")?.map(NodeId);
        let copies: Vec<Message> = self
            .in_flight
            .iter()
            .filter(|m| from.is_none_or(|f| m.from == f) && to.is_none_or(|t| m.to == t))
            .cloned()
            .collect();
        for message in &copies {
            out.push(format!("duplicated: {}", show_message(message)));
        }
        self.in_flight.extend(copies);
        Ok(())
    }

    /// The network delays messages: the first `count` matching in-flight messages move
    /// behind every other one.
    fn delay_messages(&mut self, args: &[&str], out: &mut Output) -> Result<(), String> {
        let from = option(args, "from")?.map(NodeId);
        let to = option(args, "to")?.map(NodeId);
        let count = option(args, "count")?.map_or(usize::MAX, |n| n as usize);
        let mut delayed = Vec::new();
        let mut kept = Vec::new();
        for message in std::mem::take(&mut self.in_flight) {
            let matches =
                from.is_none_or(|f| message.from == f) && to.is_none_or(|t| message.to == t);
            if matches && delayed.len() < count {
                delayed.push(message);
            } else {
                kept.push(message);
            }
        }
        for message in &delayed {
            out.push(format!("delayed: {}", show_message(message)));
        }
        kept.extend(delayed);
        self.in_flight = kept;
        Ok(())
    }

    /// Run every node's Ready, sync and delivery until nothing moves (etcd's `stabilize`).
    fn stabilize(&mut self, args: &[&str], out: &mut Output) -> Result<(), String> {
        let ids = self.node_list(args)?;
        for _ in 0..100 {
            let mut moved = false;
            for &id in &ids {
                moved |= self.process_ready(id, out)?;
            }
            for &id in &ids {
                moved |= self.persist(id, usize::MAX, out)?;
            }
            for &id in &ids {
                moved |= self.deliver(id, usize::MAX, out)?;
            }
            if !moved {
                return Ok(());
            }
        }
        Err("stabilize: still moving after 100 rounds".into())
    }

    /// `partition 1 / 2 3`: cut every link between the two sides, both ways.
    fn partition(&mut self, args: &[&str], out: &mut Output) -> Result<(), String> {
        let split = args
            .iter()
            .position(|&a| a == "/")
            .ok_or("partition A.. / B..")?;
        let parse = |side: &[&str]| -> Result<Vec<NodeId>, String> {
            side.iter()
                .map(|a| a.parse().map(NodeId).map_err(|_| format!("bad node {a:?}")))
                .collect()
        };
        let left = parse(&args[..split])?;
        let right = parse(&args[split + 1..])?;
        for &a in &left {
            for &b in &right {
                self.blocked.insert((a, b));
                self.blocked.insert((b, a));
            }
        }
        out.push("ok".into());
        Ok(())
    }

    /// Crash a node (unsynced writes and held messages are lost) and rebuild it from its
    /// durable log alone; its state machine starts empty.
    fn restart(&mut self, args: &[&str], out: &mut Output) -> Result<(), String> {
        let id = self.node_arg(args, 0)?;
        let membership = self.membership.clone();
        let node = self.node(id)?;
        let lost = node.pending.len();
        node.pending.clear();
        node.restarts += 1;
        // The state machine restarts from the snapshot, if any.
        let restored = RestoredState {
            hard_state: node.disk.hard_state,
            membership,
            snapshot: node.disk.snapshot.clone(),
            term_runs: node.disk.term_runs(),
            last_index: node.disk.last_index(),
            applied: node.disk.snapshot_index(),
            vote_floor: LogIndex::ZERO,
        };
        let prng = Prng::new(id.get() + 1000 * node.restarts);
        node.raft = RaftNode::new(node.config.clone(), restored, prng);
        node.applied = node.disk.snapshot_index();
        let from_snapshot = node
            .disk
            .snapshot
            .as_ref()
            .map_or_else(String::new, |s| format!(" and snapshot {}", s.last));
        out.push(format!(
            "{id}: restarted from {}{from_snapshot} (lost {lost} unsynced writes)",
            show_hard_state(node.disk.hard_state)
        ));
        Ok(())
    }

    fn status(&mut self, id: NodeId, out: &mut Output) -> Result<(), String> {
        let node = self.node(id)?;
        let status = node.raft.status();
        let leader = status
            .leader
            .map_or_else(|| "none".to_string(), |leader| leader.to_string());
        let compacted = if status.compacted > LogIndex::ZERO {
            format!(" compacted={}", status.compacted)
        } else {
            String::new()
        };
        out.push(format!(
            "{id}: {:?} term={} leader={leader} last={} commit={} applied={} persisted={}{compacted}",
            status.role, status.term, status.last, status.commit, status.applied, status.persisted
        ));
        Ok(())
    }

    fn node(&mut self, id: NodeId) -> Result<&mut TestNode, String> {
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| format!("no node {id}"))
    }

    fn node_arg(&self, args: &[&str], position: usize) -> Result<NodeId, String> {
        let word = args
            .get(position)
            .ok_or_else(|| format!("missing node id at argument {}", position + 1))?;
        word.parse()
            .map(NodeId)
            .map_err(|_| format!("bad node id {word:?}"))
    }

    /// The node ids among `args` (words without `=`), or every node if there are none.
    fn node_list(&self, args: &[&str]) -> Result<Vec<NodeId>, String> {
        let ids: Result<Vec<NodeId>, String> = args
            .iter()
            .filter(|a| !a.contains('='))
            .map(|a| {
                a.parse()
                    .map(NodeId)
                    .map_err(|_| format!("bad node id {a:?}"))
            })
            .collect();
        let ids = ids?;
        if ids.is_empty() {
            return Ok(self.nodes.keys().copied().collect());
        }
        Ok(ids)
    }
}

/// The positional argument at `position`, or `default` if absent.
fn named_or<T: std::str::FromStr>(args: &[&str], position: usize, default: T) -> Result<T, String> {
    match args.get(position) {
        None => Ok(default),
        Some(word) => word.parse().map_err(|_| format!("bad argument {word:?}")),
    }
}

fn option(args: &[&str], key: &str) -> Result<Option<u64>, String> {
    for arg in args {
        if let Some(value) = arg
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
        {
            return value
                .parse()
                .map(Some)
                .map_err(|_| format!("bad value in {arg:?}"));
        }
    }
    Ok(None)
}

fn flag(args: &[&str], key: &str) -> Result<Option<bool>, String> {
    for arg in args {
        if let Some(value) = arg
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
        {
            return value
                .parse()
                .map(Some)
                .map_err(|_| format!("bad value in {arg:?}"));
        }
    }
    Ok(None)
}

fn show_hard_state(hard_state: HardState) -> String {
    let vote = hard_state
        .vote
        .map_or_else(|| "none".to_string(), |vote| vote.to_string());
    format!(
        "hard state term={} vote={vote} commit={}",
        hard_state.term, hard_state.commit
    )
}

fn show_entry(entry: &Entry) -> String {
    match entry.kind {
        EntryKind::Empty => format!("{} empty", entry.id),
        EntryKind::Command => format!("{} {:?}", entry.id, String::from_utf8_lossy(&entry.data)),
        EntryKind::Membership => format!("{} membership", entry.id),
    }
}

fn show_entries(entries: &[Entry]) -> String {
    let shown: Vec<String> = entries.iter().map(show_entry).collect();
    format!("[{}]", shown.join(", "))
}

fn show_message(message: &Message) -> String {
    let body = match &message.body {
        MessageBody::PreVote { last } => format!("PreVote last={last}"),
        MessageBody::PreVoteResponse { granted } => {
            format!("PreVoteResponse {}", grant(*granted))
        }
        MessageBody::Vote {
            last,
            leader_transfer,
        } => {
            let transfer = if *leader_transfer { " transfer" } else { "" };
            format!("Vote last={last}{transfer}")
        }
        MessageBody::VoteResponse { granted } => format!("VoteResponse {}", grant(*granted)),
        MessageBody::Append {
            prev,
            entries,
            commit,
        } => format!(
            "Append prev={prev} commit={commit} entries={}",
            show_entries(entries)
        ),
        MessageBody::AppendResponse(AppendResponse::Accepted { last_index }) => {
            format!("AppendResponse accepted last={last_index}")
        }
        MessageBody::AppendResponse(AppendResponse::Rejected {
            rejected,
            hint,
            lost,
        }) => {
            let lost = if *lost { " lost" } else { "" };
            format!("AppendResponse rejected={rejected} hint={hint}{lost}")
        }
        MessageBody::Heartbeat { commit, read_round } => {
            format!("Heartbeat commit={commit}{}", show_round(*read_round))
        }
        MessageBody::HeartbeatResponse { read_round } => {
            format!("HeartbeatResponse{}", show_round(*read_round))
        }
        MessageBody::ReadIndex { context } => format!("ReadIndex context={}", context.0),
        MessageBody::ReadIndexResponse { context, index } => match index {
            Some(index) => format!("ReadIndexResponse context={} index={index}", context.0),
            None => format!("ReadIndexResponse context={} refused", context.0),
        },
        MessageBody::TimeoutNow => "TimeoutNow".to_string(),
        MessageBody::InstallSnapshot { snapshot } => {
            format!("InstallSnapshot last={}", snapshot.last)
        }
    };
    format!(
        "{}->{} term={} {body}",
        message.from, message.to, message.term
    )
}

fn grant(granted: bool) -> &'static str {
    if granted { "granted" } else { "rejected" }
}

fn show_round(round: Option<u64>) -> String {
    round.map_or_else(String::new, |round| format!(" read-round={round}"))
}

fn testdata_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/raft")
}

/// Run one script; return the differences from its golden transcript (empty when equal),
/// or rewrite it in bless mode.
fn run_script(path: &Path) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    let cases = parse_script(path, &text);
    let mut env = Env::new();
    let mut outputs = Vec::new();
    let mut differences = String::new();
    for case in &cases {
        let output = env
            .run(&case.command)
            .unwrap_or_else(|error| vec![format!("error: {error}")]);
        if output != case.expected {
            let _ = writeln!(
                differences,
                "{}:{}: {}\n--- expected\n{}\n--- actual\n{}\n",
                path.display(),
                case.line,
                case.command,
                case.expected.join("\n"),
                output.join("\n")
            );
        }
        outputs.push(output);
    }
    if std::env::var_os("RINGRAFT_BLESS").is_some() {
        std::fs::write(path, render_script(&cases, &outputs))
            .unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
        return String::new();
    }
    differences
}

#[test]
fn golden_transcripts_match() {
    // Every script under tests/testdata/raft replays to exactly its recorded transcript.
    let mut paths: Vec<PathBuf> = std::fs::read_dir(testdata_dir())
        .expect("tests/testdata/raft exists")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "txt"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 6,
        "expected at least six scripts, found {}",
        paths.len()
    );
    let mut failures = String::new();
    for path in &paths {
        println!("script {}", path.display());
        failures.push_str(&run_script(path));
    }
    assert!(
        failures.is_empty(),
        "transcripts differ (RINGRAFT_BLESS=1 rewrites them; review before committing):\n{failures}"
    );
}

#[test]
fn parser_round_trips_a_script() {
    // A script rendered from its own parse is the same text, so blessing keeps comments.
    let text = "# a comment\n\nstatus 1\n----\n1: Follower\n\n# another\nheal\n----\nok\n";
    let cases = parse_script(Path::new("inline"), text);
    assert_eq!(cases.len(), 2);
    let outputs: Vec<Vec<String>> = cases.iter().map(|case| case.expected.clone()).collect();
    assert_eq!(render_script(&cases, &outputs), text);
}

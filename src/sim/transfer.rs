//! Streaming a snapshot's data in the simulator, as the layer around the Raft core would
//! (thesis §5): the sender splits it into chunks and keeps a bounded window of them in
//! flight, resending those unacknowledged for a while; the receiver stages chunks and
//! acknowledges everything it holds, so a transfer that was cut (lost chunks, a new
//! transfer of the same snapshot after a failure) resumes where it stopped; once every
//! chunk is staged, the receiver steps the leader's `InstallSnapshot`.
//!
//! This module owns the per-transfer state of both ends. It must not send, step or decide
//! when a transfer has failed: the cluster moves the chunks over the simulated network,
//! steps the Raft core and reports to the leader.

use crate::ids::{EntryId, NodeId, Term};
use crate::raft::Message;

use super::storage::SimSnapshot;

/// One chunk of a snapshot's data. Every chunk names the snapshot and carries the leader's
/// offer, so the receiver can stage chunks in any order and step the offer once all are in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub from: NodeId,
    pub to: NodeId,
    pub transfer: u64,
    pub index: u32,
    pub count: u32,
    /// The `InstallSnapshot` the leader's core asked to send.
    pub offer: Message,
    pub data: SimSnapshot,
}

/// The receiver's answer to a chunk: every chunk of that snapshot it holds, as a bitset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkAck {
    pub from: NodeId,
    pub to: NodeId,
    pub transfer: u64,
    pub received: u64,
}

fn full_mask(count: u32) -> u64 {
    assert!(
        count > 0 && count <= 64,
        "transfer: {count} chunks do not fit the acknowledgement bitset"
    );
    if count == 64 {
        u64::MAX
    } else {
        (1u64 << count) - 1
    }
}

/// A snapshot being sent to one node.
#[derive(Debug)]
pub struct Outgoing {
    pub id: u64,
    pub to: NodeId,
    pub group: usize,
    /// The core asked for this transfer (false: a copy the simulator resends on its own, to
    /// reach a node that meanwhile caught up); only requested ones are reported back.
    pub requested: bool,
    /// Nothing is sent before this tick.
    pub start_tick: u64,
    pub last_progress_tick: u64,
    offer: Message,
    data: SimSnapshot,
    count: u32,
    /// What the receiver last said it holds (it may lose its staging in a crash).
    acked: u64,
    /// The most chunks the receiver ever held at once: progress is exceeding it.
    acked_best: u32,
    /// The tick each chunk was last sent at, if it is in flight unacknowledged.
    sent_at: Vec<Option<u64>>,
}

/// Where and how a new transfer starts.
pub struct OutgoingStart {
    pub id: u64,
    pub group: usize,
    pub count: u32,
    pub tick: u64,
    pub start_tick: u64,
    pub requested: bool,
}

impl Outgoing {
    pub fn new(start: OutgoingStart, offer: Message, data: SimSnapshot) -> Outgoing {
        full_mask(start.count);
        Outgoing {
            id: start.id,
            to: offer.to,
            group: start.group,
            requested: start.requested,
            start_tick: start.start_tick,
            last_progress_tick: start.tick.max(start.start_tick),
            offer,
            data,
            count: start.count,
            acked: 0,
            acked_best: 0,
            sent_at: vec![None; start.count as usize],
        }
    }

    pub fn offer(&self) -> &Message {
        &self.offer
    }

    pub fn data(&self) -> SimSnapshot {
        self.data
    }

    pub fn is_complete(&self) -> bool {
        self.acked == full_mask(self.count)
    }

    /// The receiver holds `received` (all it holds of this snapshot, so a receiver that lost
    /// its staging is sent everything again); progress is holding more than ever before.
    pub fn on_ack(&mut self, received: u64, tick: u64) {
        let received = received & full_mask(self.count);
        if received.count_ones() > self.acked_best {
            self.acked_best = received.count_ones();
            self.last_progress_tick = tick;
        }
        self.acked = received;
        for (index, sent) in self.sent_at.iter_mut().enumerate() {
            if self.acked & (1u64 << index) != 0 {
                *sent = None;
            }
        }
    }

    /// No chunk was newly acknowledged for `stall_ticks`.
    pub fn stalled(&self, tick: u64, stall_ticks: u64) -> bool {
        tick >= self.last_progress_tick + stall_ticks
    }

    /// Chunks to send now: unacknowledged ones not in flight (or in flight for
    /// `resend_ticks`, so taken for lost), lowest first, at most `window` in flight, each
    /// taken from the sender's `budget` of chunks for this tick (its bandwidth).
    pub fn next_chunks(
        &mut self,
        tick: u64,
        limits: (usize, u64),
        budget: &mut u32,
    ) -> Vec<SnapshotChunk> {
        let (window, resend_ticks) = limits;
        let mut chunks = Vec::new();
        if tick < self.start_tick {
            return chunks;
        }
        for sent in &mut self.sent_at {
            if sent.is_some_and(|at| tick >= at + resend_ticks) {
                *sent = None;
            }
        }
        let mut in_flight = self.sent_at.iter().filter(|sent| sent.is_some()).count();
        for index in 0..self.count {
            if *budget == 0 || in_flight >= window {
                break;
            }
            let position = index as usize;
            if self.acked & (1u64 << index) != 0 || self.sent_at[position].is_some() {
                continue;
            }
            self.sent_at[position] = Some(tick);
            in_flight += 1;
            *budget -= 1;
            chunks.push(SnapshotChunk {
                from: self.offer.from,
                to: self.offer.to,
                transfer: self.id,
                index,
                count: self.count,
                offer: self.offer.clone(),
                data: self.data,
            });
        }
        chunks
    }
}

/// The chunks of one snapshot staged on the receiving node (volatile: a crash loses them).
#[derive(Debug)]
pub struct Incoming {
    /// The term of the offer that brought the staged snapshot: a newer leader's snapshot
    /// replaces it, an older one's does not (until this staging sits idle).
    term: Term,
    touched_tick: u64,
    last: EntryId,
    data: SimSnapshot,
    count: u32,
    have: u64,
    /// The transfers whose offer was stepped already (each complete transfer steps once).
    stepped: Vec<u64>,
}

/// What the receiver does with a chunk.
pub struct Received {
    pub ack: ChunkAck,
    /// Every chunk is staged and this transfer's offer was not stepped yet: step it.
    pub step: Option<(Message, SimSnapshot)>,
}

impl Incoming {
    /// Stage `chunk` in `staging` at `tick`: chunks of the staged snapshot resume it,
    /// whichever transfer brings them; a snapshot offered in a later term or ending later
    /// replaces it, and so does any snapshot once the staging sat idle for `idle_ticks`;
    /// chunks of other snapshots are answered with nothing held, so their sender gives up.
    pub fn receive(
        staging: &mut Option<Incoming>,
        chunk: &SnapshotChunk,
        tick: u64,
        idle_ticks: u64,
    ) -> Received {
        let key = (chunk.offer.term, chunk.data.last.index);
        let same = staging.as_ref().is_some_and(|incoming| {
            incoming.last == chunk.data.last && incoming.count == chunk.count
        });
        let replaces = staging.as_ref().is_none_or(|incoming| {
            key > (incoming.term, incoming.last.index) || tick >= incoming.touched_tick + idle_ticks
        });
        if !same && !replaces {
            return Received {
                ack: ChunkAck {
                    from: chunk.to,
                    to: chunk.from,
                    transfer: chunk.transfer,
                    received: 0,
                },
                step: None,
            };
        }
        if !same {
            *staging = Some(Incoming {
                term: chunk.offer.term,
                touched_tick: tick,
                last: chunk.data.last,
                data: chunk.data,
                count: chunk.count,
                have: 0,
                stepped: Vec::new(),
            });
        }
        let mut step = None;
        let mut received = 0;
        if let Some(incoming) = staging {
            incoming.touched_tick = tick;
            incoming.term = incoming.term.max(chunk.offer.term);
            if chunk.index < chunk.count {
                incoming.have |= 1u64 << chunk.index;
            }
            received = incoming.have;
            let complete = incoming.have == full_mask(incoming.count);
            if complete && !incoming.stepped.contains(&chunk.transfer) {
                incoming.stepped.push(chunk.transfer);
                step = Some((chunk.offer.clone(), chunk.data));
            }
        }
        Received {
            ack: ChunkAck {
                from: chunk.to,
                to: chunk.from,
                transfer: chunk.transfer,
                received,
            },
            step,
        }
    }

    /// The staged data of a complete snapshot ending at `last`, if that is what is staged.
    pub fn staged(staging: &Option<Incoming>, last: EntryId) -> Option<SimSnapshot> {
        let incoming = staging.as_ref()?;
        (incoming.last == last && incoming.is_complete()).then_some(incoming.data)
    }

    pub fn is_complete(&self) -> bool {
        self.have == full_mask(self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::LogIndex;
    use crate::raft::{Membership, MessageBody, SnapshotMeta};

    fn offer() -> (Message, SimSnapshot) {
        let last = EntryId::new(Term(2), LogIndex(9));
        let message = Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(2),
            body: MessageBody::InstallSnapshot {
                snapshot: SnapshotMeta {
                    last,
                    membership: Membership::default(),
                },
            },
        };
        (message, SimSnapshot { last, chain: 5 })
    }

    #[test]
    fn window_budget_resend_and_resume() {
        // At most `window` chunks fly at once within the per-tick budget; unacknowledged
        // ones are resent; a second transfer of the same snapshot resumes the staging; the
        // offer is stepped once per complete transfer.
        let (message, data) = offer();
        let start = |id| OutgoingStart {
            id,
            group: 0,
            count: 4,
            tick: 0,
            start_tick: 0,
            requested: true,
        };
        let mut sender = Outgoing::new(start(1), message.clone(), data);
        let mut budget = 5;
        let first = sender.next_chunks(0, (2, 3), &mut budget);
        assert_eq!(
            first.iter().map(|c| c.index).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert_eq!(budget, 3);
        let mut staging = None;
        // Chunk 0 is lost; chunk 1 arrives.
        let received = Incoming::receive(&mut staging, &first[1], 1, 30);
        assert!(received.step.is_none());
        sender.on_ack(received.ack.received, 1);
        let mut budget = 1;
        let next = sender.next_chunks(1, (2, 3), &mut budget);
        assert_eq!(next.iter().map(|c| c.index).collect::<Vec<_>>(), vec![2]);
        let mut budget = 5;
        let resent = sender.next_chunks(3, (2, 3), &mut budget);
        assert_eq!(resent.iter().map(|c| c.index).collect::<Vec<_>>(), vec![0]);
        assert!(sender.stalled(31, 30));
        assert!(!sender.stalled(30, 30));
        for chunk in [&next[0], &resent[0]] {
            let received = Incoming::receive(&mut staging, chunk, 4, 30);
            assert!(received.step.is_none());
            sender.on_ack(received.ack.received, 4);
        }
        // The transfer fails; a new one of the same snapshot needs only the last chunk.
        let mut again = Outgoing::new(start(2), message, data);
        let mut budget = 5;
        let probe = again.next_chunks(10, (1, 3), &mut budget);
        let received = Incoming::receive(&mut staging, &probe[0], 10, 30);
        again.on_ack(received.ack.received, 10);
        let mut budget = 5;
        let rest = again.next_chunks(11, (4, 3), &mut budget);
        assert_eq!(rest.iter().map(|c| c.index).collect::<Vec<_>>(), vec![3]);
        let received = Incoming::receive(&mut staging, &rest[0], 11, 30);
        assert_eq!(received.step.map(|(_, staged)| staged), Some(data));
        again.on_ack(received.ack.received, 11);
        assert!(again.is_complete());
        assert_eq!(Incoming::staged(&staging, data.last), Some(data));
        let duplicate = Incoming::receive(&mut staging, &rest[0], 11, 30);
        assert!(
            duplicate.step.is_none(),
            "a transfer's offer is stepped once"
        );
    }
}

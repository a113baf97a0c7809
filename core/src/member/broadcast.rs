//! The queue of member updates waiting to be piggybacked.
//!
//! Each entry names a member; the update sent is built from the member's
//! record at send time, so a newer change replaces an older one in place.
//! Every entry is sent a bounded number of times
//! (`retransmit_mult × ⌈log10(n + 1)⌉`, as in memberlist), fewest-sent first.

use crate::NodeId;

/// Updates waiting to be gossiped, at most `N`.
pub struct Broadcasts<const N: usize> {
    entries: heapless::Vec<(NodeId, u16), N>,
}

impl<const N: usize> Broadcasts<N> {
    /// An empty queue.
    pub const fn new() -> Self {
        Broadcasts {
            entries: heapless::Vec::new(),
        }
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queues (or requeues, resetting its count) an update about `id`. When
    /// the queue is full the most-sent entry makes room: it has spread most.
    pub fn push(&mut self, id: NodeId) {
        self.entries.retain(|(e, _)| *e != id);
        if self.entries.is_full()
            && let Some(i) = (0..self.entries.len()).max_by_key(|&i| self.entries[i].1)
        {
            self.entries.swap_remove(i);
        }
        // Cannot fail: room was made above.
        let _ = self.entries.push((id, 0));
    }

    /// Drops any update about `id`.
    pub fn remove(&mut self, id: NodeId) {
        self.entries.retain(|(e, _)| *e != id);
    }

    /// Takes up to `out.capacity()` ids, fewest-sent first, counting one send
    /// for each and retiring those sent `limit` times.
    pub fn take<const M: usize>(&mut self, limit: u16, out: &mut heapless::Vec<NodeId, M>) {
        self.entries.sort_unstable_by_key(|(id, sent)| (*sent, *id));
        for (id, sent) in self.entries.iter_mut() {
            if out.push(*id).is_err() {
                break;
            }
            *sent = sent.saturating_add(1);
        }
        self.entries.retain(|(_, sent)| *sent < limit);
    }
}

impl<const N: usize> Default for Broadcasts<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fewest_sent_first_and_retired_at_limit() {
        let mut b = Broadcasts::<4>::new();
        b.push(NodeId(1));
        b.push(NodeId(2));
        let mut out = heapless::Vec::<NodeId, 1>::new();
        b.take(2, &mut out);
        assert_eq!(out[0], NodeId(1));
        out.clear();
        b.take(2, &mut out);
        assert_eq!(out[0], NodeId(2));
        b.push(NodeId(1)); // requeued: count reset
        for _ in 0..4 {
            out.clear();
            b.take(2, &mut out);
        }
        assert!(b.is_empty());
    }

    #[test]
    fn full_queue_evicts_most_sent() {
        let mut b = Broadcasts::<2>::new();
        b.push(NodeId(1));
        let mut out = heapless::Vec::<NodeId, 1>::new();
        b.take(10, &mut out);
        b.push(NodeId(2));
        b.push(NodeId(3));
        out.clear();
        let mut all = heapless::Vec::<NodeId, 4>::new();
        b.take(10, &mut all);
        assert!(all.contains(&NodeId(2)) && all.contains(&NodeId(3)));
    }
}

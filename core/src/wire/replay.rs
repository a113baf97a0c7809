//! Per-sender replay windows.
//!
//! Each sender seals datagrams with a counter that grows within a boot epoch.
//! A receiver remembers, per sender, the epoch, the highest counter seen and a
//! bitmap of the [`REPLAY_WINDOW`] counters below it (RFC 4303's anti-replay
//! window). A datagram from an older epoch, with a counter below the window,
//! or already marked, is a replay. A newer epoch starts a fresh window: the
//! sender restarted.
//!
//! Only authenticated datagrams reach the table, so outsiders cannot create
//! entries. When the table is full the least recently used entry is evicted;
//! a replay of that sender's old datagrams would then be accepted once more,
//! which the link's own sequence numbers still suppress as duplicates.

use crate::NodeId;

/// How many counters below the highest seen are tracked per sender.
pub const REPLAY_WINDOW: u64 = 128;

/// What the window says of one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ReplayVerdict {
    /// Fresh: accept it (and it is now marked as seen).
    Fresh,
    /// Fresh, and from a newer epoch than before: the sender restarted.
    Restarted,
    /// Seen before, too old, or from an older epoch: drop it.
    Replay,
}

/// One sender's anti-replay state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayWindow {
    epoch: u64,
    highest: u64,
    /// Bit `i` set: counter `highest - i` was seen.
    seen: u128,
}

impl ReplayWindow {
    /// A window that has seen exactly `(epoch, counter)`.
    pub fn new(epoch: u64, counter: u64) -> ReplayWindow {
        ReplayWindow {
            epoch,
            highest: counter,
            seen: 1,
        }
    }

    /// The sender's epoch as last seen.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Checks `(epoch, counter)` and marks it seen when fresh.
    pub fn check(&mut self, epoch: u64, counter: u64) -> ReplayVerdict {
        if epoch < self.epoch {
            return ReplayVerdict::Replay;
        }
        if epoch > self.epoch {
            *self = ReplayWindow::new(epoch, counter);
            return ReplayVerdict::Restarted;
        }
        if counter > self.highest {
            let shift = counter - self.highest;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = counter;
            return ReplayVerdict::Fresh;
        }
        let age = self.highest - counter;
        if age >= REPLAY_WINDOW {
            return ReplayVerdict::Replay;
        }
        let bit = 1u128 << age;
        if self.seen & bit != 0 {
            return ReplayVerdict::Replay;
        }
        self.seen |= bit;
        ReplayVerdict::Fresh
    }
}

/// Replay windows for up to `N` senders, least recently used evicted first.
pub struct ReplayTable<const N: usize> {
    entries: heapless::Vec<(NodeId, ReplayWindow, u64), N>,
    clock: u64,
}

impl<const N: usize> Default for ReplayTable<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> ReplayTable<N> {
    /// An empty table.
    pub const fn new() -> Self {
        ReplayTable {
            entries: heapless::Vec::new(),
            clock: 0,
        }
    }

    /// Checks an authenticated datagram's `(sender, epoch, counter)`.
    pub fn check(&mut self, sender: NodeId, epoch: u64, counter: u64) -> ReplayVerdict {
        self.clock += 1;
        let clock = self.clock;
        if let Some((_, w, used)) = self.entries.iter_mut().find(|(id, _, _)| *id == sender) {
            *used = clock;
            return w.check(epoch, counter);
        }
        let entry = (sender, ReplayWindow::new(epoch, counter), clock);
        if let Err(entry) = self.entries.push(entry)
            && let Some(lru) = self.entries.iter_mut().min_by_key(|(_, _, used)| *used)
        {
            *lru = entry;
        }
        ReplayVerdict::Fresh
    }

    /// The epoch last seen from `sender`, if it is tracked.
    pub fn epoch_of(&self, sender: NodeId) -> Option<u64> {
        self.entries
            .iter()
            .find(|(id, _, _)| *id == sender)
            .map(|(_, w, _)| w.epoch())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReplayVerdict::*;

    #[test]
    fn window_accepts_each_counter_once() {
        let mut w = ReplayWindow::new(1, 10);
        assert_eq!(w.check(1, 10), Replay);
        assert_eq!(w.check(1, 12), Fresh);
        assert_eq!(w.check(1, 11), Fresh);
        assert_eq!(w.check(1, 11), Replay);
        assert_eq!(w.check(1, 12), Replay);
        // Far ahead: the old window is gone, anything below it is too old.
        assert_eq!(w.check(1, 12 + REPLAY_WINDOW), Fresh);
        assert_eq!(w.check(1, 12), Replay);
        assert_eq!(w.check(1, 13), Fresh);
        assert_eq!(w.check(1, 13), Replay);
    }

    #[test]
    fn epochs_order_windows() {
        let mut w = ReplayWindow::new(5, 100);
        assert_eq!(w.check(4, 1000), Replay);
        assert_eq!(w.check(6, 1), Restarted);
        assert_eq!(w.check(6, 1), Replay);
        assert_eq!(w.check(5, 101), Replay);
    }

    #[test]
    fn out_of_order_within_window() {
        let mut w = ReplayWindow::new(1, 1);
        for c in (2..=100).rev() {
            assert_eq!(w.check(1, c), Fresh);
        }
        for c in 1..=100 {
            assert_eq!(w.check(1, c), Replay);
        }
    }

    #[test]
    fn table_evicts_least_recently_used() {
        let mut t = ReplayTable::<2>::new();
        assert_eq!(t.check(NodeId(1), 1, 1), Fresh);
        assert_eq!(t.check(NodeId(2), 1, 1), Fresh);
        assert_eq!(t.check(NodeId(1), 1, 2), Fresh);
        assert_eq!(t.check(NodeId(3), 1, 1), Fresh); // evicts 2
        assert_eq!(t.epoch_of(NodeId(2)), None);
        assert_eq!(t.check(NodeId(1), 1, 2), Replay);
        assert_eq!(t.epoch_of(NodeId(3)), Some(1));
    }
}

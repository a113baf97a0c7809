//! Runs of equal datagrams, for a host's socket loop.
//!
//! Linux sends a run of datagrams to one destination, back to back in one
//! buffer and all of one size but the last, in one call and one pass down
//! its stack (UDP GSO); a receiver with GRO on takes such a run whole. The
//! link cuts a message into fragments of one size (see [`super::Link::send`]),
//! so the chunks of a transfer make long runs. A [`Run`] decides which
//! datagrams, taken in the order `poll_transmit` gives them, join one.

use core::net::SocketAddr;

/// Smallest datagram a run is built on: bulk data. Small ones (acks,
/// answers) rarely come in long runs and go out many per call instead
/// (`sendmmsg`), which as runs of two or three they would not.
pub const MIN_SEGMENT: usize = 1024;

/// Most bytes in one run: the kernel takes it as one UDP datagram, whose
/// payload is at most 65,507 bytes, and refuses a larger one.
pub const MAX_RUN_BYTES: usize = 65_000;

/// Datagrams to `dst` at `start..end` of a send buffer: `count` of them,
/// every one `segment` bytes long but the last, which may be shorter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Where they go.
    pub dst: SocketAddr,
    /// The first byte of the first datagram in the buffer.
    pub start: usize,
    /// Just past the last byte of the last datagram.
    pub end: usize,
    /// The length of every datagram but the last.
    pub segment: usize,
    /// How many datagrams.
    pub count: usize,
}

impl Run {
    /// A run of one datagram of `len` bytes at `start`.
    pub fn new(dst: SocketAddr, start: usize, len: usize) -> Run {
        Run {
            dst,
            start,
            end: start + len,
            segment: len,
            count: 1,
        }
    }

    /// Adds the next datagram, `len` bytes to `dst` right after this run in
    /// the buffer, when it may join: same destination, bulk-sized, no
    /// longer than the run's datagrams, the run's last one full size, and
    /// at most `max_segments` datagrams and [`MAX_RUN_BYTES`] in all.
    pub fn extend(&mut self, dst: SocketAddr, len: usize, max_segments: usize) -> bool {
        let joins = dst == self.dst
            && self.segment >= MIN_SEGMENT
            && len <= self.segment
            && self.end - self.start == self.count * self.segment
            && self.count < max_segments
            && self.end - self.start + len <= MAX_RUN_BYTES;
        if joins {
            self.end += len;
            self.count += 1;
        }
        joins
    }

    /// The segment size to give the kernel: `None` for a single datagram.
    pub fn segment_size(&self) -> Option<usize> {
        (self.count > 1).then_some(self.segment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn equal_datagrams_to_one_peer_join_and_the_rest_start_anew() {
        let mut r = Run::new(addr(1), 0, 1100);
        assert!(r.extend(addr(1), 1100, 64));
        assert!(r.extend(addr(1), 900, 64), "a shorter last one joins");
        assert!(!r.extend(addr(1), 900, 64), "nothing after a shorter one");
        assert_eq!((r.count, r.end, r.segment_size()), (3, 3100, Some(1100)));

        let mut r = Run::new(addr(1), 0, 1100);
        assert!(!r.extend(addr(2), 1100, 64), "another peer");
        assert!(!r.extend(addr(1), 1101, 64), "a longer one");
        assert!(
            !Run::new(addr(1), 0, 40).extend(addr(1), 40, 64),
            "small ones"
        );
        assert_eq!(r.segment_size(), None);

        let mut r = Run::new(addr(1), 0, 1200);
        let mut n = 1;
        while r.extend(addr(1), 1200, 64) {
            n += 1;
        }
        assert_eq!(n, MAX_RUN_BYTES / 1200, "bounded by bytes");
        let mut r = Run::new(addr(1), 0, 1200);
        assert!(r.extend(addr(1), 1200, 2));
        assert!(!r.extend(addr(1), 1200, 2), "bounded by segments");
    }
}

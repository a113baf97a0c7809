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

/// Fills `buf` with up to `max` datagrams from `next`, back to back, and
/// groups them into runs, handed to `push` in order. `next` writes a
/// datagram into the slice it is given (`room` bytes, at least a
/// datagram's) and returns where it goes and its length, `None` when there
/// is none; a length of 0 drops it. Returns how many `next` gave, dropped
/// ones included: fewer than `max` means the source ran dry.
pub fn gather(
    buf: &mut [u8],
    room: usize,
    max: usize,
    max_segments: usize,
    mut next: impl FnMut(&mut [u8]) -> Option<(SocketAddr, usize)>,
    mut push: impl FnMut(Run),
) -> usize {
    let mut run: Option<Run> = None;
    let (mut at, mut n) = (0, 0);
    while n < max {
        let Some(slot) = buf.get_mut(at..at + room) else {
            break;
        };
        let Some((dst, len)) = next(slot) else {
            break;
        };
        n += 1;
        if len == 0 {
            continue;
        }
        let joined = run
            .as_mut()
            .is_some_and(|r| r.extend(dst, len, max_segments));
        if !joined {
            // The run before, if any, is complete.
            run.replace(Run::new(dst, at, len))
                .into_iter()
                .for_each(&mut push);
        }
        at += len;
    }
    if let Some(done) = run {
        push(done);
    }
    n
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

    #[test]
    fn gather_packs_datagrams_back_to_back_into_runs() {
        // (peer, length): a run of three to 1, a small one, one dropped
        // (length 0), then two to 2.
        let out = [
            (1, 1100),
            (1, 1100),
            (1, 700),
            (1, 40),
            (3, 0),
            (2, 1100),
            (2, 1100),
        ];
        let mut given = out.iter();
        let mut buf = [0u8; 8 * 1500];
        let mut runs = [Run::new(addr(0), 0, 0); 8];
        let mut count = 0;
        let n = gather(
            &mut buf,
            1500,
            16,
            64,
            |slot| {
                let &(peer, len) = given.next()?;
                slot[..len].fill(peer as u8);
                Some((addr(peer), len))
            },
            |run| {
                runs[count] = run;
                count += 1;
            },
        );
        assert_eq!(n, out.len(), "every datagram taken, the dropped one too");
        let got: [(u16, usize, usize, usize); 3] = core::array::from_fn(|i| {
            let r = runs[i];
            (r.dst.port(), r.start, r.end, r.count)
        });
        assert_eq!(count, 3);
        assert_eq!(
            got,
            [(1, 0, 2900, 3), (1, 2900, 2940, 1), (2, 2940, 5140, 2)]
        );
        assert!(buf[2940..5140].iter().all(|&b| b == 2), "back to back");
        // At most `max`, and no further.
        let mut left = 0;
        let n = gather(
            &mut buf,
            1500,
            2,
            64,
            |_| Some((addr(1), 1100)),
            |_| left += 1,
        );
        assert_eq!((n, left), (2, 1));
    }
}

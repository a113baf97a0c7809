//! Link frames: the bodies of kind-0 datagrams.
//!
//! ```text
//! data   0  kind = 0
//!        1  flags      u8   bit 0: opening (the sender has had no ack on this stream yet)
//!                           bit 1: the ack fields below are valid
//!                           bit 2: ack now (the sender has nothing more to send for now)
//!        2  stream     u16  the sender's stream generation
//!        4  seq        u32  this fragment's sequence number
//!        8  index      u16  fragment index within its message
//!       10  count      u16  fragments in the message (1..=MAX_FRAGMENTS)
//!       12  ack stream u16  the generation of the stream being acknowledged
//!       14  ack        u32  cumulative ack: every seq below it was received
//!       18  sack       u32  bit i: seq ack + 1 + i was received
//!       22  payload    …    up to FRAGMENT bytes
//! ack    0  kind = 1
//!        1  ack stream u16
//!        3  ack        u32
//!        7  sack       u32
//! reset  0  kind = 2
//!        1  stream     u16  the generation the receiver has no state for
//!        3  seq        u32  the seq that found no stream
//! packed 0  kind = 3
//!        1  len        u16  then that many bytes: one frame of the kinds above
//!        …                  again, to the end: two or more frames in all
//! ```
//!
//! A packed frame carries small frames (at most [`PACK_MAX`] bytes each) to
//! one peer in one datagram: a burst of requests, replies or acks costs one
//! seal and one trip through the network stack instead of one each.
//!
//! All integers little-endian. A message's fragments have consecutive
//! sequence numbers: fragment `index` belongs to the message whose first
//! fragment is `seq - index`. Stream generations tell a restarted stream from
//! stale frames of the one before it. Parsing never panics.

/// Largest frame: a datagram of 1200 bytes less the wire's 42-byte overhead,
/// rounded down.
pub const MAX_FRAME: usize = 1150;
/// Bytes of a data frame before its payload.
pub const DATA_HEADER: usize = 22;
/// Largest payload one data frame carries.
pub const FRAGMENT: usize = MAX_FRAME - DATA_HEADER;
/// Most fragments in one message.
pub const MAX_FRAGMENTS: usize = 16;
/// First byte of a packed frame.
pub const PACKED: u8 = 3;
/// Bytes a packed frame spends on its kind.
pub const PACKED_HEADER: usize = 1;
/// Bytes a packed frame spends on each frame it carries (its length).
pub const PACKED_PREFIX: usize = 2;
/// Largest frame a sender packs with others; larger ones (the fragments of
/// bulk transfers) go alone, so equal fragments make equal datagrams.
pub const PACK_MAX: usize = MAX_FRAME / 2;

/// The frames of packed frame `b`, in order. Yields `Err` (and stops) at
/// the first malformed one: a length past the end, an empty or nested
/// frame; those before it were well-formed.
pub fn unpack(b: &[u8]) -> Option<Unpack<'_>> {
    match b {
        [PACKED, rest @ ..] if b.len() <= MAX_FRAME && !rest.is_empty() => {
            Some(Unpack { rest: Some(rest) })
        }
        _ => None,
    }
}

/// The frames of a packed frame: see [`unpack`].
pub struct Unpack<'a> {
    /// What is left; `None` after a malformed frame.
    rest: Option<&'a [u8]>,
}

impl<'a> Iterator for Unpack<'a> {
    type Item = Result<&'a [u8], ()>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest.take().filter(|r| !r.is_empty())?;
        let one = u16_at(rest, 0).map(usize::from).and_then(|len| {
            let frame = rest.get(PACKED_PREFIX..PACKED_PREFIX + len)?;
            (len > 0 && frame[0] != PACKED).then_some((frame, &rest[PACKED_PREFIX + len..]))
        });
        match one {
            Some((frame, tail)) => {
                self.rest = Some(tail);
                Some(Ok(frame))
            }
            None => Some(Err(())),
        }
    }
}

/// Acknowledgement state piggybacked on data frames and sent alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ack {
    /// The generation of the stream acknowledged.
    pub stream: u16,
    /// Every seq below this was received.
    pub next: u32,
    /// Bit `i` set: `next + 1 + i` was received too.
    pub sack: u32,
}

/// A parsed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// One fragment of a message.
    Data {
        /// The sender has had no ack on this stream yet: a receiver without
        /// state for it may open it.
        opening: bool,
        /// Acknowledge at once rather than after several frames: the
        /// sender has nothing more to send for now (or is resending).
        ack_now: bool,
        /// The sender's stream generation.
        stream: u16,
        /// Its sequence number.
        seq: u32,
        /// Its index in the message.
        index: u16,
        /// The message's fragment count.
        count: u16,
        /// The sender's receive state, if it has any.
        ack: Option<Ack>,
        /// The fragment's bytes.
        payload: &'a [u8],
    },
    /// Acknowledgements alone.
    Ack(Ack),
    /// "I have no state for your stream `stream`": start a new one.
    Reset {
        /// The generation that found no state.
        stream: u16,
        /// The seq that found no state.
        seq: u32,
    },
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(*b.get(at..at + 2)?.first_chunk::<2>()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(*b.get(at..at + 4)?.first_chunk::<4>()?))
}

const FLAG_OPENING: u8 = 1;
const FLAG_ACK: u8 = 2;
const FLAG_ACK_NOW: u8 = 4;

impl<'a> Frame<'a> {
    /// Parses a frame, checking every length and field range.
    pub fn parse(b: &'a [u8]) -> Option<Frame<'a>> {
        if b.len() > MAX_FRAME {
            return None;
        }
        match *b.first()? {
            0 => {
                let flags = *b.get(1)?;
                let count = u16_at(b, 10)?;
                let index = u16_at(b, 8)?;
                let payload = b.get(DATA_HEADER..)?;
                if flags & !(FLAG_OPENING | FLAG_ACK | FLAG_ACK_NOW) != 0
                    || count == 0
                    || usize::from(count) > MAX_FRAGMENTS
                    || index >= count
                {
                    return None;
                }
                let ack = Ack {
                    stream: u16_at(b, 12)?,
                    next: u32_at(b, 14)?,
                    sack: u32_at(b, 18)?,
                };
                Some(Frame::Data {
                    opening: flags & FLAG_OPENING != 0,
                    ack_now: flags & FLAG_ACK_NOW != 0,
                    stream: u16_at(b, 2)?,
                    seq: u32_at(b, 4)?,
                    index,
                    count,
                    ack: (flags & FLAG_ACK != 0).then_some(ack),
                    payload,
                })
            }
            1 if b.len() == 11 => Some(Frame::Ack(Ack {
                stream: u16_at(b, 1)?,
                next: u32_at(b, 3)?,
                sack: u32_at(b, 7)?,
            })),
            2 if b.len() == 7 => Some(Frame::Reset {
                stream: u16_at(b, 1)?,
                seq: u32_at(b, 3)?,
            }),
            _ => None,
        }
    }

    /// Bytes [`Frame::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        match self {
            Frame::Data { payload, .. } => DATA_HEADER + payload.len(),
            Frame::Ack(_) => 11,
            Frame::Reset { .. } => 7,
        }
    }

    /// Writes the frame to the front of `buf`; its length, or `None` when
    /// `buf` is too small.
    pub fn emit(&self, buf: &mut [u8]) -> Option<usize> {
        let len = self.buffer_len();
        let out = buf.get_mut(..len)?;
        match self {
            Frame::Data {
                opening,
                ack_now,
                stream,
                seq,
                index,
                count,
                ack,
                payload,
            } => {
                let a = ack.unwrap_or_default();
                out[0] = 0;
                out[1] = u8::from(*opening) * FLAG_OPENING
                    + u8::from(ack.is_some()) * FLAG_ACK
                    + u8::from(*ack_now) * FLAG_ACK_NOW;
                out[2..4].copy_from_slice(&stream.to_le_bytes());
                out[4..8].copy_from_slice(&seq.to_le_bytes());
                out[8..10].copy_from_slice(&index.to_le_bytes());
                out[10..12].copy_from_slice(&count.to_le_bytes());
                out[12..14].copy_from_slice(&a.stream.to_le_bytes());
                out[14..18].copy_from_slice(&a.next.to_le_bytes());
                out[18..22].copy_from_slice(&a.sack.to_le_bytes());
                out[22..].copy_from_slice(payload);
            }
            Frame::Ack(a) => {
                out[0] = 1;
                out[1..3].copy_from_slice(&a.stream.to_le_bytes());
                out[3..7].copy_from_slice(&a.next.to_le_bytes());
                out[7..11].copy_from_slice(&a.sack.to_le_bytes());
            }
            Frame::Reset { stream, seq } => {
                out[0] = 2;
                out[1..3].copy_from_slice(&stream.to_le_bytes());
                out[3..7].copy_from_slice(&seq.to_le_bytes());
            }
        }
        Some(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_bytes_and_round_trips() {
        let mut buf = [0u8; MAX_FRAME];
        let data = Frame::Data {
            opening: true,
            ack_now: true,
            stream: 3,
            seq: 0x0102_0304,
            index: 1,
            count: 2,
            ack: Some(Ack {
                stream: 5,
                next: 7,
                sack: 0b101,
            }),
            payload: b"ab",
        };
        let n = data.emit(&mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            &[
                0, 7, 3, 0, 4, 3, 2, 1, 1, 0, 2, 0, 5, 0, 7, 0, 0, 0, 5, 0, 0, 0, b'a', b'b'
            ]
        );
        assert_eq!(Frame::parse(&buf[..n]), Some(data));
        let ack = Frame::Ack(Ack {
            stream: 1,
            next: 1,
            sack: u32::MAX,
        });
        let n = ack.emit(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[1, 1, 0, 1, 0, 0, 0, 255, 255, 255, 255]);
        assert_eq!(Frame::parse(&buf[..n]), Some(ack));
        let reset = Frame::Reset { stream: 2, seq: 9 };
        let n = reset.emit(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[2, 2, 0, 9, 0, 0, 0]);
        assert_eq!(Frame::parse(&buf[..n]), Some(reset));
    }

    #[test]
    fn rejects_bad_frames() {
        assert_eq!(Frame::parse(&[]), None);
        assert_eq!(Frame::parse(&[3]), None);
        assert_eq!(Frame::parse(&[1, 0, 0]), None);
        assert_eq!(Frame::parse(&[2, 0, 0, 0, 0, 0, 0, 0]), None);
        let mut d = [0u8; DATA_HEADER];
        // index >= count
        d[10] = 2;
        d[8] = 2;
        assert_eq!(Frame::parse(&d), None);
        // count 0
        d[8] = 0;
        d[10] = 0;
        assert_eq!(Frame::parse(&d), None);
        // count too large
        d[10] = (MAX_FRAGMENTS + 1) as u8;
        assert_eq!(Frame::parse(&d), None);
        // unknown flag
        d[10] = 1;
        d[1] = 0x80;
        assert_eq!(Frame::parse(&d), None);
        d[1] = 0;
        assert!(Frame::parse(&d).is_some());
        assert_eq!(Frame::parse(&[0u8; MAX_FRAME + 1]), None);
    }

    #[test]
    fn packed_frames_pinned_and_checked() {
        let ack = [1, 1, 0, 1, 0, 0, 0, 255, 255, 255, 255];
        let reset = [2, 2, 0, 9, 0, 0, 0];
        let mut packed = vec![PACKED, 11, 0];
        packed.extend_from_slice(&ack);
        packed.extend_from_slice(&[7, 0]);
        packed.extend_from_slice(&reset);
        let frames: Vec<_> = unpack(&packed).unwrap().collect();
        assert_eq!(frames, [Ok(&ack[..]), Ok(&reset[..])]);

        // Not packed, empty, too long.
        assert!(unpack(&ack).is_none());
        assert!(unpack(&[PACKED]).is_none());
        assert!(unpack(&[PACKED; MAX_FRAME + 1]).is_none());
        // A length past the end, a zero length, a nested packed frame, a
        // lone length byte: each stops the walk with an error.
        for bad in [
            &[PACKED, 12, 0, 1, 1, 0, 1, 0, 0, 0, 255, 255, 255, 255][..],
            &[PACKED, 0, 0],
            &[PACKED, 2, 0, PACKED, 0],
            &[PACKED, 1],
        ] {
            let frames: Vec<_> = unpack(bad).unwrap().collect();
            assert_eq!(frames, [Err(())], "{bad:?}");
        }
        // Frames before a malformed one are still handed out.
        let mut tail = packed.clone();
        tail.push(9);
        let frames: Vec<_> = unpack(&tail).unwrap().collect();
        assert_eq!(frames, [Ok(&ack[..]), Ok(&reset[..]), Err(())]);
    }
}

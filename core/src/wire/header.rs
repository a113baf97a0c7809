//! The plaintext datagram header.

use crate::NodeId;

/// The only wire version this build speaks.
pub const VERSION: u8 = 1;

/// Header length in bytes.
pub const HEADER_LEN: usize = 26;

/// What a datagram's body holds. Numbers are append-only: a new kind takes the
/// next number, and no number is ever reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum Kind {
    /// A reliable-link frame (data segment, ack or reset); see `link::frame`.
    Link = 0,
    /// One whole unreliable message (membership probes, sync pages).
    Datagram = 1,
}

impl Kind {
    fn from_u8(n: u8) -> Option<Kind> {
        match n {
            0 => Some(Kind::Link),
            1 => Some(Kind::Datagram),
            _ => None,
        }
    }
}

/// A parsed datagram header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Header {
    /// What the body holds.
    pub kind: Kind,
    /// The node (or client) that sealed the datagram.
    pub sender: NodeId,
    /// The sender's boot epoch.
    pub epoch: u64,
    /// The sender's datagram counter within `epoch`.
    pub counter: u64,
}

impl Header {
    /// Parses the header at the front of `bytes`. Checks the version and
    /// kind; never panics.
    pub fn parse(bytes: &[u8]) -> Option<Header> {
        let h = bytes.get(..HEADER_LEN)?;
        let (&version, rest) = h.split_first()?;
        let (&kind, rest) = rest.split_first()?;
        if version != VERSION {
            return None;
        }
        let kind = Kind::from_u8(kind)?;
        let (sender, rest) = rest.split_first_chunk::<8>()?;
        let (epoch, rest) = rest.split_first_chunk::<8>()?;
        let (counter, _) = rest.split_first_chunk::<8>()?;
        Some(Header {
            kind,
            sender: NodeId(u64::from_le_bytes(*sender)),
            epoch: u64::from_le_bytes(*epoch),
            counter: u64::from_le_bytes(*counter),
        })
    }

    /// Writes the header into the front of `buf`, which must hold
    /// [`HEADER_LEN`] bytes.
    pub fn emit(&self, buf: &mut [u8]) -> Option<()> {
        let out = buf.get_mut(..HEADER_LEN)?;
        out[0] = VERSION;
        out[1] = self.kind as u8;
        out[2..10].copy_from_slice(&self.sender.0.to_le_bytes());
        out[10..18].copy_from_slice(&self.epoch.to_le_bytes());
        out[18..26].copy_from_slice(&self.counter.to_le_bytes());
        Some(())
    }

    /// The 24-byte AEAD nonce this header implies.
    pub fn nonce(&self) -> [u8; 24] {
        let mut n = [0u8; 24];
        n[..8].copy_from_slice(&self.sender.0.to_le_bytes());
        n[8..16].copy_from_slice(&self.epoch.to_le_bytes());
        n[16..].copy_from_slice(&self.counter.to_le_bytes());
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_parse_round_trip_and_bytes() {
        let h = Header {
            kind: Kind::Datagram,
            sender: NodeId(0x0102_0304_0506_0708),
            epoch: 3,
            counter: 0x1_0000,
        };
        let mut buf = [0u8; HEADER_LEN];
        h.emit(&mut buf).unwrap();
        assert_eq!(
            buf,
            [
                1, 1, 8, 7, 6, 5, 4, 3, 2, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0
            ]
        );
        assert_eq!(Header::parse(&buf), Some(h));
    }

    #[test]
    fn rejects_short_bad_version_and_kind() {
        let mut buf = [0u8; HEADER_LEN];
        Header {
            kind: Kind::Link,
            sender: NodeId(1),
            epoch: 1,
            counter: 1,
        }
        .emit(&mut buf)
        .unwrap();
        assert!(Header::parse(&buf[..HEADER_LEN - 1]).is_none());
        let mut v = buf;
        v[0] = 2;
        assert!(Header::parse(&v).is_none());
        let mut k = buf;
        k[1] = 99;
        assert!(Header::parse(&k).is_none());
    }
}

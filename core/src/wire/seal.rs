//! Sealing and opening datagrams with XChaCha20-Poly1305 under the cluster key.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

use super::{DropReason, HEADER_LEN, Header, Kind, MAX_DATAGRAM};
use crate::NodeId;

/// Length of the Poly1305 tag at the end of every datagram.
pub const TAG_LEN: usize = 16;

/// The 256-bit secret every member and client of one cluster shares.
#[derive(Clone)]
pub struct ClusterKey(pub [u8; 32]);

impl ClusterKey {
    /// Parses 64 hexadecimal digits (surrounding whitespace allowed), the
    /// form key files hold.
    pub fn from_hex(text: &str) -> Option<ClusterKey> {
        let text = text.trim().as_bytes();
        if text.len() != 64 {
            return None;
        }
        let mut key = [0u8; 32];
        for (byte, pair) in key.iter_mut().zip(text.chunks_exact(2)) {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            *byte = (hi * 16 + lo) as u8;
        }
        Some(ClusterKey(key))
    }

    /// The key as 64 lowercase hexadecimal digits.
    pub fn to_hex(&self) -> [u8; 64] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 15)];
        }
        out
    }
}

impl core::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// Why a datagram could not be sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SealError {
    /// The body does not fit one datagram, or `buf` is too small for it:
    /// split the message (the link fragments reliable messages for you).
    TooLarge,
    /// The datagram counter ran out for this epoch: restart the node with a
    /// higher epoch. (At one datagram per nanosecond this takes 584 years.)
    Exhausted,
}

impl core::fmt::Display for SealError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SealError::TooLarge => "body too large for one datagram",
            SealError::Exhausted => "datagram counter exhausted; restart with a new epoch",
        })
    }
}

impl core::error::Error for SealError {}

/// Why a datagram could not be opened. The caller counts it and drops it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum OpenError {
    /// Too short, too long, or a header this build does not speak.
    Malformed,
    /// The tag did not verify: sealed under another key, or corrupted.
    Authentication,
}

impl From<OpenError> for DropReason {
    fn from(e: OpenError) -> DropReason {
        match e {
            OpenError::Malformed => DropReason::Malformed,
            OpenError::Authentication => DropReason::Authentication,
        }
    }
}

/// Seals outgoing datagrams as one sender and opens incoming ones.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    sender: NodeId,
    epoch: u64,
    next_counter: u64,
}

impl Sealer {
    /// A sealer for `sender` in boot epoch `epoch`. The epoch must be higher
    /// than any this sender used before under the same key (host nodes persist
    /// a boot counter), so that no nonce repeats.
    pub fn new(key: &ClusterKey, sender: NodeId, epoch: u64) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new(&key.0.into()),
            sender,
            epoch,
            next_counter: 1,
        }
    }

    /// The sender id datagrams are sealed under.
    pub fn sender(&self) -> NodeId {
        self.sender
    }

    /// The boot epoch datagrams are sealed under.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Seals the `body_len` bytes the caller wrote at
    /// `buf[HEADER_LEN..HEADER_LEN + body_len]`: writes the header in front and
    /// the tag behind, and returns the datagram's length.
    pub fn seal(
        &mut self,
        kind: Kind,
        buf: &mut [u8],
        body_len: usize,
    ) -> Result<usize, SealError> {
        let total = HEADER_LEN + body_len + TAG_LEN;
        if total > MAX_DATAGRAM || total > buf.len() {
            return Err(SealError::TooLarge);
        }
        if self.next_counter == u64::MAX {
            return Err(SealError::Exhausted);
        }
        let header = Header {
            kind,
            sender: self.sender,
            epoch: self.epoch,
            counter: self.next_counter,
        };
        self.next_counter += 1;
        let (head, rest) = buf.split_at_mut(HEADER_LEN);
        header.emit(head).ok_or(SealError::TooLarge)?;
        let (body, tail) = rest.split_at_mut(body_len);
        let tag = self
            .cipher
            .encrypt_in_place_detached(XNonce::from_slice(&header.nonce()), head, body)
            .map_err(|_| SealError::TooLarge)?;
        tail[..TAG_LEN].copy_from_slice(&tag);
        Ok(total)
    }

    /// Verifies and decrypts the datagram in `buf` in place, returning its
    /// header and plaintext body. Checks no replay window: that is the
    /// caller's, per sender, after this succeeds.
    pub fn open<'a>(&self, buf: &'a mut [u8]) -> Result<(Header, &'a [u8]), OpenError> {
        open(&self.cipher, buf)
    }
}

/// Verifies and decrypts `buf` in place with `cipher`. See [`Sealer::open`].
pub fn open<'a>(
    cipher: &XChaCha20Poly1305,
    buf: &'a mut [u8],
) -> Result<(Header, &'a [u8]), OpenError> {
    if buf.len() < HEADER_LEN + TAG_LEN || buf.len() > MAX_DATAGRAM {
        return Err(OpenError::Malformed);
    }
    let header = Header::parse(buf).ok_or(OpenError::Malformed)?;
    let (head, rest) = buf.split_at_mut(HEADER_LEN);
    let body_len = rest.len() - TAG_LEN;
    let (body, tag) = rest.split_at_mut(body_len);
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(&header.nonce()),
            head,
            body,
            Tag::from_slice(tag),
        )
        .map_err(|_| OpenError::Authentication)?;
    Ok((header, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(s: &mut Sealer, body: &[u8]) -> ([u8; MAX_DATAGRAM], usize) {
        let mut buf = [0u8; MAX_DATAGRAM];
        buf[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
        let n = s.seal(Kind::Datagram, &mut buf, body.len()).unwrap();
        (buf, n)
    }

    #[test]
    fn key_hex_round_trip() {
        let key = ClusterKey([0xa5; 32]);
        let hex = key.to_hex();
        let text = core::str::from_utf8(&hex).unwrap();
        assert_eq!(ClusterKey::from_hex(text).unwrap().0, key.0);
        assert!(
            ClusterKey::from_hex(
                "  00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff\n"
            )
            .is_some()
        );
        assert!(ClusterKey::from_hex("00").is_none());
        assert!(ClusterKey::from_hex(&"zz".repeat(32)).is_none());
        assert!(ClusterKey::from_hex(&"é".repeat(32)).is_none());
    }

    #[test]
    fn seal_open_round_trip() {
        let key = ClusterKey([7; 32]);
        let mut a = Sealer::new(&key, NodeId(1), 1);
        let b = Sealer::new(&key, NodeId(2), 1);
        let (mut buf, n) = sealed(&mut a, b"hello");
        assert_eq!(n, HEADER_LEN + 5 + TAG_LEN);
        let (h, body) = b.open(&mut buf[..n]).unwrap();
        assert_eq!(body, b"hello");
        assert_eq!((h.sender, h.epoch, h.counter), (NodeId(1), 1, 1));
    }

    #[test]
    fn pinned_bytes() {
        let key = ClusterKey([0x42; 32]);
        let mut a = Sealer::new(&key, NodeId(0x0a0b), 2);
        let (buf, n) = sealed(&mut a, b"shoal");
        let expect_header = [
            1u8, 1, 0x0b, 0x0a, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(&buf[..HEADER_LEN], &expect_header);
        // Ciphertext and tag are pinned so a change of cipher or nonce layout is caught.
        assert_eq!(
            &buf[HEADER_LEN..n],
            &[
                0xda, 0xe6, 0x69, 0x63, 0xd2, 0x79, 0xaf, 0x7b, 0x31, 0x6f, 0x90, 0x8d, 0x0e, 0xe2,
                0x37, 0x5e, 0x35, 0x34, 0x66, 0x1c, 0x8c
            ]
        );
    }

    #[test]
    fn wrong_key_and_tampering_fail_authentication() {
        let mut a = Sealer::new(&ClusterKey([1; 32]), NodeId(1), 1);
        let other = Sealer::new(&ClusterKey([2; 32]), NodeId(2), 1);
        let same = Sealer::new(&ClusterKey([1; 32]), NodeId(2), 1);
        let (buf, n) = sealed(&mut a, b"payload");
        assert_eq!(
            other.open(&mut { buf }[..n]).unwrap_err(),
            OpenError::Authentication
        );
        for i in 0..n {
            let mut t = buf;
            t[i] ^= 0x20;
            let err = same.open(&mut t[..n]).unwrap_err();
            assert!(
                matches!(err, OpenError::Authentication | OpenError::Malformed),
                "byte {i}"
            );
        }
        assert_eq!(
            same.open(&mut { buf }[..5]).unwrap_err(),
            OpenError::Malformed
        );
    }

    #[test]
    fn counter_grows_and_too_large_is_refused() {
        let mut a = Sealer::new(&ClusterKey([1; 32]), NodeId(1), 9);
        let b = Sealer::new(&ClusterKey([1; 32]), NodeId(2), 1);
        let (mut x, n) = sealed(&mut a, b"");
        let (mut y, m) = sealed(&mut a, b"");
        assert_eq!(b.open(&mut x[..n]).unwrap().0.counter, 1);
        assert_eq!(b.open(&mut y[..m]).unwrap().0.counter, 2);
        let mut big = [0u8; MAX_DATAGRAM + 10];
        assert_eq!(
            a.seal(Kind::Link, &mut big, MAX_DATAGRAM).unwrap_err(),
            SealError::TooLarge
        );
    }
}

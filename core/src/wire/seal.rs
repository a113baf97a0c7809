//! Sealing and opening datagrams with XChaCha20-Poly1305 under the cluster key.
//!
//! XChaCha20-Poly1305 is ChaCha20-Poly1305 (RFC 8439) under a subkey:
//! HChaCha20 of the key and the nonce's first 16 bytes; the nonce's last 8
//! bytes, after 4 zero bytes, are the 12-byte ChaCha20 nonce. Built with
//! the `ring` feature (hosts), the ChaCha20-Poly1305 step runs on `ring`'s
//! assembly, about twice as fast as the portable code; the bytes are the
//! same either way (the pinned test below holds for both builds).

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

/// XChaCha20-Poly1305 under one key: the portable RustCrypto code.
#[cfg(not(feature = "ring"))]
#[derive(Clone)]
pub struct Cipher(chacha20poly1305::XChaCha20Poly1305);

/// XChaCha20-Poly1305 under one key: HChaCha20 from RustCrypto, then
/// `ring`'s ChaCha20-Poly1305 under the subkey.
#[cfg(feature = "ring")]
#[derive(Clone)]
pub struct Cipher(chacha20::Key);

impl Cipher {
    /// The cipher under `key`.
    pub fn new(key: &ClusterKey) -> Cipher {
        #[cfg(not(feature = "ring"))]
        {
            use chacha20poly1305::KeyInit;
            Cipher(chacha20poly1305::XChaCha20Poly1305::new(&key.0.into()))
        }
        #[cfg(feature = "ring")]
        Cipher(key.0.into())
    }

    /// Encrypts `body` in place under the 24-byte `nonce`, authenticating
    /// `aad` with it; the tag.
    fn seal(&self, nonce: &[u8; 24], aad: &[u8], body: &mut [u8]) -> Option<[u8; TAG_LEN]> {
        #[cfg(not(feature = "ring"))]
        {
            use chacha20poly1305::aead::AeadInPlace;
            let tag = self
                .0
                .encrypt_in_place_detached(nonce.into(), aad, body)
                .ok()?;
            Some(tag.into())
        }
        #[cfg(feature = "ring")]
        {
            let (key, nonce) = self.subkey(nonce)?;
            let tag = key
                .seal_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), body)
                .ok()?;
            tag.as_ref().try_into().ok()
        }
    }

    /// Verifies and decrypts `body_and_tag` (the tag last) in place under
    /// the 24-byte `nonce` and `aad`; the plaintext's length.
    fn open(&self, nonce: &[u8; 24], aad: &[u8], body_and_tag: &mut [u8]) -> Option<usize> {
        let body_len = body_and_tag.len().checked_sub(TAG_LEN)?;
        #[cfg(not(feature = "ring"))]
        {
            use chacha20poly1305::aead::AeadInPlace;
            let (body, tag) = body_and_tag.split_at_mut(body_len);
            self.0
                .decrypt_in_place_detached(nonce.into(), aad, body, (&*tag).into())
                .ok()?;
        }
        #[cfg(feature = "ring")]
        {
            let (key, nonce) = self.subkey(nonce)?;
            key.open_in_place(nonce, ring::aead::Aad::from(aad), body_and_tag)
                .ok()?;
        }
        Some(body_len)
    }

    /// The ChaCha20-Poly1305 key and 12-byte nonce XChaCha20 derives from
    /// the 24-byte `nonce`.
    #[cfg(feature = "ring")]
    fn subkey(&self, nonce: &[u8; 24]) -> Option<(ring::aead::LessSafeKey, ring::aead::Nonce)> {
        use chacha20::cipher::consts::U10;
        let (head, tail) = nonce.split_at(16);
        let subkey = chacha20::hchacha::<U10>(&self.0, head.into());
        let key = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &subkey).ok()?;
        let mut short = [0u8; 12];
        short[4..].copy_from_slice(tail);
        Some((
            ring::aead::LessSafeKey::new(key),
            ring::aead::Nonce::assume_unique_for_key(short),
        ))
    }
}

/// Seals outgoing datagrams as one sender and opens incoming ones.
pub struct Sealer {
    cipher: Cipher,
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
            cipher: Cipher::new(key),
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
            .seal(&header.nonce(), head, body)
            .ok_or(SealError::TooLarge)?;
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
pub fn open<'a>(cipher: &Cipher, buf: &'a mut [u8]) -> Result<(Header, &'a [u8]), OpenError> {
    if buf.len() < HEADER_LEN + TAG_LEN || buf.len() > MAX_DATAGRAM {
        return Err(OpenError::Malformed);
    }
    let header = Header::parse(buf).ok_or(OpenError::Malformed)?;
    let (head, rest) = buf.split_at_mut(HEADER_LEN);
    let body_len = cipher
        .open(&header.nonce(), head, rest)
        .ok_or(OpenError::Authentication)?;
    Ok((header, &rest[..body_len]))
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

    /// The `ring` build against the portable code: the same bytes, and
    /// each opens what the other sealed.
    #[cfg(feature = "ring")]
    #[test]
    fn ring_and_the_portable_code_agree() {
        use chacha20poly1305::aead::{AeadInPlace, KeyInit};
        let mut rng = crate::rng::Rng::new(11);
        for len in (0..1300).step_by(37).chain([1, 63, 64, 65, 1128]) {
            let mut key = [0u8; 32];
            key.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
            let mut nonce = [0u8; 24];
            nonce.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
            let aad: [u8; 26] = core::array::from_fn(|i| i as u8);
            let plain: [u8; 1300] = core::array::from_fn(|i| (i * 7 + len) as u8);
            let portable = chacha20poly1305::XChaCha20Poly1305::new(&key.into());
            let fast = Cipher::new(&ClusterKey(key));

            let mut a = plain;
            let tag_a = portable
                .encrypt_in_place_detached(&nonce.into(), &aad, &mut a[..len])
                .unwrap();
            let mut b = [0u8; 1300 + TAG_LEN];
            b[..len].copy_from_slice(&plain[..len]);
            let tag_b = fast.seal(&nonce, &aad, &mut b[..len]).unwrap();
            assert_eq!(a[..len], b[..len], "ciphertext, {len} bytes");
            assert_eq!(tag_a.as_slice(), tag_b, "tag, {len} bytes");

            b[len..len + TAG_LEN].copy_from_slice(&tag_b);
            let mut c = b;
            assert_eq!(fast.open(&nonce, &aad, &mut c[..len + TAG_LEN]), Some(len));
            assert_eq!(c[..len], plain[..len]);
            portable
                .decrypt_in_place_detached(&nonce.into(), &aad, &mut b[..len], (&tag_b).into())
                .unwrap();
            assert_eq!(b[..len], plain[..len]);

            // A flipped bit (in the body, or the tag when there is none).
            let mut sealed = [0u8; 1300 + TAG_LEN];
            sealed[..len].copy_from_slice(&a[..len]);
            sealed[len..len + TAG_LEN].copy_from_slice(&tag_a);
            sealed[len / 2] ^= 1;
            assert_eq!(fast.open(&nonce, &aad, &mut sealed[..len + TAG_LEN]), None);
        }
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

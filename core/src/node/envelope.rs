//! Requests and responses carried whole over the reliable link.
//!
//! ```text
//! offset size field
//!      0    1  kind   0 = request, 1 = response (append-only)
//!      1    8  id     request id chosen by the sender of this hop, LE
//!      9    1  hops   how many times a request was forwarded
//!     10    …  body   postcard: (Target, Request) or Response
//! ```
//!
//! The fixed prefix lets a node forward a request by patching `id` and
//! `hops` in place, without a second message-sized buffer.

use serde::{Deserialize, Serialize};

use crate::member::Record;
use crate::router::KeyDigest;
use crate::{NodeId, Pool};

/// Length of the fixed envelope prefix.
pub const PREFIX_LEN: usize = 10;

/// Longest key a key-addressed message may name.
pub const MAX_KEY: usize = 256;

/// Most member records in one `Members` response page.
pub const MEMBERS_PAGE: usize = 4;

/// Whether an envelope is a request or a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvelopeKind {
    /// A request, to serve or forward.
    Request = 0,
    /// A response to a request this node sent.
    Response = 1,
}

/// The fixed envelope prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// Request or response.
    pub kind: EnvelopeKind,
    /// The request id of this hop.
    pub id: u64,
    /// Forwarding hops so far.
    pub hops: u8,
}

impl Prefix {
    /// Parses the prefix of `bytes`; the body follows at [`PREFIX_LEN`].
    pub fn parse(bytes: &[u8]) -> Option<Prefix> {
        let (&kind, rest) = bytes.split_first()?;
        let (id, rest) = rest.split_first_chunk::<8>()?;
        let (&hops, _) = rest.split_first()?;
        let kind = match kind {
            0 => EnvelopeKind::Request,
            1 => EnvelopeKind::Response,
            _ => return None,
        };
        Some(Prefix {
            kind,
            id: u64::from_le_bytes(*id),
            hops,
        })
    }

    /// Writes the prefix into the front of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Option<()> {
        let out = buf.get_mut(..PREFIX_LEN)?;
        out[0] = self.kind as u8;
        out[1..9].copy_from_slice(&self.id.to_le_bytes());
        out[9] = self.hops;
        Some(())
    }
}

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// The primary owner of a key in a pool, by the router.
    Key {
        /// The pool.
        pool: Pool,
        /// The key's digest.
        digest: KeyDigest,
    },
    /// Whichever node receives it (a client's contact node).
    Here,
}

/// What a request asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request<'a> {
    /// Deliver `payload` to the owner of `key`; it answers who it is.
    Send {
        /// The key, as the sender wrote it.
        key: &'a [u8],
        /// The message.
        payload: &'a [u8],
    },
    /// A page of the receiver's member table, starting at index `from`
    /// (index 0 is the receiver itself).
    Members {
        /// First index wanted.
        from: u16,
    },
}

/// A node's answer.
///
/// The `Members` page is larger than the other variants; without an
/// allocator it cannot be boxed, so the page is kept small instead.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The key's owner took the message.
    Sent {
        /// The owner that answered.
        by: NodeId,
        /// How many times the request was forwarded to reach it.
        hops: u8,
    },
    /// A page of the member table.
    Members {
        /// The records, from the requested index on.
        records: heapless::Vec<Record, MEMBERS_PAGE>,
        /// How many records the table holds in all.
        total: u16,
    },
    /// The request could not be served.
    Error(RemoteError),
}

/// Why a node could not serve a request. Append-only on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RemoteError {
    /// No live node serves the pool.
    NoOwner,
    /// The owner could not be reached in time; retry later.
    Unreachable,
    /// The serving node is out of room for requests; retry later.
    Busy,
    /// The request did not decode.
    Malformed,
}

impl core::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            RemoteError::NoOwner => "no live node serves that pool",
            RemoteError::Unreachable => "the key's owner could not be reached",
            RemoteError::Busy => "the node is busy; retry later",
            RemoteError::Malformed => "the request did not decode",
        })
    }
}

/// Encodes a whole request envelope into `buf`.
pub fn encode_request(
    buf: &mut [u8],
    id: u64,
    target: &Target,
    request: &Request<'_>,
) -> Option<usize> {
    Prefix {
        kind: EnvelopeKind::Request,
        id,
        hops: 0,
    }
    .emit(buf)?;
    let body = postcard::to_slice(&(target, request), buf.get_mut(PREFIX_LEN..)?).ok()?;
    Some(PREFIX_LEN + body.len())
}

/// Encodes a whole response envelope into `buf`.
pub fn encode_response(buf: &mut [u8], id: u64, response: &Response) -> Option<usize> {
    Prefix {
        kind: EnvelopeKind::Response,
        id,
        hops: 0,
    }
    .emit(buf)?;
    let body = postcard::to_slice(response, buf.get_mut(PREFIX_LEN..)?).ok()?;
    Some(PREFIX_LEN + body.len())
}

/// Decodes a request body (after the prefix).
pub fn decode_request(body: &[u8]) -> Option<(Target, Request<'_>)> {
    postcard::from_bytes(body).ok()
}

/// Decodes a response body (after the prefix).
pub fn decode_response(body: &[u8]) -> Option<Response> {
    postcard::from_bytes(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_and_pinned_bytes() {
        let mut buf = [0u8; 128];
        let req = Request::Send {
            key: b"k",
            payload: b"hi",
        };
        let n = encode_request(&mut buf, 258, &Target::Here, &req).unwrap();
        assert_eq!(
            &buf[..n],
            &[0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, b'k', 2, b'h', b'i']
        );
        let p = Prefix::parse(&buf[..n]).unwrap();
        assert_eq!((p.kind, p.id, p.hops), (EnvelopeKind::Request, 258, 0));
        assert_eq!(
            decode_request(&buf[PREFIX_LEN..n]),
            Some((Target::Here, req))
        );
    }

    #[test]
    fn response_round_trip() {
        let mut buf = [0u8; 64];
        let r = Response::Sent {
            by: NodeId(9),
            hops: 1,
        };
        let n = encode_response(&mut buf, 7, &r).unwrap();
        assert_eq!(&buf[..n], &[1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 1]);
        assert_eq!(decode_response(&buf[PREFIX_LEN..n]), Some(r));
        assert!(Prefix::parse(&[5; 10]).is_none());
        assert!(Prefix::parse(&[0; 9]).is_none());
    }
}

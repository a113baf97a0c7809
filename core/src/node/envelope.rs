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

use crate::fs::ChunkId;
use crate::member::Record;
use crate::repl::{Hlc, MAX_REPLICAS};
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

    // ---- asked of a coordinator (a client's contact) ----
    /// The cluster's chunk size and quorums.
    FsInfo,
    /// Store `data` as a chunk on its replicas; answers
    /// [`Response::ChunkWritten`] once `W` of them hold it durably.
    ChunkWrite {
        /// The chunk's bytes; its id is their SHA-256.
        data: &'a [u8],
    },
    /// Read a chunk, verified, from the first replica in rank that has a
    /// good copy; repairs the replicas that had none. Answers
    /// [`Response::Chunk`] followed by the bytes.
    ChunkRead {
        /// The chunk.
        id: ChunkId,
    },
    /// Which ranked nodes hold a chunk. Answers [`Response::Holders`].
    ChunkLocate {
        /// The chunk.
        id: ChunkId,
    },
    /// Write a record (a [`crate::repl::RecordKey`] store key) to its
    /// replicas under a fresh version later than `after` — or under `after`
    /// itself when `exact`, so two records written by one operation (a
    /// file and its directory entry) order the same against every other
    /// operation. Answers [`Response::RecordWritten`] once `W` replicas
    /// hold it durably.
    RecordWrite {
        /// The record's store key.
        key: &'a [u8],
        /// A version the new one must follow (the version the writer read),
        /// or the version to write under.
        after: Hlc,
        /// Write under `after` itself.
        exact: bool,
        /// A removal.
        tombstone: bool,
        /// The value.
        value: &'a [u8],
    },
    /// Read a record from `R` replicas; the newest wins and stale replicas
    /// are repaired. Answers [`Response::Record`] followed by the value.
    RecordRead {
        /// The record's store key.
        key: &'a [u8],
    },
    /// A page of the records under `prefix` (a pool and placement) held by
    /// the `replica`-th node in the placement's rank. Answers
    /// [`Response::Entries`]; the caller merges the replicas' pages.
    RecordList {
        /// A [`crate::repl::RecordKey::prefix`].
        prefix: &'a [u8],
        /// Only keys after this one.
        after: &'a [u8],
        /// Which replica, in rank order.
        replica: u8,
    },

    // ---- asked of a replica by a coordinator ----
    /// Store a chunk here.
    ChunkStore {
        /// Its id.
        id: ChunkId,
        /// Its bytes.
        data: &'a [u8],
    },
    /// Send a chunk held here (verified first).
    ChunkLoad {
        /// Its id.
        id: ChunkId,
    },
    /// Whether a good copy of a chunk is held here.
    ChunkHas {
        /// Its id.
        id: ChunkId,
        /// Asked by a node that will delete its own copy on a yes (a
        /// handoff): yes then also means the answering node is one of the
        /// chunk's owners in its own view, so it keeps its copy; a holder
        /// that is not answers [`RemoteError::NotOwner`].
        handoff: bool,
    },
    /// Merge a record version into the copy held here.
    RecordStore {
        /// The record's store key.
        key: &'a [u8],
        /// The version.
        version: Hlc,
        /// A removal.
        tombstone: bool,
        /// The value.
        value: &'a [u8],
    },
    /// Send the copy of a record held here.
    RecordLoad {
        /// The record's store key.
        key: &'a [u8],
    },
    /// A page of the records under `prefix` held here.
    RecordScan {
        /// A [`crate::repl::RecordKey::prefix`].
        prefix: &'a [u8],
        /// Only keys after this one.
        after: &'a [u8],
        /// The placement's replica count, echoed in the answer.
        replicas: u8,
    },
    /// A file still references this chunk in GC round `round`; an index
    /// chunk (`depth > 0`) passes the mark on to its children. No answer.
    Mark {
        /// The chunk.
        id: ChunkId,
        /// Its depth in its file's tree (0: a data chunk).
        depth: u8,
        /// The GC round.
        round: u64,
    },

    // ---- asked of a coordinator, again ----
    /// Mark chunk `id` and the tree below it (`depth` levels) as referenced
    /// in the current GC round, on its replicas: a put in progress keeps
    /// the chunks it has written but no file record names yet. Answers
    /// [`Response::Stored`] once the marks are on their way.
    ChunkMark {
        /// The chunk.
        id: ChunkId,
        /// Its depth in the tree being built (0: a data chunk).
        depth: u8,
    },

    // ---- asked of the receiver itself ----
    /// Declare the dead member `id` gone for good
    /// ([`crate::member::Membership::forget`]). Answers
    /// [`Response::Forgotten`].
    Forget {
        /// The member.
        id: NodeId,
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
    /// The cluster's file-system settings, as the coordinator has them.
    FsInfo {
        /// Bytes per chunk.
        chunk_size: u32,
        /// Replicas, write quorum, read quorum.
        n: u8,
        /// Write quorum.
        w: u8,
        /// Read quorum.
        r: u8,
        /// Length of a GC round, in milliseconds: a put whose chunks wait
        /// longer than half of one for their file record marks them again
        /// ([`Request::ChunkMark`]).
        gc_round_ms: u64,
    },
    /// A chunk reached its write quorum.
    ChunkWritten {
        /// Its id.
        id: ChunkId,
        /// The replicas that acknowledged it.
        holders: heapless::Vec<NodeId, MAX_REPLICAS>,
    },
    /// A chunk's bytes follow this response in the envelope.
    Chunk {
        /// The node that served it.
        by: NodeId,
    },
    /// The nodes holding a chunk, in rank order.
    Holders {
        /// Ranked candidates asked, each with whether it holds a good copy
        /// (`None`: no answer).
        nodes: heapless::Vec<(NodeId, Option<bool>), MAX_REPLICAS>,
    },
    /// A record write reached its quorum.
    RecordWritten {
        /// The version it was written under.
        version: Hlc,
    },
    /// A record; its value follows this response in the envelope.
    Record {
        /// Its version; [`Hlc::ZERO`] when no replica had it.
        version: Hlc,
        /// Whether it is a removal (or absent).
        tombstone: bool,
    },
    /// A page of records follows this response in the envelope: entries of
    /// `suffix length (u16 LE) | stored length (u16 LE) | suffix | stored`,
    /// with `stored` as [`crate::repl::Stored::encode`] writes it.
    Entries {
        /// The replica that listed them.
        by: NodeId,
        /// How many replicas the placement has.
        replicas: u8,
        /// Whether more entries follow the last one.
        more: bool,
    },
    /// A replica's acknowledgement of a durable write.
    Stored,
    /// Whether a replica holds a chunk.
    Has(bool),
    /// The member was forgotten (its record now says it left).
    Forgotten,
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
    /// No node in the pool has room: the store is full.
    Full,
    /// Too few replicas acknowledged: not enough live nodes to meet the
    /// write (or read) quorum. Nothing was made visible.
    Quorum {
        /// Replicas that said yes.
        got: u8,
        /// Replicas needed.
        need: u8,
    },
    /// No such chunk or record.
    NotFound,
    /// Stored bytes failed their integrity check.
    Corrupt,
    /// A replica's store failed (an I/O error).
    Io,
    /// A value is larger than the cluster takes.
    TooLarge,
    /// The node holds the chunk but, in its view, is not one of its owners:
    /// it will not keep it, so its copy cannot stand for a handoff's.
    NotOwner,
    /// No such member in the node's table.
    UnknownMember,
    /// The member is alive (or only suspect) in the node's view: only a
    /// dead member can be forgotten.
    NotDead,
    /// A node cannot forget itself.
    IsSelf,
}

impl core::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            RemoteError::NoOwner => "no live node serves that pool",
            RemoteError::Unreachable => "the key's owner could not be reached",
            RemoteError::Busy => "the node is busy; retry later",
            RemoteError::Malformed => "the request did not decode",
            RemoteError::Full => "no node has room: the store is full",
            RemoteError::Quorum { got, need } => {
                return write!(
                    f,
                    "not enough live nodes to meet the quorum ({got} of {need} replicas answered)"
                );
            }
            RemoteError::NotFound => "no such chunk or record",
            RemoteError::Corrupt => "stored data failed its integrity check",
            RemoteError::Io => "a replica's store failed",
            RemoteError::TooLarge => "the value is larger than the cluster takes",
            RemoteError::NotOwner => "the node does not keep that chunk (not one of its owners)",
            RemoteError::UnknownMember => "the node knows no such member",
            RemoteError::NotDead => {
                "that member is not dead in the node's view: only a dead member can be forgotten"
            }
            RemoteError::IsSelf => {
                "a node cannot forget itself: stop it cleanly instead, and it leaves"
            }
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

/// Decodes a response body (after the prefix), and the bytes that follow
/// it (a chunk, a record's value, a page of entries).
pub fn decode_response(body: &[u8]) -> Option<(Response, &[u8])> {
    postcard::take_from_bytes(body).ok()
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
        assert_eq!(decode_response(&buf[PREFIX_LEN..n]), Some((r, &[][..])));
        assert!(Prefix::parse(&[5; 10]).is_none());
        assert!(Prefix::parse(&[0; 9]).is_none());
    }
}

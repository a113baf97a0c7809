//! Many file-system requests in flight at once, with retries.
//!
//! A command describes its work as a [`Work`]: jobs to start, the request
//! each one sends, and what to do with each answer. [`drive`] keeps up to a
//! window of them in flight through [`Requests`], retries the failures that
//! may pass (a busy or full node, a missed quorum, a timeout) with backoff,
//! and stops when no job is left or the work says so.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use shoal_core::link::FRAGMENT;
use shoal_core::node::HOST_QUEUE;
use shoal_core::node::{OpFailure, RemoteError, Request};

use crate::client::{Client, MAX_IN_FLIGHT, Reply, Requests};

/// Requests a command keeps in flight: the client's operation table holds
/// 128 ([`MAX_IN_FLIGHT`]), and a host coordinates up to 256 quorum
/// operations at once (each ChunkWrite or ChunkRead holds one), so two
/// clients at full window fit. 128 chunks of 2 KiB are 256 fragments, one
/// link window ([`HOST_WINDOW`](shoal_core::node::HOST_WINDOW)).
pub const WINDOW: usize = MAX_IN_FLIGHT;

/// Requests in flight for chunks of `chunk_size` bytes: at most
/// [`WINDOW`], and few enough that their messages fit the link's queue to
/// one peer ([`HOST_QUEUE`] fragments) with room to spare. A node drops an
/// answer that does not fit its queue to the client (the request then
/// times out), and the contact's queue to each replica carries the chunks
/// it stores there.
pub fn chunk_window(chunk_size: u32) -> usize {
    // A chunk's envelope adds a few dozen bytes.
    let fragments = (chunk_size as usize + 64).div_ceil(FRAGMENT);
    (usize::from(HOST_QUEUE) / fragments)
        .saturating_sub(2)
        .clamp(1, WINDOW)
}

/// Tries per job, the first included.
const ATTEMPTS: u32 = 6;
/// Tries per job while the coordinator answers `Busy`: it is only
/// crowded, so keep trying for longer.
const BUSY_ATTEMPTS: u32 = 30;
/// Tries per job that times out: each try waits the whole timeout.
const TIMEOUT_ATTEMPTS: u32 = 3;

/// The wait before try `attempt + 1`: 10 ms, doubling, at most 1 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(10u64 << attempt.min(7)).min(Duration::from_secs(1))
}

/// Whether a failure may pass when the request is sent again: a busy node,
/// a node out of room (the coordinator then skips it), too few replicas
/// answering, or a request lost on the way.
pub fn retryable(f: &OpFailure) -> bool {
    matches!(
        f,
        OpFailure::TimedOut
            | OpFailure::Undeliverable
            | OpFailure::Remote(
                RemoteError::Busy
                    | RemoteError::Full
                    | RemoteError::Quorum { .. }
                    | RemoteError::Unreachable
            )
    )
}

/// Reads or writes, for the wording of a missed quorum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A read or a listing.
    Read,
    /// A write.
    Write,
}

/// A failure as a person reads it.
pub fn explain(f: OpFailure, access: Access) -> anyhow::Error {
    let quorum = match access {
        Access::Read => "read",
        Access::Write => "write",
    };
    match f {
        OpFailure::Remote(RemoteError::Full) => {
            anyhow!("no node has room: the cluster's stores are full")
        }
        OpFailure::Remote(RemoteError::Quorum { got, need }) => anyhow!(
            "not enough live nodes to meet the {quorum} quorum ({got} of {need} replicas \
             answered)"
        ),
        OpFailure::Remote(RemoteError::NoOwner) => {
            anyhow!("no live node serves the file system's pools")
        }
        OpFailure::TimedOut => anyhow!(
            "the node did not answer in time: it or the replicas it asks may be overloaded \
             or failing; retry, or raise --timeout"
        ),
        OpFailure::Undeliverable => {
            anyhow!("the request could not be delivered: the node stopped answering")
        }
        OpFailure::Remote(e) => anyhow!("the node could not serve the request: {e}"),
    }
}

/// What a command asks of the cluster, as jobs.
pub trait Work {
    /// One request's worth of work, and what the answer is for.
    type Job;

    /// The next job to start, if one is ready now. `None` while the work
    /// waits for answers; when nothing is in flight either, the work is
    /// over.
    fn next(&mut self) -> Result<Option<Self::Job>>;

    /// The request `job` sends.
    fn request<'a>(&'a self, job: &'a Self::Job) -> Request<'a>;

    /// `job` was answered.
    fn done(&mut self, job: Self::Job, reply: Reply) -> Result<()>;

    /// `job` failed for good. `Ok` carries on without it.
    fn failed(&mut self, job: Self::Job, failure: OpFailure) -> Result<()> {
        let _ = job;
        Err(explain(failure, Access::Read))
    }

    /// Whether `job` is worth sending again after `failure`.
    fn retry(&self, job: &Self::Job, failure: &OpFailure) -> bool {
        let _ = job;
        retryable(failure)
    }

    /// Whether to stop now, leaving any requests in flight unanswered.
    fn stop(&self) -> bool {
        false
    }

    /// When [`Work::stop`] may turn true without an answer arriving.
    fn wake(&self) -> Option<Instant> {
        None
    }
}

/// Runs `work` through `client` with up to `window` requests in flight.
///
/// The window adapts to the coordinator: a node that answers `Busy` (its
/// table of quorum operations is full, with other clients' requests too)
/// halves it, and every answered window of requests widens it by one
/// again, up to `window`.
pub fn drive<W: Work>(client: &mut Client, work: &mut W, window: usize) -> Result<()> {
    let max = window.max(1) as f64;
    let mut cwnd = max;
    let mut ops: Requests<(W::Job, u32)> = Requests::new();
    // Jobs waiting to be sent again, with when.
    let mut later: Vec<(Instant, W::Job, u32)> = Vec::new();
    // A job the core had no room for.
    let mut refused: Option<(W::Job, u32)> = None;
    loop {
        if work.stop() {
            return Ok(());
        }
        let now = Instant::now();
        let limit = (cwnd as usize).max(1);
        let mut core_busy = false;
        while ops.len() < limit {
            let job = if let Some(j) = refused.take() {
                j
            } else if let Some(i) = later.iter().position(|(at, _, _)| *at <= now) {
                let (_, job, attempt) = later.swap_remove(i);
                (job, attempt)
            } else if let Some(job) = work.next()? {
                (job, 1)
            } else {
                break;
            };
            let sent = ops.send(client, &work.request(&job.0))?;
            match sent {
                Some(op) => ops.track(op, job),
                None => {
                    refused = Some(job);
                    core_busy = true;
                    break;
                }
            }
        }
        if ops.is_empty() && later.is_empty() && refused.is_none() {
            return Ok(());
        }
        // Wait for an answer; and, when more could be sent, for the next
        // retry to fall due.
        let mut until = work.wake();
        let soonest = |u: Option<Instant>, t: Instant| Some(u.map_or(t, |u| u.min(t)));
        if core_busy {
            // The core's link slots are taken by messages not yet
            // acknowledged: an answer frees them, or a moment passes.
            if ops.is_empty() {
                until = soonest(until, now + Duration::from_millis(5));
            }
        } else if ops.len() < limit
            && let Some(at) = later.iter().map(|(at, _, _)| *at).min()
        {
            until = soonest(until, at);
        }
        for ((job, attempt), result) in ops.wait(client, until)? {
            let busy = matches!(result, Err(OpFailure::Remote(RemoteError::Busy)));
            if busy {
                cwnd = (cwnd / 2.0).max(1.0);
            } else if result.is_ok() {
                cwnd = (cwnd + 1.0 / cwnd).min(max);
            }
            let tries = match result {
                Err(OpFailure::Remote(RemoteError::Busy)) => BUSY_ATTEMPTS,
                Err(OpFailure::TimedOut | OpFailure::Undeliverable) => TIMEOUT_ATTEMPTS,
                _ => ATTEMPTS,
            };
            match result {
                Ok(reply) => work.done(job, reply)?,
                Err(f) if attempt < tries && work.retry(&job, &f) => {
                    later.push((Instant::now() + backoff(attempt), job, attempt + 1));
                }
                Err(f) => work.failed(job, f)?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_fit_the_peer_queue() {
        assert_eq!(chunk_window(2048), WINDOW);
        assert_eq!(chunk_window(1024), WINDOW);
        // 14 fragments each: 512 / 14 = 36, less 2 to spare.
        assert_eq!(chunk_window(15 * 1024), 34);
        for size in shoal_core::fs::CHUNK_SIZES.step_by(512) {
            let w = chunk_window(size);
            let fragments = (size as usize + 64).div_ceil(FRAGMENT);
            assert!(
                w >= 1 && w * fragments <= usize::from(HOST_QUEUE),
                "{size}: {w}"
            );
        }
    }
}

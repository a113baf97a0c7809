//! A simulated disk: what a node wrote survives a crash only once flushed.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::rc::Rc;

use shoal_core::store::{FlushBegun, Space, Storage, StoreError, Usage};

type Map = BTreeMap<(u8, Vec<u8>), Vec<u8>>;
/// Writes not yet durable: `None` is a removal.
type Batch = BTreeMap<(u8, Vec<u8>), Option<Vec<u8>>>;

/// A machine's disk, shared by the machine (which crashes it) and the
/// node's [`SimStore`] (which writes it).
#[derive(Debug, Default)]
pub struct Disk {
    durable: Map,
    /// Writes since the last flush: `None` is a removal.
    pending: Batch,
    /// Bytes of keys and values the disk holds at most, if bounded.
    pub capacity: Option<u64>,
    /// Flushes that made something durable.
    pub flushes: u64,
    /// Flushes run in the background, as on a host's disk: a flush begun
    /// ends (and its writes become durable) only when the node next polls,
    /// after at least one more input, and a crash before then loses it.
    pub background: bool,
    /// The batch a background flush is writing, under its ticket.
    inflight: Option<(u64, Batch)>,
    next_ticket: u64,
}

impl Disk {
    /// A crash: every write not yet flushed is lost.
    pub fn crash(&mut self) {
        self.pending.clear();
        self.inflight = None;
    }

    /// Makes `batch` durable.
    fn write(&mut self, batch: Batch) {
        if !batch.is_empty() {
            self.flushes += 1;
        }
        for (k, v) in batch {
            match v {
                Some(v) => self.durable.insert(k, v),
                None => self.durable.remove(&k),
            };
        }
    }

    /// The current (visible) contents.
    fn view(&self) -> Map {
        let mut m = self.durable.clone();
        let batches = self.inflight.iter().map(|(_, b)| b).chain([&self.pending]);
        for batch in batches {
            for (k, v) in batch {
                match v {
                    Some(v) => m.insert(k.clone(), v.clone()),
                    None => m.remove(k),
                };
            }
        }
        m
    }

    fn get(&self, k: &(u8, Vec<u8>)) -> Option<&Vec<u8>> {
        let uncommitted = self
            .pending
            .get(k)
            .or_else(|| self.inflight.as_ref().and_then(|(_, b)| b.get(k)));
        match uncommitted {
            Some(v) => v.as_ref(),
            None => self.durable.get(k),
        }
    }

    fn bytes(&self) -> u64 {
        self.view()
            .iter()
            .map(|((_, k), v)| (k.len() + v.len()) as u64)
            .sum()
    }

    /// Every key in `space`, durable or not.
    pub fn keys(&self, space: Space) -> Vec<Vec<u8>> {
        self.view()
            .into_keys()
            .filter(|(s, _)| *s == space as u8)
            .map(|(_, k)| k)
            .collect()
    }

    /// Overwrites a stored value in place, bypassing the node (to corrupt it).
    pub fn tamper(&mut self, space: Space, key: &[u8], value: &[u8]) {
        self.durable
            .insert((space as u8, key.to_vec()), value.to_vec());
        self.pending.remove(&(space as u8, key.to_vec()));
    }
}

/// The [`Storage`] a simulated node writes through.
#[derive(Clone, Debug, Default)]
pub struct SimStore(pub Rc<RefCell<Disk>>);

impl Storage for SimStore {
    fn get(&self, space: Space, key: &[u8], out: &mut [u8]) -> Result<Option<usize>, StoreError> {
        let d = self.0.borrow();
        let Some(v) = d.get(&(space as u8, key.to_vec())) else {
            return Ok(None);
        };
        out.get_mut(..v.len())
            .ok_or(StoreError::BufferTooSmall)?
            .copy_from_slice(v);
        Ok(Some(v.len()))
    }

    fn put(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut d = self.0.borrow_mut();
        if let Some(cap) = d.capacity {
            let old = d
                .get(&(space as u8, key.to_vec()))
                .map_or(0, |v| (key.len() + v.len()) as u64);
            if d.bytes() - old + (key.len() + value.len()) as u64 > cap {
                return Err(StoreError::Full);
            }
        }
        d.pending
            .insert((space as u8, key.to_vec()), Some(value.to_vec()));
        Ok(())
    }

    fn remove(&mut self, space: Space, key: &[u8]) -> Result<bool, StoreError> {
        let mut d = self.0.borrow_mut();
        let had = d.get(&(space as u8, key.to_vec())).is_some();
        d.pending.insert((space as u8, key.to_vec()), None);
        Ok(had)
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        let mut d = self.0.borrow_mut();
        if let Some((_, batch)) = d.inflight.take() {
            d.write(batch);
        }
        let pending = std::mem::take(&mut d.pending);
        d.write(pending);
        Ok(())
    }

    fn flush_begin(&mut self) -> FlushBegun {
        if !self.0.borrow().background {
            return FlushBegun::Done(self.flush());
        }
        let mut d = self.0.borrow_mut();
        if let Some((_, batch)) = d.inflight.take() {
            d.write(batch);
        }
        if d.pending.is_empty() {
            return FlushBegun::Done(Ok(()));
        }
        d.next_ticket += 1;
        let ticket = d.next_ticket;
        let batch = std::mem::take(&mut d.pending);
        d.inflight = Some((ticket, batch));
        FlushBegun::Running(ticket)
    }

    fn flush_poll(&mut self) -> Option<(u64, Result<(), StoreError>)> {
        let mut d = self.0.borrow_mut();
        let (ticket, batch) = d.inflight.take()?;
        d.write(batch);
        Some((ticket, Ok(())))
    }

    fn next_key(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        out: &mut [u8],
    ) -> Result<Option<usize>, StoreError> {
        let d = self.0.borrow();
        let view = d.view();
        let s = space as u8;
        let lo = match after {
            Some(a) if a >= prefix => Bound::Excluded((s, a.to_vec())),
            _ => Bound::Included((s, prefix.to_vec())),
        };
        let Some(((ks, k), _)) = view.range((lo, Bound::Unbounded)).next() else {
            return Ok(None);
        };
        if *ks != s || !k.starts_with(prefix) {
            return Ok(None);
        }
        out.get_mut(..k.len())
            .ok_or(StoreError::BufferTooSmall)?
            .copy_from_slice(k);
        Ok(Some(k.len()))
    }

    fn usage(&self) -> Usage {
        let d = self.0.borrow();
        Usage {
            bytes: d.bytes(),
            entries: d.view().len() as u64,
            capacity: d.capacity,
        }
    }
}

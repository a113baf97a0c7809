//! Member records as operators read them: one row per member, as a table or
//! JSON, and the router's view of the same list.

use std::fmt::Write as _;

use serde::Serialize;
use shoal_core::member::{Record, State};
use shoal_core::router::{self, Candidate, KeyDigest};
use shoal_core::{NodeId, NodeKind, Pool};

/// One member, in the shape `shoal status --json` prints and the node's
/// `GET /status` uses.
#[derive(Clone, Debug, Serialize)]
pub struct MemberRow {
    /// 16 hex digits.
    pub id: String,
    /// The node's name.
    pub name: String,
    /// Its advertised address.
    pub addr: String,
    /// `host` or `mcu`.
    pub kind: &'static str,
    /// `alive`, `suspect`, `dead` or `left`.
    pub state: &'static str,
    /// Router weight.
    pub weight: u32,
    /// Pools it serves.
    pub pools: Vec<&'static str>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Boot epoch of the record.
    pub epoch: u64,
    /// SWIM incarnation within that epoch.
    pub incarnation: u32,
}

impl MemberRow {
    /// The row for `record`.
    pub fn new(record: &Record) -> MemberRow {
        let p = &record.profile;
        MemberRow {
            id: record.id.to_string(),
            name: p.name.to_string(),
            addr: p.addr.to_string(),
            kind: match p.kind {
                NodeKind::Host => "host",
                NodeKind::Mcu => "mcu",
            },
            state: record.state.name(),
            weight: p.weight,
            pools: p.pools.iter().map(Pool::name).collect(),
            tags: p.tags.iter().map(|t| t.to_string()).collect(),
            epoch: record.version.epoch,
            incarnation: record.version.incarnation,
        }
    }
}

/// Rows sorted by name, then id.
pub fn rows(records: &[Record]) -> Vec<MemberRow> {
    let mut rows: Vec<MemberRow> = records.iter().map(MemberRow::new).collect();
    rows.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    rows
}

/// The rows as an aligned text table with a header line.
pub fn table(rows: &[MemberRow]) -> String {
    let header = [
        "ID", "NAME", "ADDRESS", "KIND", "STATE", "WEIGHT", "POOLS", "TAGS",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                r.name.clone(),
                r.addr.clone(),
                r.kind.to_string(),
                r.state.to_string(),
                r.weight.to_string(),
                list(r.pools.iter().map(|p| p.to_string())),
                list(r.tags.iter().cloned()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: &[&str]| {
        let mut l = String::new();
        for (i, (c, w)) in cols.iter().zip(widths).enumerate() {
            if i + 1 == cols.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &cells {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

fn list(items: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = items.collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

/// The router's candidates among `records`: live members (alive or
/// suspect), as a member's own view hands them to the router.
pub fn candidates(records: &[Record]) -> Vec<Candidate> {
    records
        .iter()
        .filter(|r| r.state.is_live())
        .map(|r| Candidate::new(r.id, r.profile.weight, r.profile.pools))
        .collect()
}

/// The owner of `key` in `pool` by the router over `records`.
pub fn owner(records: &[Record], pool: Pool, key: &[u8]) -> Option<NodeId> {
    router::primary(candidates(records), pool, &KeyDigest::of(key))
}

/// The name of `id` in `records`, or `?` when it is not listed.
pub fn name_of(records: &[Record], id: NodeId) -> String {
    records
        .iter()
        .find(|r| r.id == id)
        .map_or_else(|| "?".into(), |r| r.profile.name.to_string())
}

/// How many of `records` are alive.
pub fn alive(records: &[Record]) -> usize {
    records.iter().filter(|r| r.state == State::Alive).count()
}

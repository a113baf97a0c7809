//! Snapshots of a running node, and their three renderings: the `/status`
//! JSON, the `/metrics` Prometheus text and the `/` HTML page.
//!
//! The driver takes a [`Snapshot`] between two inputs (cheap: a copy of the
//! member table and the counters); rendering happens on the HTTP side, off
//! the node loop.

use std::fmt::Write as _;

use serde::Serialize;
use shoal_core::NodeKind;
use shoal_core::link::LinkStats;
use shoal_core::member::{Record, State};
use shoal_core::node::NodeStats;
use shoal_core::store::Usage;

/// One member as operators see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberView {
    /// Node id, 16 hex digits.
    pub id: String,
    /// Operator-facing name.
    pub name: String,
    /// Advertised address.
    pub addr: String,
    /// `host` or `mcu`.
    pub kind: &'static str,
    /// Router weight.
    pub weight: u32,
    /// Pool names.
    pub pools: Vec<&'static str>,
    /// Scheduler tags.
    pub tags: Vec<String>,
    /// `alive`, `suspect`, `dead` or `left`.
    pub state: &'static str,
    /// Boot epoch.
    pub epoch: u64,
    /// SWIM incarnation within the epoch.
    pub incarnation: u32,
}

impl MemberView {
    /// The view of one member record.
    pub fn of(r: &Record) -> MemberView {
        MemberView {
            id: r.id.to_string(),
            name: r.profile.name.to_string(),
            addr: r.profile.addr.to_string(),
            kind: match r.profile.kind {
                NodeKind::Host => "host",
                NodeKind::Mcu => "mcu",
            },
            weight: r.profile.weight,
            pools: r.profile.pools.iter().map(|p| p.name()).collect(),
            tags: r.profile.tags.iter().map(|t| t.to_string()).collect(),
            state: r.state.name(),
            epoch: r.version.epoch,
            incarnation: r.version.incarnation,
        }
    }
}

/// The node at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// This node.
    pub node: MemberView,
    /// Every other member it knows of, in any state.
    pub members: Vec<MemberView>,
    /// Its counters.
    pub stats: NodeStats,
    /// How full its store is.
    pub store: Usage,
}

/// The states, in the order metrics and pages list them.
const STATES: [State; 4] = [State::Alive, State::Suspect, State::Dead, State::Left];

/// Retransmitted link frames.
fn link_retransmits(link: &LinkStats) -> u64 {
    link.retransmits
}

impl Snapshot {
    /// The `/status` body: `{"node": {...}, "members": [...]}`.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Status<'a> {
            node: &'a MemberView,
            members: &'a [MemberView],
        }
        let status = Status {
            node: &self.node,
            members: &self.members,
        };
        // Cannot fail: every field is a string, a number or a list of them.
        serde_json::to_string(&status).unwrap_or_default()
    }

    /// Members by state, this node included.
    pub fn count(&self, state: State) -> usize {
        let name = state.name();
        std::iter::once(&self.node)
            .chain(&self.members)
            .filter(|m| m.state == name)
            .count()
    }

    /// The `/metrics` body, in Prometheus text format 0.0.4.
    pub fn to_prometheus(&self) -> String {
        let s = &self.stats;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric(
            "shoal_datagrams_in_total",
            "counter",
            "Datagrams received.",
            &[("", s.datagrams_in)],
        );
        metric(
            "shoal_datagrams_out_total",
            "counter",
            "Datagrams sent.",
            &[("", s.datagrams_out)],
        );
        metric(
            "shoal_bytes_in_total",
            "counter",
            "Bytes received.",
            &[("", s.bytes_in)],
        );
        metric(
            "shoal_bytes_out_total",
            "counter",
            "Bytes sent.",
            &[("", s.bytes_out)],
        );
        let d = &s.drops;
        metric(
            "shoal_drops_total",
            "counter",
            "Received datagrams dropped, by reason.",
            &[
                ("{reason=\"malformed\"}", d.malformed),
                ("{reason=\"authentication\"}", d.authentication),
                ("{reason=\"replay\"}", d.replay),
                ("{reason=\"bad_body\"}", d.bad_body),
                ("{reason=\"no_room\"}", d.no_room),
            ],
        );
        metric(
            "shoal_repairs_total",
            "counter",
            "Copies of chunks and records sent to replicas that lacked them (read repair and anti-entropy).",
            &[("", s.repairs)],
        );
        metric(
            "shoal_handoffs_total",
            "counter",
            "Chunks deleted here once the replicas the router now names confirmed a copy.",
            &[("", s.handed_off)],
        );
        metric(
            "shoal_reclaimed_chunks_total",
            "counter",
            "Chunks deleted here because no file referenced them any more.",
            &[("", s.reclaimed)],
        );
        metric(
            "shoal_sweep_keys_total",
            "counter",
            "Records and chunks the anti-entropy sweep visited.",
            &[("", s.swept)],
        );
        metric(
            "shoal_busy_total",
            "counter",
            "Requests or replies dropped or refused because a queue was full.",
            &[("", s.busy)],
        );
        metric(
            "shoal_link_retransmits_total",
            "counter",
            "Link frames sent again after no acknowledgement.",
            &[("", link_retransmits(&s.link))],
        );
        let labels = STATES.map(|st| format!("{{state=\"{}\"}}", st.name()));
        let counts: Vec<(&str, u64)> = STATES
            .iter()
            .zip(&labels)
            .map(|(st, l)| (l.as_str(), self.count(*st) as u64))
            .collect();
        metric(
            "shoal_members",
            "gauge",
            "Members by state as this node sees them, itself included.",
            &counts,
        );
        metric(
            "shoal_store_bytes",
            "gauge",
            "Bytes of keys and values in the store.",
            &[("", self.store.bytes)],
        );
        out
    }

    /// The `/` page: the member table, reloading itself every 2 seconds.
    pub fn to_html(&self) -> String {
        let mut out = String::new();
        let n = &self.node;
        let _ = write!(
            out,
            "<!doctype html>\n<html><head><meta charset=\"utf-8\">\
             <meta http-equiv=\"refresh\" content=\"2\">\
             <title>shoal · {name}</title>\n<style>\
             body{{font:14px system-ui,sans-serif;margin:2em}}\
             table{{border-collapse:collapse}}\
             td,th{{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:left}}\
             td.n{{font-family:monospace}}\
             .alive{{color:#17803d}}.suspect{{color:#b26b00}}.dead{{color:#b3261e}}.left{{color:#777}}\
             </style></head><body>\n<h1>{name}</h1>\n<p>node <code>{id}</code> at {addr}, \
             epoch {epoch} · {alive} alive, {suspect} suspect, {dead} dead, {left} left · \
             <a href=\"/status\">status</a> · <a href=\"/metrics\">metrics</a></p>\n",
            name = escape(&n.name),
            id = n.id,
            addr = escape(&n.addr),
            epoch = n.epoch,
            alive = self.count(State::Alive),
            suspect = self.count(State::Suspect),
            dead = self.count(State::Dead),
            left = self.count(State::Left),
        );
        out.push_str(
            "<table>\n<tr><th>id</th><th>name</th><th>address</th><th>kind</th>\
             <th>weight</th><th>pools</th><th>tags</th><th>state</th>\
             <th>epoch</th><th>incarnation</th></tr>\n",
        );
        for m in std::iter::once(n).chain(&self.members) {
            let _ = writeln!(
                out,
                "<tr><td class=\"n\">{id}{me}</td><td>{name}</td><td class=\"n\">{addr}</td>\
                 <td>{kind}</td><td>{weight}</td><td>{pools}</td><td>{tags}</td>\
                 <td class=\"{state}\">{state}</td><td>{epoch}</td><td>{inc}</td></tr>",
                id = m.id,
                me = if std::ptr::eq(m, n) {
                    " (this node)"
                } else {
                    ""
                },
                name = escape(&m.name),
                addr = escape(&m.addr),
                kind = m.kind,
                weight = m.weight,
                pools = m.pools.join(", "),
                tags = escape(&m.tags.join(", ")),
                state = m.state,
                epoch = m.epoch,
                inc = m.incarnation,
            );
        }
        out.push_str("</table>\n</body></html>\n");
        out
    }
}

/// Escapes text for HTML: names and tags come from other nodes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::member::{Profile, Version};
    use shoal_core::{NodeId, Pool, PoolSet};

    fn record(id: u64, name: &str, state: State) -> Record {
        let mut tags = shoal_core::id::Tags::new();
        tags.push("gpu".try_into().unwrap()).unwrap();
        Record {
            id: NodeId(id),
            profile: Profile {
                name: name.try_into().unwrap(),
                addr: "127.0.0.1:7000".parse().unwrap(),
                kind: NodeKind::Host,
                weight: 100,
                pools: PoolSet::EMPTY.with(Pool::Meta).with(Pool::Data),
                tags,
            },
            version: Version {
                epoch: 3,
                incarnation: 1,
            },
            state,
        }
    }

    fn snapshot() -> Snapshot {
        let mut stats = NodeStats {
            datagrams_in: 12,
            ..NodeStats::default()
        };
        stats.drops.authentication = 4;
        Snapshot {
            node: MemberView::of(&record(1, "a", State::Alive)),
            members: vec![
                MemberView::of(&record(0xabc, "<b>", State::Suspect)),
                MemberView::of(&record(3, "c", State::Dead)),
            ],
            stats,
            store: Usage {
                bytes: 99,
                ..Usage::default()
            },
        }
    }

    #[test]
    fn status_json_shape() {
        let v: serde_json::Value = serde_json::from_str(&snapshot().to_json()).unwrap();
        let m = &v["members"][0];
        assert_eq!(m["id"], "0000000000000abc");
        assert_eq!(m["name"], "<b>");
        assert_eq!(m["addr"], "127.0.0.1:7000");
        assert_eq!(m["kind"], "host");
        assert_eq!(m["weight"], 100);
        assert_eq!(m["pools"], serde_json::json!(["meta", "data"]));
        assert_eq!(m["tags"], serde_json::json!(["gpu"]));
        assert_eq!(m["state"], "suspect");
        assert_eq!(m["epoch"], 3);
        assert_eq!(m["incarnation"], 1);
        assert_eq!(v["node"]["id"], "0000000000000001");
        assert_eq!(v["members"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn prometheus_text() {
        let text = snapshot().to_prometheus();
        for line in [
            "shoal_datagrams_in_total 12",
            "shoal_drops_total{reason=\"authentication\"} 4",
            "shoal_drops_total{reason=\"no_room\"} 0",
            "shoal_link_retransmits_total 0",
            "shoal_reclaimed_chunks_total 0",
            "shoal_sweep_keys_total 0",
            "shoal_members{state=\"alive\"} 1",
            "shoal_members{state=\"suspect\"} 1",
            "shoal_members{state=\"dead\"} 1",
            "shoal_members{state=\"left\"} 0",
            "shoal_store_bytes 99",
            "# TYPE shoal_members gauge",
            "# TYPE shoal_bytes_out_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
    }

    #[test]
    fn html_refreshes_and_escapes() {
        let page = snapshot().to_html();
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"2\">"));
        assert!(page.contains("&lt;b&gt;") && !page.contains("<b>"));
        assert!(page.contains("0000000000000abc"));
    }
}

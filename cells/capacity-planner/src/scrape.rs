//! Usage from the cells: read each cell's FGA data plane `/metrics` (every
//! worker on its own port), turn per-store request counters into rates and
//! keep the tuple counts.
//!
//! Targets come from the Conductor's local routing table (`routes.json` in
//! its data directory): `{cell: {artifact: {version, port, workers: [{pid,
//! port}]}}}`. Rates need two readings of the same worker: the first reading
//! of a worker only seeds its counters; a counter that went down (the
//! worker restarted) starts over.

use crate::history::SampleRow;
use crate::Sample;
use std::collections::{BTreeMap, HashMap};

/// One worker to scrape.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub cell: String,
    /// The worker's own port on 127.0.0.1.
    pub port: u16,
    pub pid: u64,
}

/// The workers of `artifact` in a routing table.
pub fn targets_from_routes(routes: &serde_json::Value, artifact: &str) -> Vec<Target> {
    let mut out = Vec::new();
    for (cell, arts) in routes.as_object().into_iter().flatten() {
        let workers = arts[artifact]["workers"].as_array();
        for w in workers.into_iter().flatten() {
            let port = w["port"].as_u64().and_then(|p| u16::try_from(p).ok());
            if let Some(port) = port {
                out.push(Target {
                    cell: cell.clone(),
                    port,
                    pid: w["pid"].as_u64().unwrap_or(0),
                });
            }
        }
    }
    out.sort();
    out
}

/// One metric line: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Metric {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// Parse the Prometheus text exposition format (comments skipped; a line
/// that does not parse is skipped, never fatal).
pub fn parse_metrics(text: &str) -> Vec<Metric> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Metric> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = Vec::new();
    let rest = if let Some(body) = rest.strip_prefix('{') {
        // Labels: k="v" pairs; values may hold escaped quotes and commas.
        let mut chars = body.char_indices().peekable();
        let mut end = None;
        loop {
            while matches!(chars.peek(), Some((_, ' ' | ','))) {
                chars.next();
            }
            match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut val = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => val.push('\n'),
                        Some((_, c)) => val.push(c),
                        None => return None,
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => val.push(c),
                }
            }
            if !closed {
                return None;
            }
            labels.push((key.trim().to_string(), val));
        }
        &body[end? + 1..]
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Metric {
        name: name.to_string(),
        labels,
        value,
    })
}

/// What one worker reported: per store, its request counter and tuples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub requests: BTreeMap<String, f64>,
    pub tuples: BTreeMap<String, f64>,
}

/// The FGA data plane's per-store metrics in a scrape.
pub fn reading(text: &str) -> Reading {
    let mut r = Reading::default();
    for m in parse_metrics(text) {
        let Some(store) = m.label("store") else {
            continue;
        };
        if !m.value.is_finite() || m.value < 0.0 {
            continue;
        }
        match m.name.as_str() {
            "fga_store_requests_total" => {
                r.requests.insert(store.to_string(), m.value);
            }
            "fga_store_tuples" => {
                r.tuples.insert(store.to_string(), m.value);
            }
            _ => {}
        }
    }
    r
}

/// Turns successive readings into samples. Pure: time is an input.
#[derive(Default)]
pub struct RateKeeper {
    /// Last counter per (cell, worker port, pid, store), with its time.
    last: HashMap<(String, u16, u64, String), (f64, f64)>,
}

impl RateKeeper {
    /// Fold one round of readings (taken at `now`, Unix seconds) into one
    /// sample per (tenant, cell): request rates summed over the cell's
    /// workers, tuples the most any worker reports (they share a database).
    pub fn observe(&mut self, now: f64, round: &[(Target, Reading)]) -> Vec<SampleRow> {
        let mut acc: BTreeMap<(String, String), (f64, f64, bool)> = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        for (t, r) in round {
            for (store, total) in &r.requests {
                let key = (t.cell.clone(), t.port, t.pid, store.clone());
                let e = acc
                    .entry((store.clone(), t.cell.clone()))
                    .or_insert((0.0, 0.0, false));
                if let Some((before, at)) = self.last.get(&key) {
                    if *total >= *before && now > *at {
                        e.0 += (total - before) / (now - at);
                        e.2 = true;
                    }
                }
                self.last.insert(key.clone(), (*total, now));
                seen.insert(key);
            }
            for (store, n) in &r.tuples {
                let e = acc
                    .entry((store.clone(), t.cell.clone()))
                    .or_insert((0.0, 0.0, false));
                e.1 = e.1.max(*n);
            }
        }
        // Workers that went away are forgotten.
        self.last.retain(|k, _| seen.contains(k));
        acc.into_iter()
            // Without a rate yet (first reading) there is nothing to record.
            .filter(|(_, (_, _, rated))| *rated)
            .map(|((tenant, cell), (rps, tuples, _))| SampleRow {
                tenant,
                cell,
                sample: Sample {
                    at: now,
                    check_rps: rps,
                    tuples,
                    connections: 0.0,
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str =
        "# HELP fga_store_requests_total x\n# TYPE fga_store_requests_total counter\n\
fga_store_requests_total{store=\"01A\"} 100\nfga_store_requests_total{store=\"01B\"} 10\n\
fga_store_tuples{store=\"01A\"} 5000\nfga_requests_total{method=\"check\",status=\"200\"} 7\n\
weird{a=\"x\\\"y,z\",store=\"01C\"} 3\nbroken{store=\"01A\" 3\nnovalue\n";

    #[test]
    fn parses_the_text_format() {
        let m = parse_metrics(TEXT);
        assert_eq!(m.len(), 5, "{m:?}");
        assert_eq!(m[4].label("a"), Some("x\"y,z"));
        assert_eq!(m[4].label("store"), Some("01C"));
        let r = reading(TEXT);
        assert_eq!(r.requests.get("01A"), Some(&100.0));
        assert_eq!(r.tuples.get("01A"), Some(&5000.0));
        assert_eq!(r.tuples.get("01B"), None);
    }

    fn target(cell: &str, port: u16) -> Target {
        Target {
            cell: cell.into(),
            port,
            pid: u64::from(port),
        }
    }

    fn r(reqs: &[(&str, f64)], tuples: &[(&str, f64)]) -> Reading {
        Reading {
            requests: reqs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            tuples: tuples.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn rates_sum_over_workers_and_survive_restarts() {
        let mut k = RateKeeper::default();
        let (w1, w2) = (target("c1", 1), target("c1", 2));
        // The first round only seeds the counters.
        let first = k.observe(
            0.0,
            &[
                (w1.clone(), r(&[("s", 100.0)], &[("s", 10.0)])),
                (w2.clone(), r(&[("s", 50.0)], &[("s", 10.0)])),
            ],
        );
        assert!(first.is_empty());
        let second = k.observe(
            10.0,
            &[
                (w1.clone(), r(&[("s", 200.0)], &[("s", 12.0)])),
                (w2.clone(), r(&[("s", 150.0)], &[("s", 11.0)])),
            ],
        );
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].sample.check_rps, 20.0); // 10/s + 10/s
        assert_eq!(second[0].sample.tuples, 12.0);
        // Worker 2 restarted (its counter went down): only worker 1 counts.
        let third = k.observe(
            20.0,
            &[(w1, r(&[("s", 300.0)], &[])), (w2, r(&[("s", 5.0)], &[]))],
        );
        assert_eq!(third[0].sample.check_rps, 10.0);
    }

    #[test]
    fn targets_come_from_the_routing_table() {
        let routes = serde_json::json!({
            "c1": {"fga-dataplane": {"version": "1", "port": 9000,
                   "workers": [{"pid": 11, "port": 9100}, {"pid": 12, "port": 9101}]},
                   "other": {"workers": [{"pid": 1, "port": 1}]}},
            "c2": {"sample-service": {"workers": [{"pid": 2, "port": 2}]}}
        });
        let t = targets_from_routes(&routes, "fga-dataplane");
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].cell.as_str(), t[0].port), ("c1", 9100));
    }
}

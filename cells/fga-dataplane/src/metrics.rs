//! Prometheus metrics of the data plane: requests and latency per API
//! method, requests and tuples per store (what the capacity planner reads).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Inner {
    methods: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    stores: BTreeMap<String, u64>,
    throttled: BTreeMap<String, u64>,
}

/// Most stores with series of their own; requests of further stores are
/// counted under `store="other"` (a store id is a ULID, so never "other").
pub const MAX_STORE_SERIES: usize = 10_000;

/// The label of the stores beyond [`MAX_STORE_SERIES`].
pub const OTHER_STORES: &str = "other";

pub struct Metrics {
    inner: Mutex<Inner>,
    max_stores: usize,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::with_max_stores(MAX_STORE_SERIES)
    }
}

impl Metrics {
    pub fn with_max_stores(max_stores: usize) -> Metrics {
        Metrics {
            inner: Mutex::new(Inner::default()),
            max_stores,
        }
    }

    /// Count a request. `store` must be a live store (the API checks it
    /// first), so that made-up ids add no series.
    pub fn observe(&self, method: &str, status: u16, store: Option<&str>, secs: f64) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *m.methods.entry((method.to_string(), status)).or_insert(0) += 1;
        let h = m.latency.entry(method.to_string()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
        if let Some(s) = store {
            let own = m.stores.len() - usize::from(m.stores.contains_key(OTHER_STORES));
            let s = if m.stores.contains_key(s) || own < self.max_stores {
                s
            } else {
                OTHER_STORES
            };
            *m.stores.entry(s.to_string()).or_insert(0) += 1;
            if status == 429 {
                *m.throttled.entry(s.to_string()).or_insert(0) += 1;
            }
        }
    }

    /// Drop a deleted store's series.
    pub fn forget_store(&self, store: &str) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.stores.remove(store);
        m.throttled.remove(store);
    }

    /// How many stores have series of their own (for tests).
    pub fn store_series(&self) -> usize {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.stores.keys().filter(|k| *k != OTHER_STORES).count()
    }

    /// Render; `tuples` is the tuple count per store, read at scrape time.
    pub fn render(&self, tuples: &[(String, i64)]) -> String {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut o = String::new();
        let _ = writeln!(o, "# HELP fga_requests_total API requests by method and status.\n# TYPE fga_requests_total counter");
        for ((method, status), n) in &m.methods {
            let _ = writeln!(
                o,
                "fga_requests_total{{method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(o, "# HELP fga_request_duration_seconds API latency by method.\n# TYPE fga_request_duration_seconds histogram");
        for (method, h) in &m.latency {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "fga_request_duration_seconds_bucket{{method=\"{method}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                o,
                "fga_request_duration_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                o,
                "fga_request_duration_seconds_sum{{method=\"{method}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                o,
                "fga_request_duration_seconds_count{{method=\"{method}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(o, "# HELP fga_store_requests_total Requests per store (rate() gives the request rate).\n# TYPE fga_store_requests_total counter");
        for (s, n) in &m.stores {
            let _ = writeln!(o, "fga_store_requests_total{{store=\"{s}\"}} {n}");
        }
        let _ = writeln!(o, "# HELP fga_store_throttled_total Requests refused by the store's rate limit.\n# TYPE fga_store_throttled_total counter");
        for (s, n) in &m.throttled {
            let _ = writeln!(o, "fga_store_throttled_total{{store=\"{s}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP fga_store_tuples Tuples stored per store.\n# TYPE fga_store_tuples gauge"
        );
        for (s, n) in tuples {
            let _ = writeln!(o, "fga_store_tuples{{store=\"{s}\"}} {n}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_series_are_bounded_and_forgotten() {
        let m = Metrics::with_max_stores(2);
        for s in ["A", "B", "C", "D"] {
            m.observe("Check", 200, Some(s), 0.001);
        }
        m.observe("Check", 429, Some("A"), 0.001);
        assert_eq!(m.store_series(), 2);
        let text = m.render(&[]);
        assert!(
            text.contains("fga_store_requests_total{store=\"other\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("fga_store_throttled_total{store=\"A\"} 1"),
            "{text}"
        );
        m.forget_store("A");
        assert_eq!(m.store_series(), 1);
        m.observe("Check", 200, Some("E"), 0.001);
        assert!(m
            .render(&[])
            .contains("fga_store_requests_total{store=\"E\"} 1"));
    }
}

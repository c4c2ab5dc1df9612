//! Prometheus metrics, rendered in the text exposition format.

use conductor_core::train::TrainStatus;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    events: AtomicU64,
    batches: AtomicU64,
    lease_grants: AtomicU64,
    lease_wait_micros: AtomicU64,
    http_requests: AtomicU64,
    finished: Mutex<BTreeMap<&'static str, u64>>,
    steps: Mutex<BTreeMap<&'static str, Histogram>>,
}

impl Metrics {
    pub fn events_persisted(&self, n: usize) {
        self.events.fetch_add(n as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }
    pub fn events_total(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }
    pub fn lease_granted(&self, waited: Duration) {
        self.lease_grants.fetch_add(1, Ordering::Relaxed);
        self.lease_wait_micros
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
    }
    pub fn http_request(&self) {
        self.http_requests.fetch_add(1, Ordering::Relaxed);
    }
    pub fn train_finished(&self, s: TrainStatus) {
        *self
            .finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(s.as_str())
            .or_insert(0) += 1;
    }
    pub fn step_duration(&self, kind: &'static str, d: Duration) {
        let secs = d.as_secs_f64();
        let mut m = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        let h = m.entry(kind).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Render every metric; `trains_by_state` comes from the store.
    pub fn render(&self, trains_by_state: &[(String, i64)]) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP conductor_trains Trains by state.\n# TYPE conductor_trains gauge"
        );
        for s in TrainStatus::ALL {
            let n = trains_by_state
                .iter()
                .find(|(k, _)| k == s.as_str())
                .map_or(0, |(_, n)| *n);
            let _ = writeln!(o, "conductor_trains{{state=\"{}\"}} {n}", s.as_str());
        }
        let _ = writeln!(o, "# HELP conductor_trains_finished_total Trains finished since start, by outcome.\n# TYPE conductor_trains_finished_total counter");
        for (k, v) in self
            .finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(o, "conductor_trains_finished_total{{state=\"{k}\"}} {v}");
        }
        let _ = writeln!(o, "# HELP conductor_events_persisted_total Train events appended to the store.\n# TYPE conductor_events_persisted_total counter");
        let _ = writeln!(
            o,
            "conductor_events_persisted_total {}",
            self.events.load(Ordering::Relaxed)
        );
        let _ = writeln!(o, "# HELP conductor_event_batches_total Transactions that appended events.\n# TYPE conductor_event_batches_total counter");
        let _ = writeln!(
            o,
            "conductor_event_batches_total {}",
            self.batches.load(Ordering::Relaxed)
        );
        let _ = writeln!(o, "# HELP conductor_lease_grants_total Cell leases granted.\n# TYPE conductor_lease_grants_total counter");
        let _ = writeln!(
            o,
            "conductor_lease_grants_total {}",
            self.lease_grants.load(Ordering::Relaxed)
        );
        let _ = writeln!(o, "# HELP conductor_lease_wait_seconds_total Time spent waiting for cell leases.\n# TYPE conductor_lease_wait_seconds_total counter");
        let _ = writeln!(
            o,
            "conductor_lease_wait_seconds_total {}",
            self.lease_wait_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "# HELP conductor_http_requests_total API requests served.\n# TYPE conductor_http_requests_total counter");
        let _ = writeln!(
            o,
            "conductor_http_requests_total {}",
            self.http_requests.load(Ordering::Relaxed)
        );
        let _ = writeln!(o, "# HELP conductor_step_duration_seconds Duration of steps run on cells.\n# TYPE conductor_step_duration_seconds histogram");
        for (k, h) in self.steps.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "conductor_step_duration_seconds_bucket{{step=\"{k}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                o,
                "conductor_step_duration_seconds_bucket{{step=\"{k}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                o,
                "conductor_step_duration_seconds_sum{{step=\"{k}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                o,
                "conductor_step_duration_seconds_count{{step=\"{k}\"}} {}",
                h.count
            );
        }
        o
    }
}

//! Per-store rate limiting with token buckets, and bursting above a store's
//! limit while the cell has spare capacity.
//!
//! Pure: every call takes the current instant (seconds as `f64`), so the
//! rules are testable without clocks.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A store's limit: sustained requests per second, and the bucket size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub rate: f64,
    pub burst: f64,
}

impl Limit {
    pub fn valid(&self) -> bool {
        self.rate.is_finite()
            && self.burst.is_finite()
            && self.rate > 0.0
            && self.burst >= 1.0
            && self.rate <= 1e7
            && self.burst <= 1e8
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: f64,
}

impl Bucket {
    fn refill(&mut self, l: Limit, now: f64) {
        self.tokens = (self.tokens + (now - self.at).max(0.0) * l.rate).min(l.burst);
        self.at = now;
    }
}

/// What the limiter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// Allowed above the store's limit, on the cell's spare capacity.
    pub burst: bool,
    pub limit: f64,
    pub remaining: f64,
    /// Seconds until the bucket is full again.
    pub reset: f64,
    /// Seconds until one request would be allowed (when refused).
    pub retry_after: f64,
}

/// The limiter of one cell.
#[derive(Debug)]
pub struct Limiter {
    /// The limit of stores without one of their own (None: unlimited).
    pub default: Option<Limit>,
    per_store: HashMap<String, Limit>,
    buckets: HashMap<String, Bucket>,
    /// The cell's own capacity; above-limit requests may use what is spare.
    capacity: Option<(Limit, Bucket)>,
}

impl Limiter {
    pub fn new(default: Option<Limit>, cell_capacity: Option<Limit>) -> Limiter {
        Limiter {
            default,
            per_store: HashMap::new(),
            buckets: HashMap::new(),
            capacity: cell_capacity.map(|l| {
                (
                    l,
                    Bucket {
                        tokens: l.burst,
                        at: 0.0,
                    },
                )
            }),
        }
    }

    pub fn set(&mut self, store: &str, l: Option<Limit>) {
        match l {
            Some(l) => self.per_store.insert(store.to_string(), l),
            None => self.per_store.remove(store),
        };
        self.buckets.remove(store);
    }

    /// Forget a deleted store: its limit and its bucket.
    pub fn forget(&mut self, store: &str) {
        self.per_store.remove(store);
        self.buckets.remove(store);
    }

    pub fn limit_of(&self, store: &str) -> Option<Limit> {
        self.per_store.get(store).copied().or(self.default)
    }

    pub fn limits(&self) -> &HashMap<String, Limit> {
        &self.per_store
    }

    /// Take one request for `store` at `now` (seconds).
    pub fn take(&mut self, store: &str, now: f64) -> Option<Decision> {
        let l = self.limit_of(store)?;
        let b = self.buckets.entry(store.to_string()).or_insert(Bucket {
            tokens: l.burst,
            at: now,
        });
        b.refill(l, now);
        // The cell's spare capacity, spent by every request.
        let spare = match &mut self.capacity {
            Some((cl, cb)) => {
                cb.refill(*cl, now);
                let spare = cb.tokens >= cl.burst * 0.5;
                if cb.tokens >= 1.0 {
                    cb.tokens -= 1.0;
                }
                spare
            }
            None => false,
        };
        let reset = (l.burst - b.tokens).max(0.0) / l.rate;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Some(Decision {
                allowed: true,
                burst: false,
                limit: l.rate,
                remaining: b.tokens.floor(),
                reset,
                retry_after: 0.0,
            });
        }
        let retry_after = (1.0 - b.tokens) / l.rate;
        Some(Decision {
            allowed: spare,
            burst: spare,
            limit: l.rate,
            remaining: 0.0,
            reset,
            retry_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_rate() {
        let mut l = Limiter::new(
            Some(Limit {
                rate: 10.0,
                burst: 5.0,
            }),
            None,
        );
        for _ in 0..5 {
            assert!(l.take("s", 0.0).expect("limited").allowed);
        }
        let d = l.take("s", 0.0).expect("limited");
        assert!(!d.allowed && d.retry_after > 0.0 && d.retry_after <= 0.1 + 1e-9);
        assert!(
            l.take("s", 0.1).expect("limited").allowed,
            "one token after 100 ms"
        );
        // Another store has its own bucket.
        assert!(l.take("t", 0.1).expect("limited").allowed);
    }

    #[test]
    fn bursts_only_on_spare_cell_capacity() {
        let cell = Limit {
            rate: 100.0,
            burst: 100.0,
        };
        let mut l = Limiter::new(
            Some(Limit {
                rate: 1.0,
                burst: 1.0,
            }),
            Some(cell),
        );
        assert!(l.take("s", 0.0).expect("d").allowed);
        let d = l.take("s", 0.0).expect("d");
        assert!(d.allowed && d.burst, "the cell is idle: burst");
        // Use up the cell: bursting stops.
        for _ in 0..60 {
            l.take("other", 0.0);
        }
        assert!(!l.take("s", 0.0).expect("d").allowed);
    }

    #[test]
    fn per_store_limits_override_the_default() {
        let mut l = Limiter::new(None, None);
        assert!(l.take("s", 0.0).is_none(), "no default: unlimited");
        l.set(
            "s",
            Some(Limit {
                rate: 1.0,
                burst: 1.0,
            }),
        );
        assert!(l.take("s", 0.0).expect("d").allowed);
        assert!(!l.take("s", 0.0).expect("d").allowed);
        l.set("s", None);
        assert!(l.take("s", 0.0).is_none());
        assert!(!Limit {
            rate: 0.0,
            burst: 1.0
        }
        .valid());
    }
}

//! Per-cell leases: two operations on the same cell (a train's steps on it, a
//! resize, another train) are serialized on that cell only; everything else
//! proceeds. Waiters are served first come, first served.
//!
//! Leases live in memory; who holds what is derivable from the durable state
//! of trains (and resize operations), and is restored from it on start.

use crate::metrics::Metrics;
use conductor_core::LeaseHolder;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

type Grant = Box<dyn FnOnce() + Send>;

struct Waiter {
    holder: LeaseHolder,
    since: Instant,
    grant: Grant,
}

#[derive(Default)]
struct CellLease {
    holder: Option<LeaseHolder>,
    waiters: VecDeque<Waiter>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LeaseView {
    pub cell: String,
    pub holder: Option<LeaseHolder>,
    pub waiting: Vec<LeaseHolder>,
}

pub struct Leases {
    cells: Mutex<HashMap<String, CellLease>>,
    metrics: Arc<Metrics>,
}

impl Leases {
    pub fn new(metrics: Arc<Metrics>) -> Leases {
        Leases {
            cells: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CellLease>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every update is a single assignment), so a poisoned lock is usable.
        self.cells.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mark `holder` as holding `cell` (restoring state after a restart).
    pub fn hold(&self, cell: &str, holder: &LeaseHolder) {
        self.lock().entry(cell.to_string()).or_default().holder = Some(holder.clone());
    }

    /// Ask for `cell`. `grant` runs once the lease is ours (at once if free or
    /// already ours). A second request by a waiting holder is ignored.
    pub fn acquire(&self, cell: &str, holder: &LeaseHolder, grant: impl FnOnce() + Send + 'static) {
        // The callback runs either now or later: share it between both paths.
        let slot = Arc::new(Mutex::new(Some(grant)));
        let later = slot.clone();
        let take = |s: &Mutex<Option<_>>| s.lock().unwrap_or_else(|p| p.into_inner()).take();
        if self.try_acquire(cell, holder, move || {
            if let Some(g) = take(&later) {
                g()
            }
        }) {
            if let Some(g) = take(&slot) {
                g()
            }
        }
    }

    /// Like [`Leases::acquire`], but when the lease is free (or already ours)
    /// return `true` at once *without* running `later`; otherwise queue
    /// `later` to run when it is granted and return `false`.
    pub fn try_acquire(
        &self,
        cell: &str,
        holder: &LeaseHolder,
        later: impl FnOnce() + Send + 'static,
    ) -> bool {
        let mut m = self.lock();
        let l = m.entry(cell.to_string()).or_default();
        match &l.holder {
            None => l.holder = Some(holder.clone()),
            Some(h) if h == holder => {}
            Some(_) => {
                if !l.waiters.iter().any(|w| &w.holder == holder) {
                    l.waiters.push_back(Waiter {
                        holder: holder.clone(),
                        since: Instant::now(),
                        grant: Box::new(later),
                    });
                }
                return false;
            }
        }
        drop(m);
        self.metrics.lease_granted(std::time::Duration::ZERO);
        true
    }

    /// Release `cell` if `holder` holds it (handing it to the next waiter), or
    /// withdraw `holder`'s pending request.
    pub fn release(&self, cell: &str, holder: &LeaseHolder) {
        let next = {
            let mut m = self.lock();
            let Some(l) = m.get_mut(cell) else { return };
            if l.holder.as_ref() == Some(holder) {
                l.holder = None;
                match l.waiters.pop_front() {
                    Some(w) => {
                        l.holder = Some(w.holder.clone());
                        Some(w)
                    }
                    None => None,
                }
            } else {
                l.waiters.retain(|w| &w.holder != holder);
                None
            }
        };
        if let Some(w) = next {
            self.metrics.lease_granted(w.since.elapsed());
            (w.grant)();
        }
    }

    pub fn view(&self) -> Vec<LeaseView> {
        let m = self.lock();
        let mut v: Vec<LeaseView> = m
            .iter()
            .filter(|(_, l)| l.holder.is_some() || !l.waiters.is_empty())
            .map(|(c, l)| LeaseView {
                cell: c.clone(),
                holder: l.holder.clone(),
                waiting: l.waiters.iter().map(|w| w.holder.clone()).collect(),
            })
            .collect();
        v.sort_by(|a, b| a.cell.cmp(&b.cell));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn train(id: &str) -> LeaseHolder {
        LeaseHolder::Train(id.into())
    }

    #[test]
    fn serializes_per_cell_only() {
        let l = Leases::new(Arc::new(Metrics::default()));
        let n = Arc::new(AtomicUsize::new(0));
        let bump = |n: &Arc<AtomicUsize>| {
            let n = n.clone();
            move || {
                n.fetch_add(1, Ordering::SeqCst);
            }
        };
        l.acquire("a", &train("t1"), bump(&n));
        l.acquire("b", &train("t2"), bump(&n));
        l.acquire("a", &train("t2"), bump(&n)); // waits
        assert_eq!(n.load(Ordering::SeqCst), 2);
        l.release("a", &train("t1"));
        assert_eq!(n.load(Ordering::SeqCst), 3);
        assert_eq!(l.view()[0].holder, Some(train("t2")));
        // Withdrawing a request that is still waiting.
        l.acquire("b", &train("t3"), bump(&n));
        l.release("b", &train("t3"));
        l.release("b", &train("t2"));
        assert_eq!(n.load(Ordering::SeqCst), 3);
        assert!(l.view().iter().all(|v| v.cell != "b"));
    }
}

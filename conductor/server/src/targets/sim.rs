//! A simulated target for the benchmark and the engine tests: every deploy
//! takes a fixed time and is counted in memory, nothing else.
//!
//! A deploy waits on another system and takes no CPU here. The waits are
//! kept by one timer thread, which sleeps until the earliest deadline and
//! then answers every deploy due by then: tokio's timer rounds each sleep
//! up to the next millisecond (a 20 ms deploy would take up to 21), and
//! spinning to the deadline instead would take the cores from the store's
//! writer, whose commits are what the benchmark measures.

use crate::engine::{BoxFut, Executor, Outcome, RollbackRequest, StepRequest};
use conductor_core::pipeline::Step;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub struct SimExecutor {
    pub deploy_time: Duration,
    /// Deploys done, by idempotency key.
    pub deploys: Mutex<HashMap<String, u32>>,
    timer: Arc<Timer>,
}

impl SimExecutor {
    pub fn new(deploy_time: Duration) -> Self {
        SimExecutor {
            deploy_time,
            deploys: Mutex::default(),
            timer: Timer::start(),
        }
    }
}

impl Executor for SimExecutor {
    fn run_step(&self, req: StepRequest) -> BoxFut<'_, Outcome> {
        Box::pin(async move {
            if matches!(req.train.steps.get(req.step), Some(Step::Deploy(_))) {
                self.timer.wait(self.deploy_time).await;
                *self
                    .deploys
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(req.key.clone())
                    .or_insert(0) += 1;
            }
            Outcome::ok("simulated")
        })
    }
    fn rollback(&self, _req: RollbackRequest) -> BoxFut<'_, Outcome> {
        Box::pin(async move { Outcome::ok("simulated rollback") })
    }
}

type Due = (Reverse<Instant>, u64);

/// Deadlines kept by one thread. It stops when the last `SimExecutor`
/// holding it is dropped (its queue is then empty and `stop` set).
struct Timer {
    queue: Mutex<TimerQueue>,
    changed: Condvar,
}

#[derive(Default)]
struct TimerQueue {
    heap: BinaryHeap<Due>,
    waiting: HashMap<u64, oneshot::Sender<()>>,
    next: u64,
    stop: bool,
}

impl Timer {
    fn start() -> Arc<Timer> {
        let t = Arc::new(Timer {
            queue: Mutex::default(),
            changed: Condvar::new(),
        });
        let weak = Arc::downgrade(&t);
        std::thread::Builder::new()
            .name("sim-timer".into())
            .spawn(move || {
                while let Some(t) = weak.upgrade() {
                    if !t.tick() {
                        break;
                    }
                }
            })
            .expect("start the simulated target's timer thread");
        t
    }

    async fn wait(&self, d: Duration) {
        let (tx, rx) = oneshot::channel();
        {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let id = q.next;
            q.next += 1;
            q.heap.push((Reverse(Instant::now() + d), id));
            q.waiting.insert(id, tx);
        }
        self.changed.notify_one();
        let _ = rx.await;
    }

    /// Wait for the next deadline (at most 100 ms, so that the thread sees
    /// its timer dropped) and answer what is due. False: stop.
    fn tick(&self) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.stop {
            return false;
        }
        let now = Instant::now();
        let until = q
            .heap
            .peek()
            .map_or(now + Duration::from_millis(100), |(Reverse(at), _)| *at)
            .min(now + Duration::from_millis(100));
        if until > now {
            // A condvar wait is a futex wait with a precise timeout.
            q = self
                .changed
                .wait_timeout(q, until - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let now = Instant::now();
        while let Some((Reverse(at), id)) = q.heap.peek().copied() {
            if at > now {
                break;
            }
            q.heap.pop();
            if let Some(tx) = q.waiting.remove(&id) {
                let _ = tx.send(());
            }
        }
        true
    }
}

impl Drop for SimExecutor {
    fn drop(&mut self) {
        self.timer
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.timer.changed.notify_one();
    }
}

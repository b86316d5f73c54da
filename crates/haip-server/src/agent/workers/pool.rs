//! The workers attached to this node and how jobs are shared among them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use super::link::Job;

/// The connected workers.
#[derive(Default)]
pub struct WorkerPool {
    workers: Mutex<Vec<Seat>>,
    next_id: AtomicU64,
    dispatch_failures: AtomicU64,
}

/// One connected worker, as the pool sees it.
struct Seat {
    id: u64,
    jobs: mpsc::UnboundedSender<Job>,
    open_runs: Arc<AtomicUsize>,
}

/// A worker's place in the pool, held by its connection: jobs arrive on `jobs`; dropping
/// it takes the worker out of the pool.
pub struct WorkerSeat {
    pub id: u64,
    pub jobs: mpsc::UnboundedReceiver<Job>,
    open_runs: Arc<AtomicUsize>,
    pool: Arc<WorkerPool>,
}

impl WorkerSeat {
    /// Tells the pool how many runs the worker has open (its load, for dispatch).
    pub fn set_open_runs(&self, n: usize) {
        self.open_runs.store(n, Ordering::Relaxed);
    }

    /// Leaves the pool; returns the jobs given to it that it never took.
    pub fn leave(mut self) -> Vec<Job> {
        self.pool.lock().retain(|s| s.id != self.id);
        let mut left = Vec::new();
        while let Ok(job) = self.jobs.try_recv() {
            left.push(job);
        }
        left
    }
}

impl Drop for WorkerSeat {
    fn drop(&mut self) {
        self.pool.lock().retain(|s| s.id != self.id);
    }
}

/// A worker's load, for `/stats` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLoad {
    pub id: u64,
    pub open_runs: usize,
}

impl WorkerPool {
    pub fn new() -> Arc<WorkerPool> {
        Arc::new(WorkerPool::default())
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Seat>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new worker joins.
    pub fn join(self: &Arc<Self>) -> WorkerSeat {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let open_runs = Arc::new(AtomicUsize::new(0));
        self.lock().push(Seat {
            id,
            jobs: tx,
            open_runs: open_runs.clone(),
        });
        WorkerSeat {
            id,
            jobs: rx,
            open_runs,
            pool: self.clone(),
        }
    }

    /// Gives the job to the worker with the fewest open runs (the longest connected among
    /// equals); the job comes back when no worker is connected.
    #[allow(clippy::result_large_err)] // the job comes back whole, to be failed
    pub fn dispatch(&self, mut job: Job) -> Result<u64, Job> {
        let mut workers = self.lock();
        loop {
            let Some(i) = (0..workers.len())
                .min_by_key(|&i| (workers[i].open_runs.load(Ordering::Relaxed), workers[i].id))
            else {
                self.dispatch_failures.fetch_add(1, Ordering::Relaxed);
                return Err(job);
            };
            let seat = &workers[i];
            // Counted at once, so that a burst of jobs spreads before the worker's
            // connection reports its load.
            seat.open_runs.fetch_add(1, Ordering::Relaxed);
            match seat.jobs.send(job) {
                Ok(()) => return Ok(seat.id),
                // Its connection is ending: try the others.
                Err(mpsc::error::SendError(back)) => {
                    job = back;
                    workers.remove(i);
                }
            }
        }
    }

    /// The connected workers and their open runs.
    pub fn loads(&self) -> Vec<WorkerLoad> {
        self.lock()
            .iter()
            .map(|s| WorkerLoad {
                id: s.id,
                open_runs: s.open_runs.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Messages that found no worker to answer them.
    pub fn dispatch_failures(&self) -> u64 {
        self.dispatch_failures.load(Ordering::Relaxed)
    }
}

//! Giving memory back to the operating system once a load is over.
//!
//! mimalloc keeps a heap per thread. A block freed on another thread than the one that
//! allocated it (a message made by one worker, dropped by another when its session
//! expires) goes on its owner's list of delayed frees, and that list is only worked
//! through when the owner allocates again. A worker that goes idle after a load therefore
//! keeps every page such frees would empty: the server's RSS stayed at its peak until new
//! traffic came. So each worker, when it runs out of work, collects its heap: the delayed
//! frees are done, and pages left empty go back to the system. At most once a second per
//! thread, so that a busy server, whose workers park often, pays nothing noticeable.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The least time between two collections on one thread.
const COLLECT_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static LAST_COLLECT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Called by each runtime worker as it parks (has nothing to do).
pub fn on_worker_idle() {
    let now = Instant::now();
    let due = LAST_COLLECT.with(|last| match last.get() {
        Some(at) if now.duration_since(at) < COLLECT_EVERY => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        // SAFETY: mi_collect only works through this thread's own heap.
        unsafe { libmimalloc_sys::mi_collect(false) };
    }
}

//! Giving memory back to the operating system once a load is over.
//!
//! mimalloc keeps a heap per thread. A block freed on another thread than the one that
//! allocated it (a message made by one worker, dropped by another when its session
//! expires) goes on its owner's list of delayed frees, and that list is only worked
//! through when the owner allocates again. A worker that goes idle after a load therefore
//! keeps every page such frees would empty: the server's RSS stayed at its peak until new
//! traffic came. So each worker, when it runs out of work, collects its heap: the delayed
//! frees are done, and pages left empty go back to the system. At most every 100 ms per
//! thread: measured, a busy server (whose workers park often) pays nothing noticeable for
//! it in `haip bench stream` (docs/PERFORMANCE.md).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The least time between two collections on one thread: short, because a worker that
/// parks after a load may not wake again for a while, and what it has not collected by
/// then stays in the RSS.
const COLLECT_EVERY: Duration = Duration::from_millis(100);

thread_local! {
    static LAST_COLLECT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Allocator settings of the server. mimalloc reads them from the environment as the
/// process loads, before `main`: the first arena is reserved then, so setting them from
/// the program is too late.
///
/// `ARENA_EAGER_COMMIT=0`: memory is committed as it is used rather than a whole arena at
/// once. Then a page the allocator gives back leaves the RSS, and measured on
/// `haip bench stream` the server's CPU per message halved (fewer page faults and
/// purges of committed memory); see docs/PERFORMANCE.md.
const SERVER_SETTINGS: [(&str, &str); 1] = [("MIMALLOC_ARENA_EAGER_COMMIT", "0")];

/// For `haip serve`: runs the program again in place (same process id, same arguments)
/// with [`SERVER_SETTINGS`] in its environment, unless they are there already (an
/// operator's own values win). Returns when nothing had to change, or when the program
/// could not be run again: the server then runs with the allocator's defaults.
#[cfg(unix)]
pub fn run_with_allocator_settings() {
    use std::os::unix::process::CommandExt;
    let missing: Vec<_> = SERVER_SETTINGS
        .iter()
        .filter(|(name, _)| std::env::var_os(name).is_none())
        .collect();
    if missing.is_empty() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    // Started through the dynamic loader (`ld-linux… ./haip serve`), the executable is the
    // loader, which would take `serve` for the program: run as started instead.
    if exe
        .file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with("ld-"))
    {
        return;
    }
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    command.args(args);
    for (name, value) in missing {
        command.env(name, value);
    }
    // `exec` returns only if it failed, and then it has already reset SIGPIPE to its
    // default (for the program it was to run): ignore it again, as Rust programs do, so
    // that a closed pipe gives an error instead of killing the server.
    let error = command.exec();
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    eprintln!(
        "haip serve: could not start again with the allocator's settings ({error}); running \
         with its defaults. Set MIMALLOC_ARENA_EAGER_COMMIT=0 to use less memory."
    );
}

#[cfg(not(unix))]
pub fn run_with_allocator_settings() {}

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
        // SAFETY: mi_collect may be called from any thread at any time; with `force` it
        // also frees what this thread's heap caches and purges freed pages of the whole
        // process.
        unsafe { libmimalloc_sys::mi_collect(true) };
    }
}

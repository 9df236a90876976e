//! Threads that stay alive for a model's lifetime and share each op's work.
//!
//! A decode step runs a few hundred small ops; handing each to a thread pool (a queue, a wake-up,
//! work stealing) costs more than some of the ops. Here the calling thread publishes one task of
//! numbered chunks and bumps a generation counter; it and every worker that is awake claim
//! chunks from one atomic counter until none are left. A worker the OS has not scheduled in time
//! simply finds no chunk left: the caller never waits for a thread that has not started, only
//! for chunks already claimed. A worker that finds nothing to do for [`SPIN`] parks, so an idle
//! model costs no CPU.

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long a worker spins for the next task before it parks.
const SPIN: Duration = Duration::from_millis(2);

/// Chunks per thread an op is cut into, so that threads that start late or run slower take
/// fewer.
const CHUNKS_PER_THREAD: usize = 2;

/// A task as the workers hold it: chunk `i`, its borrow's lifetime erased.
type Task = dyn Fn(usize) + Sync + 'static;

/// A pointer to the task being run, its lifetime erased (see [`Workers::run`]).
#[derive(Clone, Copy)]
struct TaskRef(*const Task);

// SAFETY: the pointee is `Sync`, and `run` keeps it alive while any worker may use it.
unsafe impl Send for TaskRef {}

/// What the caller and the workers share.
struct Shared {
    /// Bumped once per task; a worker looks for chunks when it sees a new value.
    generation: AtomicU64,
    /// The generation whose task may still be entered (0: none).
    open: AtomicU64,
    /// The current task and its chunk count; written only while no worker is inside a task.
    task: UnsafeCell<Option<(TaskRef, usize)>>,
    /// The next chunk to claim.
    next: AtomicUsize,
    /// Workers inside the current task.
    active: AtomicUsize,
    /// Whether a worker's chunk panicked in the current task.
    panicked: AtomicBool,
    /// Per worker: parked (or about to park) and waiting for an unpark.
    sleeping: Vec<AtomicBool>,
    /// Set once to make the workers exit.
    quit: AtomicBool,
}

// SAFETY: `task` is written by the one caller holding `Workers::dispatch`, before it opens the
// generation (SeqCst) and after it has closed it and seen `active` at 0; a worker reads it only
// between raising `active` and finding the generation open (SeqCst), so never during a write.
unsafe impl Sync for Shared {}

/// A fixed set of worker threads (threads − 1; the caller is the last one).
pub struct Workers {
    shared: Arc<Shared>,
    threads: Vec<(Thread, JoinHandle<()>)>,
    /// Serializes callers: one task at a time.
    dispatch: Mutex<()>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.threads())
            .finish()
    }
}

impl Workers {
    /// `threads` threads in all: the caller of [`Workers::run`] and `threads − 1` workers.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let count = threads.max(1) - 1;
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            open: AtomicU64::new(0),
            task: UnsafeCell::new(None),
            next: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleeping: (0..count).map(|_| AtomicBool::new(false)).collect(),
            quit: AtomicBool::new(false),
        });
        let mut workers = Workers {
            shared,
            threads: Vec::with_capacity(count),
            dispatch: Mutex::new(()),
        };
        for index in 0..count {
            let shared = Arc::clone(&workers.shared);
            let handle = thread::Builder::new()
                .name(format!("ember-worker-{}", index + 1))
                .spawn(move || work(&shared, index))?;
            workers.threads.push((handle.thread().clone(), handle));
        }
        Ok(workers)
    }

    /// Threads in all.
    pub fn threads(&self) -> usize {
        self.threads.len() + 1
    }

    /// How many items of `items` one chunk takes: about [`CHUNKS_PER_THREAD`] chunks per thread.
    pub fn chunk_size(&self, items: usize) -> usize {
        items.div_ceil(self.threads() * CHUNKS_PER_THREAD).max(1)
    }

    /// Runs `task(chunk)` once for every chunk in `0..chunks`, on this thread and the workers
    /// that are awake, and returns when all are done. A panic in any chunk is raised here once
    /// every chunk has stopped.
    pub fn run(&self, chunks: usize, task: &(dyn Fn(usize) + Sync)) {
        if self.threads.is_empty() || chunks <= 1 {
            (0..chunks).for_each(task);
            return;
        }
        let _one_at_a_time = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
        let shared = &*self.shared;
        // SAFETY: erasing the lifetime is sound because workers use the pointer only between
        // raising `active` and seeing this generation open, and this function closes the
        // generation and waits for `active` to reach 0 before it returns or unwinds.
        let erased: TaskRef =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), TaskRef>(task) };
        // SAFETY: no generation is open and `active` is 0 (the previous call waited for it), so
        // no worker reads the slot now.
        unsafe { *shared.task.get() = Some((erased, chunks)) };
        shared.next.store(0, Ordering::SeqCst);
        let generation = shared.generation.load(Ordering::Relaxed) + 1;
        shared.open.store(generation, Ordering::SeqCst);
        shared.generation.store(generation, Ordering::SeqCst);
        for (sleeping, (thread, _)) in shared.sleeping.iter().zip(&self.threads) {
            if sleeping.load(Ordering::SeqCst) {
                thread.unpark();
            }
        }
        let mine = catch_unwind(AssertUnwindSafe(|| claim_chunks(shared, task, chunks)));
        // Close the task to latecomers, then wait for the chunks workers have claimed.
        shared.open.store(0, Ordering::SeqCst);
        let mut spins = 0u32;
        while shared.active.load(Ordering::SeqCst) > 0 {
            spins = spins.wrapping_add(1);
            if spins > 256 {
                // A worker holding a chunk may have been preempted: let it run.
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        // SAFETY: the generation is closed and no worker is inside it.
        unsafe { *shared.task.get() = None };
        if let Err(panic) = mine {
            resume_unwind(panic);
        }
        if shared.panicked.swap(false, Ordering::Relaxed) {
            panic!("a worker thread panicked");
        }
    }
}

/// Runs chunks of `task` until none are left to claim.
fn claim_chunks(shared: &Shared, task: &(dyn Fn(usize) + Sync), chunks: usize) {
    loop {
        let chunk = shared.next.fetch_add(1, Ordering::Relaxed);
        if chunk >= chunks {
            return;
        }
        task(chunk);
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        for (thread, handle) in self.threads.drain(..) {
            thread.unpark();
            let _ = handle.join();
        }
    }
}

/// A worker's loop: wait for a new generation, claim chunks of its task while it is open.
fn work(shared: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        let since = Instant::now();
        let mut spins = 0u32;
        loop {
            let generation = shared.generation.load(Ordering::Acquire);
            if generation != seen {
                seen = generation;
                break;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(128) {
                std::hint::spin_loop();
            } else if since.elapsed() < SPIN {
                // Give the core away if another thread (the caller, say) is waiting for it.
                thread::yield_now();
            } else {
                shared.sleeping[index].store(true, Ordering::SeqCst);
                // Dekker with `run`: it bumps the generation, then reads `sleeping`; we set
                // `sleeping`, then read the generation. One of us sees the other.
                if shared.generation.load(Ordering::SeqCst) == seen {
                    thread::park();
                }
                shared.sleeping[index].store(false, Ordering::SeqCst);
            }
        }
        if shared.quit.load(Ordering::SeqCst) {
            return;
        }
        // Enter the task only while it is open; `run` waits for `active` after closing it.
        shared.active.fetch_add(1, Ordering::SeqCst);
        if shared.open.load(Ordering::SeqCst) == seen {
            // SAFETY: the generation is open and we are counted in `active`, so the caller has
            // written the slot (before opening) and keeps the task alive until we leave.
            if let Some((TaskRef(task), chunks)) = unsafe { *shared.task.get() } {
                // SAFETY: as above; the pointer came from a live `&Task`.
                let task = unsafe { &*task };
                if catch_unwind(AssertUnwindSafe(|| claim_chunks(shared, task, chunks))).is_err() {
                    shared.panicked.store(true, Ordering::Relaxed);
                }
            }
        }
        shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_chunk_runs_once_per_task() {
        for threads in [1, 2, 3, 5] {
            let workers = Workers::new(threads).unwrap();
            assert_eq!(workers.threads(), threads);
            for round in 0..300u32 {
                let chunks = (round as usize % 13) + 1;
                let counts: Vec<AtomicU32> = (0..chunks).map(|_| AtomicU32::new(0)).collect();
                workers.run(chunks, &|chunk| {
                    counts[chunk].fetch_add(round + 1, Ordering::Relaxed);
                });
                assert!(
                    counts
                        .iter()
                        .all(|c| c.load(Ordering::Relaxed) == round + 1)
                );
            }
        }
    }

    #[test]
    fn parked_workers_wake_for_the_next_task() {
        let workers = Workers::new(3).unwrap();
        std::thread::sleep(SPIN * 3);
        let ran = AtomicU32::new(0);
        workers.run(64, &|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 64);
    }

    #[test]
    fn a_panic_in_a_chunk_reaches_the_caller_and_the_workers_go_on() {
        let workers = Workers::new(2).unwrap();
        let result = catch_unwind(AssertUnwindSafe(|| {
            workers.run(8, &|chunk| assert_ne!(chunk, 5, "chunk 5"));
        }));
        assert!(result.is_err());
        let ran = AtomicU32::new(0);
        workers.run(8, &|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn chunks_cover_the_items() {
        let workers = Workers::new(2).unwrap();
        for items in [1, 7, 36, 3072] {
            let size = workers.chunk_size(items);
            assert!(size >= 1 && items.div_ceil(size) <= 2 * CHUNKS_PER_THREAD);
        }
    }
}

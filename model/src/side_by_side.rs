//! Whole batches computed side by side on the CPU, one thread each.
//!
//! One batch split across the cores leaves some of them waiting: at the end of every product,
//! through the attention's uneven tasks, in the element-wise passes and while the calling thread
//! allocates. Two batches, each on a thread of its own, keep both cores busy from start to end.
//! Each batch runs inside a one-thread rayon pool, so the kernels, which split their work over
//! the current pool, compute it alone; its values are the same as when it is split.
//!
//! The threads run at the scheduling priority of the thread that asked for them: a bulk
//! re-index lowered to the idle priority keeps it for its batches (`attune serve`'s bulk lane).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rayon::ThreadPool;

use crate::error::Result;

/// One-thread pools for batches computed side by side, made on first use and kept (each
/// thread keeps its allocator's pages and its flushed-subnormal state), by the scheduling
/// priority of the threads that asked for them.
#[derive(Default)]
pub(crate) struct BatchThreads {
    pools: Mutex<Vec<(i32, Arc<ThreadPool>)>>,
}

impl BatchThreads {
    /// `count` one-thread pools whose threads run at the calling thread's priority.
    pub(crate) fn get(&self, count: usize) -> Vec<Arc<ThreadPool>> {
        let priority = thread_priority();
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let mut mine: Vec<Arc<ThreadPool>> = pools
            .iter()
            .filter(|(p, _)| *p == priority)
            .map(|(_, pool)| pool.clone())
            .take(count)
            .collect();
        while mine.len() < count {
            let pool = Arc::new(one_thread_pool(priority));
            pools.push((priority, pool.clone()));
            mine.push(pool);
        }
        mine
    }
}

/// A pool of one thread at `priority` (a nice value), with subnormals flushed.
fn one_thread_pool(priority: i32) -> ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(|_| "attune-batch".to_string())
        .start_handler(move |_| {
            set_thread_priority(priority);
            crate::device::set_flush_denormals_on_this_thread();
        })
        .build()
        .expect("a one-thread pool")
}

/// The calling thread's nice value (Linux schedules threads one by one); 0 elsewhere.
pub(crate) fn thread_priority() -> i32 {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain system call on the calling thread's own id.
    unsafe {
        libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// Sets the calling thread's nice value, where the system lets it (raising a priority needs a
/// privilege; a thread made by one at that priority already has it).
fn set_thread_priority(priority: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain system call on the calling thread's own id.
    unsafe {
        if libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) != priority {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, priority);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = priority;
}

/// Computes each of `batches` with `embed` in one of `pools` (one thread each), a batch per
/// pool at a time, and hands the results to `finished` on the calling thread as they come. The
/// first error stops the pools from starting new batches and is returned.
pub(crate) fn run_side_by_side<Embed, Finished>(
    pools: &[Arc<ThreadPool>],
    batches: &[Vec<usize>],
    embed: &Embed,
    finished: &mut Finished,
) -> Result<()>
where
    Embed: Fn(&[usize]) -> Result<Vec<Vec<f32>>> + Sync,
    Finished: FnMut(&[usize], Vec<Vec<f32>>),
{
    let next = AtomicUsize::new(0);
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        for pool in pools {
            let (send, next) = (send.clone(), &next);
            scope.spawn(move || {
                pool.install(|| loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(batch) = batches.get(index) else {
                        break;
                    };
                    let rows = embed(batch);
                    let failed = rows.is_err();
                    if failed {
                        next.store(batches.len(), Ordering::Relaxed);
                    }
                    if send.send((index, rows)).is_err() || failed {
                        break;
                    }
                })
            });
        }
        drop(send);
        for (index, rows) in receive {
            finished(&batches[index], rows?);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ModelError;

    fn pools(count: usize) -> Vec<Arc<ThreadPool>> {
        BatchThreads::default().get(count)
    }

    /// Counts the caller in and waits (at most 10 s) until `callers` have come; returns how
    /// many had.
    fn rendezvous(arrived: &AtomicUsize, callers: usize) -> usize {
        let mut seen = arrived.fetch_add(1, Ordering::SeqCst) + 1;
        let start = std::time::Instant::now();
        while seen < callers && start.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::yield_now();
            seen = arrived.load(Ordering::SeqCst);
        }
        seen
    }

    #[test]
    fn batches_run_side_by_side_and_every_result_is_handed_over_once() {
        let batches: Vec<Vec<usize>> = (0..9).map(|b| vec![2 * b, 2 * b + 1]).collect();
        let (arrived, least) = (AtomicUsize::new(0), AtomicUsize::new(usize::MAX));
        let embed = |batch: &[usize]| -> Result<Vec<Vec<f32>>> {
            // Each call's own pool: one thread, so the products inside run on it alone.
            assert_eq!(rayon::current_num_threads(), 1);
            if batch[0] < 4 {
                // The first two batches (texts 0 to 3): each waits for the other to be in flight.
                least.fetch_min(rendezvous(&arrived, 2), Ordering::SeqCst);
            }
            Ok(batch.iter().map(|&i| vec![i as f32]).collect())
        };
        let mut got = vec![None; 18];
        let mut finished = |batch: &[usize], rows: Vec<Vec<f32>>| {
            for (&i, row) in batch.iter().zip(rows) {
                assert!(
                    got[i].replace(row[0]).is_none(),
                    "text {i} handed over twice"
                );
            }
        };
        run_side_by_side(&pools(2), &batches, &embed, &mut finished).unwrap();
        let expected: Vec<Option<f32>> = (0..18).map(|i| Some(i as f32)).collect();
        assert_eq!(got, expected);
        assert_eq!(
            least.load(Ordering::SeqCst),
            2,
            "two batches were in flight at once"
        );
    }

    #[test]
    fn a_failing_batch_stops_the_others_and_its_error_is_returned() {
        let batches: Vec<Vec<usize>> = (0..40).map(|b| vec![b]).collect();
        let started = AtomicUsize::new(0);
        let embed = |batch: &[usize]| -> Result<Vec<Vec<f32>>> {
            started.fetch_add(1, Ordering::SeqCst);
            if batch[0] == 3 {
                return Err(ModelError::InvalidSetting {
                    name: "test",
                    problem: "batch 3 fails".into(),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            Ok(vec![vec![0.0]])
        };
        let mut handed_over = Vec::new();
        let err = run_side_by_side(&pools(2), &batches, &embed, &mut |batch, _| {
            handed_over.push(batch[0])
        })
        .unwrap_err();
        assert!(err.to_string().contains("batch 3 fails"), "{err}");
        assert!(!handed_over.contains(&3));
        // The other thread finishes the batch it holds and starts no more: not the 36 left
        // (20 would take it 320 ms past the failure, a margin for a loaded machine).
        assert!(started.load(Ordering::SeqCst) < 20, "{started:?}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn batch_threads_run_at_the_priority_of_the_thread_that_asked() {
        let threads = std::sync::Arc::new(BatchThreads::default());
        let normal = thread_priority();
        // Lowering is always allowed (19 is the lowest; a run already there lowers nothing).
        let lowered = (normal + 5).min(19);
        let shared = threads.clone();
        let theirs = std::thread::spawn(move || {
            set_thread_priority(lowered);
            assert_eq!(thread_priority(), lowered);
            let pools = shared.get(2);
            pools
                .iter()
                .map(|p| p.install(thread_priority))
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap();
        assert_eq!(theirs, vec![lowered; 2]);
        // A caller at its own priority gets threads at that one.
        let ours: Vec<i32> = threads
            .get(2)
            .iter()
            .map(|pool| pool.install(thread_priority))
            .collect();
        assert_eq!(ours, vec![normal; 2]);
        let made = threads.pools.lock().unwrap().len();
        assert_eq!(made, if lowered == normal { 2 } else { 4 });
        // Asked again, the same pools serve.
        threads.get(2);
        assert_eq!(threads.pools.lock().unwrap().len(), made);
    }
}

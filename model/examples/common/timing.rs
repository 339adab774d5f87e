//! Timing shared by the examples that measure the host's products.

use std::time::Instant;

/// Calls `run` once to warm up, then `reps` times; returns the best and the median seconds of
/// one call.
pub fn best_and_median_seconds(reps: usize, mut run: impl FnMut()) -> (f64, f64) {
    run();
    let mut seconds: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64()
        })
        .collect();
    seconds.sort_by(f64::total_cmp);
    (seconds[0], seconds[reps / 2])
}

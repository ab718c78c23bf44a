//! Drives an operation under load: closed loop (N workers back to back) or
//! open loop (a fixed arrival rate; each operation's latency counts from
//! when it was due, so a slow server cannot hide its queueing — no
//! coordinated omission), with a warm-up and a progress bar.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::stats::Recorder;

#[derive(Debug, Clone)]
pub struct Load {
    /// Workers (closed loop), or the most operations in flight (open loop).
    pub concurrency: usize,
    /// Operations per second (open loop); `None`: closed loop.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub warmup: Duration,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
}

/// What an operation tells the driver.
pub enum Flow {
    Continue,
    /// Nothing more to do (e.g. no tickets left): end the run early.
    Exhausted,
}

/// Runs `op(n, due)` for warm-up + duration; returns the measured part's
/// length (shorter when the operations ran out).
pub async fn run<F, Fut>(load: &Load, rec: &Recorder, label: &str, op: F) -> Duration
where
    F: Fn(u64, Instant) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Flow> + Send + 'static,
{
    let op = Arc::new(op);
    crate::procs::load_started();
    let start = Instant::now();
    let measure_from = rec.measure_from().max(start);
    let end = start + load.warmup + load.duration;
    // CPU time counts over the part whose operations are counted.
    let cpu_from = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        crate::procs::measure_started();
        // A mark for whoever watches from outside (bench/profile.sh).
        eprintln!("measuring…");
    });
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let bar = progress_bar(load, label);
    let ticker = {
        let (bar, done, stop) = (bar.clone(), done.clone(), stop.clone());
        let (total, warmup) = (load.warmup + load.duration, load.warmup);
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            while !stop.load(Ordering::Relaxed) && start.elapsed() < total {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let n = done.load(Ordering::Relaxed);
                let rate = (n - last.1) as f64 / last.0.elapsed().as_secs_f64();
                last = (Instant::now(), n);
                bar.set_position(start.elapsed().as_millis() as u64);
                let phase = if start.elapsed() < warmup {
                    "warm-up"
                } else {
                    "measuring"
                };
                bar.set_message(format!("{phase}: {n} done, {rate:.0}/s"));
            }
        })
    };
    match load.rate {
        None => {
            let next = Arc::new(AtomicU64::new(0));
            let workers: Vec<_> = (0..load.concurrency.max(1))
                .map(|_| {
                    let (op, next, stop, done) =
                        (op.clone(), next.clone(), stop.clone(), done.clone());
                    tokio::spawn(async move {
                        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                            let n = next.fetch_add(1, Ordering::Relaxed);
                            let flow = op(n, Instant::now()).await;
                            done.fetch_add(1, Ordering::Relaxed);
                            if let Flow::Exhausted = flow {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                let _ = w.await;
            }
        }
        Some(rate) => {
            let in_flight = Arc::new(tokio::sync::Semaphore::new(load.concurrency.max(1)));
            let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let mut tasks = tokio::task::JoinSet::new();
            let mut n = 0u64;
            loop {
                let due = start + interval.mul_f64(n as f64);
                if due >= end || stop.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                // Waiting for a slot counts against the operation: it was due.
                let permit = in_flight.clone().acquire_owned().await;
                let (op, stop, done) = (op.clone(), stop.clone(), done.clone());
                tasks.spawn(async move {
                    let _permit = permit;
                    if let Flow::Exhausted = op(n, due).await {
                        stop.store(true, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                });
                n += 1;
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    let finished = Instant::now().min(end);
    let _ = cpu_from.await;
    crate::procs::measure_ended();
    stop.store(true, Ordering::Relaxed);
    let _ = ticker.await;
    bar.finish_and_clear();
    finished.saturating_duration_since(measure_from)
}

fn progress_bar(load: &Load, label: &str) -> ProgressBar {
    let total = (load.warmup + load.duration).as_millis() as u64;
    let bar = ProgressBar::with_draw_target(
        Some(total),
        if load.progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{label:>10} [{{bar:30}}] {{elapsed}} / {:.0}s  {{msg}}",
            (load.warmup + load.duration).as_secs_f64()
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

//! Scheduler benchmarks of the worker on a real PostgreSQL: pickup latency (insert → claim), end-to-end throughput
//! with attempts that do nothing, the cost of a poll and of a claim against the size of the backlog, and fairness
//! across owners with unequal backlogs. See BENCHMARKS.md for what each measures, how, and the figures.
//!
//! ```text
//! cargo bench --bench scheduler -- all
//! cargo bench --bench scheduler -- latency --jobs 50 --workers 1 --backlog 2000
//! ```
//!
//! Worker instances run in this process, each with its own connection pool, worker id and claims (as separate
//! processes would have), on a Tokio runtime of their own; the measuring side runs on another thread with its own
//! runtime, so its timestamps are not delayed by the workers' tasks.

mod env;
mod noop;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use eyre::eyre;
use terminal_bench_worker::poller::Poller;
use tokio::runtime::Handle;
use uuid::Uuid;

use env::{Bench, Vars, Workers, spawn_app};

#[derive(Parser)]
#[command(about = "Scheduler benchmarks (see BENCHMARKS.md)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, global = true, hide = true)]
    bench: bool,
}

#[derive(Subcommand)]
enum Command {
    /// 1. Pickup latency: insert → claim, idle and behind one busy owner's backlog.
    Latency(LatencyArgs),
    /// 2. Throughput: jobs/s through poll, pipeline, claim, record and finish, with no-op attempts.
    Throughput(ThroughputArgs),
    /// 3. Cost of a poll and of a claim against the number of queued jobs.
    Cost(CostArgs),
    /// Fairness: Jain's index of service per time window across owners with unequal backlogs.
    Fairness(FairnessArgs),
    /// Everything above with default sizes (about 8 minutes on 2 cores).
    All,
}

#[derive(Args, Clone)]
struct LatencyArgs {
    /// Jobs measured per case, each of a fresh owner.
    #[arg(long, default_value_t = 200)]
    jobs: usize,
    /// Worker instances (a comma-separated list: one case each).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 4])]
    workers: Vec<usize>,
    /// Queued jobs of the one owner at its limit, for the "behind a backlog" cases (0: idle cases only).
    #[arg(long, default_value_t = 20_000)]
    backlog: usize,
}

#[derive(Args, Clone)]
struct ThroughputArgs {
    /// Jobs queued before the workers start.
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
    /// Owners the jobs are spread over (round robin).
    #[arg(long, default_value_t = 200)]
    owners: usize,
    /// Worker instances (a comma-separated list: one case each).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 2, 4])]
    workers: Vec<usize>,
    /// `MAX_CONCURRENT_JOBS` (system-wide jobs at once; a comma-separated list: one case each).
    #[arg(long, value_delimiter = ',', default_values_t = vec![5])]
    max_jobs: Vec<usize>,
    /// Stop a case after this many seconds and report the rate so far.
    #[arg(long, default_value_t = 45)]
    cap_secs: u64,
}

#[derive(Args, Clone)]
struct CostArgs {
    /// Queued jobs (a comma-separated list: one case each).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1000, 10_000, 100_000])]
    queued: Vec<usize>,
    /// Owners the queued jobs belong to.
    #[arg(long, default_value_t = 1000)]
    owners: usize,
    /// Polls timed per case.
    #[arg(long, default_value_t = 20)]
    polls: usize,
    /// Claims timed per case (the worker has room for this many jobs).
    #[arg(long, default_value_t = 50)]
    claims: usize,
}

#[derive(Args, Clone)]
struct FairnessArgs {
    /// Owners; owner i (1-based) has i × `step` jobs.
    #[arg(long, default_value_t = 20)]
    owners: usize,
    /// Backlog step.
    #[arg(long, default_value_t = 10)]
    step: usize,
    /// Worker instances.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Every attempt takes this long (the no-op runtime waits), so the global limit binds.
    #[arg(long, default_value_t = 200)]
    attempt_ms: u64,
    /// Length of the run.
    #[arg(long, default_value_t = 60)]
    duration_secs: u64,
    /// Length of one window of service.
    #[arg(long, default_value_t = 10)]
    window_secs: u64,
}

fn main() -> eyre::Result<()> {
    let cli = Cli::parse();
    // The worker's logs, for a look at where the time goes (e.g. `RUST_LOG=terminal_bench_worker=debug`); off by
    // default so logging is not part of the figures.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    // The workers' runtime: multi-threaded like the daemon's (`#[tokio::main]`, one thread per core).
    let workers_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The measuring side: one thread, its own runtime.
    let driver = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rt = workers_rt.handle().clone();
    print_machine();
    driver.block_on(async move {
        match cli.command {
            Command::Latency(a) => latency(&rt, &a).await,
            Command::Throughput(a) => throughput(&rt, &a).await,
            Command::Cost(a) => cost(&rt, &a).await,
            Command::Fairness(a) => fairness(&rt, &a).await,
            Command::All => {
                let l = parse_args::<LatencyArgs>("latency")?;
                latency(&rt, &l).await?;
                let t = parse_args::<ThroughputArgs>("throughput")?;
                throughput(&rt, &t).await?;
                let c = parse_args::<CostArgs>("cost")?;
                cost(&rt, &c).await?;
                let f = parse_args::<FairnessArgs>("fairness")?;
                fairness(&rt, &f).await
            }
        }
    })?;
    workers_rt.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}

/// The default arguments of one subcommand.
fn parse_args<A: Clone + 'static>(name: &str) -> eyre::Result<A> {
    let cli = Cli::try_parse_from(["scheduler", name])?;
    let any: Box<dyn std::any::Any> = match cli.command {
        Command::Latency(a) => Box::new(a),
        Command::Throughput(a) => Box::new(a),
        Command::Cost(a) => Box::new(a),
        Command::Fairness(a) => Box::new(a),
        Command::All => return Err(eyre!("no arguments for `all`")),
    };
    any.downcast::<A>()
        .map(|a| *a)
        .map_err(|_| eyre!("wrong argument type for {name}"))
}

fn print_machine() {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    println!(
        "# scheduler benchmarks: {cores} cores, PostgreSQL at {}, {}",
        redact(&env::admin_url()),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…{}", &url[..s], &url[at..]),
        _ => url.to_string(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q`-quantile (nearest rank) of sorted values.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn vars(pairs: &[(&'static str, String)]) -> Vars {
    pairs.to_vec()
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Pickup latency

async fn latency(rt: &Handle, a: &LatencyArgs) -> eyre::Result<()> {
    println!(
        "\n## 1. Pickup latency (insert committed → job `running`), {} jobs per case",
        a.jobs
    );
    println!("| workers | backlog | p50 ms | p99 ms | max ms | not claimed within 10 s |");
    println!("|---|---|---|---|---|---|");
    let backlogs: Vec<usize> = if a.backlog > 0 {
        vec![0, a.backlog]
    } else {
        vec![0]
    };
    for &w in &a.workers {
        for &backlog in &backlogs {
            let (mut lat, missed) = latency_case(rt, w, backlog, a.jobs).await?;
            lat.sort();
            println!(
                "| {w} | {} | {:.1} | {:.1} | {:.1} | {missed} |",
                if backlog == 0 {
                    "idle".to_string()
                } else {
                    format!("{backlog} of one owner at its limit")
                },
                ms(quantile(&lat, 0.5)),
                ms(quantile(&lat, 0.99)),
                ms(lat.last().copied().unwrap_or_default()),
            );
        }
    }
    Ok(())
}

async fn latency_case(
    rt: &Handle,
    workers: usize,
    backlog: usize,
    jobs: usize,
) -> eyre::Result<(Vec<Duration>, usize)> {
    let mut bench = Bench::new().await?;
    let users = bench.users(jobs + 1).await?;
    let pool = Workers::start(rt, &bench, workers, &Vars::new(), Duration::ZERO, false).await?;
    // The workers' listeners connect and their first polls run.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let task = bench.task_url.clone();
    if backlog > 0 {
        let busy = users[jobs];
        let hold = bench.hold_url.clone();
        let held = bench.queue(busy, &hold).await?;
        bench
            .wait_for(held, "running", Duration::from_secs(30))
            .await
            .ok_or_else(|| eyre!("the busy owner's first job never started"))?;
        bench.queue_many(&[busy], backlog, &task).await?;
        // Let the workers take in the burst of inserts before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;
        bench.drain_events();
    }
    let mut lat = Vec::with_capacity(jobs);
    let mut missed = 0;
    for owner in users.iter().take(jobs) {
        let id = bench.queue(*owner, &task).await?;
        let committed = Instant::now();
        match bench.wait_for(id, "running", Duration::from_secs(10)).await {
            Some(e) => lat.push(e.at.saturating_duration_since(committed)),
            None => {
                missed += 1;
                continue;
            }
        }
        // The next job meets a worker that is done with this one.
        if bench
            .wait_for(id, "completed", Duration::from_secs(30))
            .await
            .is_none()
        {
            return Err(eyre!(
                "job {id} did not complete (is the no-op runtime in use?)"
            ));
        }
    }
    pool.stop().await;
    bench.drop_now().await?;
    Ok((lat, missed))
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Throughput

async fn throughput(rt: &Handle, a: &ThroughputArgs) -> eyre::Result<()> {
    println!(
        "\n## 2. Throughput with no-op attempts: {} jobs of {} owners queued, then the workers start",
        a.jobs, a.owners
    );
    println!(
        "| workers | MAX_CONCURRENT_JOBS | jobs finished | failed | seconds | jobs/s | p50 ms claimed → finished |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &max_jobs in &a.max_jobs {
        for &w in &a.workers {
            let mut bench = Bench::new().await?;
            let owners = bench.users(a.owners).await?;
            let task = bench.task_url.clone();
            bench.queue_many(&owners, a.jobs, &task).await?;
            let settings = vars(&[("MAX_CONCURRENT_JOBS", max_jobs.to_string())]);
            let pool = Workers::start(rt, &bench, w, &settings, Duration::ZERO, false).await?;
            let cap = tokio::time::Instant::now() + Duration::from_secs(a.cap_secs);
            let (mut first, mut last) = (None, None);
            let (mut done, mut failed) = (0usize, 0usize);
            // Where the time goes: how long each job ran (claimed → final) against the gaps between claims.
            let mut started: HashMap<Uuid, Instant> = HashMap::new();
            let mut runs = Vec::new();
            while done < a.jobs {
                let left = cap.saturating_duration_since(tokio::time::Instant::now());
                let Some(e) = bench.next_event(left).await else {
                    break;
                };
                if e.status == "running" {
                    first.get_or_insert(e.at);
                    started.insert(e.job, e.at);
                }
                if e.is_final() {
                    if let Some(at) = started.get(&e.job) {
                        runs.push(e.at.duration_since(*at));
                    }
                    done += 1;
                    failed += usize::from(e.status == "failed");
                    last = Some(e.at);
                }
            }
            pool.stop().await;
            bench.drop_now().await?;
            let secs = match (first, last) {
                (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
                _ => 0.0,
            };
            let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
            runs.sort();
            println!(
                "| {w} | {max_jobs} | {done} | {failed} | {secs:.2} | {rate:.1} | {:.0} |",
                ms(quantile(&runs, 0.5))
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// 3. Cost against the backlog

async fn cost(rt: &Handle, a: &CostArgs) -> eyre::Result<()> {
    println!(
        "\n## 3. Cost against the backlog: jobs of {} owners queued; {} polls at capacity, {} claims",
        a.owners, a.polls, a.claims
    );
    println!(
        "| queued | ms/poll p50 | ms/poll mean | ms/claim (first→last of {}) | claims/s |",
        a.claims
    );
    println!("|---|---|---|---|---|");
    for &n in &a.queued {
        let mut bench = Bench::new().await?;
        let owners = bench.users(a.owners).await?;
        let task = bench.task_url.clone();
        bench.queue_many(&owners, n, &task).await?;
        let polls = poll_cost(rt, &mut bench, a.polls).await?;
        let per_claim = claim_cost(rt, &mut bench, a.claims).await?;
        bench.drop_now().await?;
        let mut sorted = polls.clone();
        sorted.sort();
        let mean = polls.iter().sum::<Duration>() / u32::try_from(polls.len().max(1))?;
        println!(
            "| {n} | {:.2} | {:.2} | {:.2} | {:.0} |",
            ms(quantile(&sorted, 0.5)),
            ms(mean),
            ms(per_claim),
            1.0 / per_claim.as_secs_f64().max(1e-9),
        );
    }
    Ok(())
}

/// [`Poller::poll_once`] of a worker with room for one job, once that job runs (held): the work every poll does
/// while the backlog waits.
async fn poll_cost(rt: &Handle, bench: &mut Bench, polls: usize) -> eyre::Result<Vec<Duration>> {
    let release = tokio_util::sync::CancellationToken::new();
    let settings = vars(&[
        ("MAX_CONCURRENT_JOBS", "1".into()),
        ("WORKER_LEASE_SECS", "600".into()),
    ]);
    let app = spawn_app(rt, bench, 99, &settings, Duration::ZERO, true, &release).await?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (times_tx, times_rx) = tokio::sync::oneshot::channel();
    // The poller lives on the workers' runtime (its pipeline spawns there) until the claim phase is over.
    let task = rt.spawn(async move {
        let mut poller = Poller::new(app);
        poller.poll_once().await?;
        // The first poll offered the jobs; the one that fits is claimed and held. Wait for it.
        let _ = rx.await;
        let mut times = Vec::with_capacity(polls);
        for _ in 0..polls {
            let start = Instant::now();
            poller.poll_once().await?;
            times.push(start.elapsed());
        }
        let _ = times_tx.send(times);
        // Keep the poller (and its held claim) until the benchmark's database goes.
        std::future::pending::<()>().await;
        Ok::<_, sea_orm::DbErr>(())
    });
    bench
        .next_running(Duration::from_secs(60))
        .await
        .ok_or_else(|| eyre!("the polling worker claimed nothing"))?;
    let _ = tx.send(());
    let times = times_rx
        .await
        .map_err(|_| eyre!("polling failed: {:?}", task.is_finished()))?;
    bench.keep_until_drop(task);
    Ok(times)
}

/// A worker (the daemon loop) with room for `claims` jobs starts on the backlog; every job it claims is held. The
/// time from its first claim to its last, per claim.
async fn claim_cost(rt: &Handle, bench: &mut Bench, claims: usize) -> eyre::Result<Duration> {
    // One job is running already (the polling worker's).
    let settings = vars(&[("MAX_CONCURRENT_JOBS", (claims + 1).to_string())]);
    let pool = Workers::start(rt, bench, 1, &settings, Duration::ZERO, true).await?;
    let mut stamps = Vec::with_capacity(claims);
    while stamps.len() < claims {
        match bench.next_running(Duration::from_secs(120)).await {
            Some(at) => stamps.push(at),
            None => break,
        }
    }
    pool.stop().await;
    if stamps.len() < 2 {
        return Err(eyre!("only {} claims in 120 s", stamps.len()));
    }
    let span = stamps[stamps.len() - 1].duration_since(stamps[0]);
    Ok(span / u32::try_from(stamps.len() - 1)?)
}

// ---------------------------------------------------------------------------------------------------------------
// Fairness

async fn fairness(rt: &Handle, a: &FairnessArgs) -> eyre::Result<()> {
    println!(
        "\n## Fairness: {} owners, owner i has i×{} jobs; {} workers; attempts take {} ms; windows of {} s",
        a.owners, a.step, a.workers, a.attempt_ms, a.window_secs
    );
    let mut bench = Bench::new().await?;
    let owners = bench.users(a.owners).await?;
    let task = bench.task_url.clone();
    let mut pending: HashMap<Uuid, i64> = HashMap::new();
    for (i, owner) in owners.iter().enumerate() {
        let n = (i + 1) * a.step;
        bench.queue_many(&[*owner], n, &task).await?;
        pending.insert(*owner, i64::try_from(n)?);
    }
    let pool = Workers::start(
        rt,
        &bench,
        a.workers,
        &Vars::new(),
        Duration::from_millis(a.attempt_ms),
        false,
    )
    .await?;
    let start = Instant::now();
    let end = tokio::time::Instant::now() + Duration::from_secs(a.duration_secs);
    let mut events = Vec::new();
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let Some(e) = bench.next_event(left).await else {
            break;
        };
        if e.status == "running" || e.status == "queued" {
            events.push(e);
        }
    }
    pool.stop().await;
    bench.drop_now().await?;
    println!(
        "| window | owners with work all window | jobs started | min–max per owner | Jain's index |"
    );
    println!("|---|---|---|---|---|");
    let window = Duration::from_secs(a.window_secs);
    let windows = a.duration_secs / a.window_secs.max(1);
    let mut next = events.iter().peekable();
    for w in 0..windows {
        let until = start + window * u32::try_from(w + 1)?;
        let mut served: HashMap<Uuid, u64> = HashMap::new();
        while let Some(e) = next.next_if(|e| e.at < until) {
            let Some(owner) = e.owner else { continue };
            if e.status == "running" {
                *served.entry(owner).or_default() += 1;
                *pending.entry(owner).or_default() -= 1;
            } else {
                *pending.entry(owner).or_default() += 1;
            }
        }
        // Owners that still have queued jobs at the window's end had work throughout it.
        let with_work: Vec<u64> = owners
            .iter()
            .filter(|o| pending.get(o).copied().unwrap_or(0) > 0)
            .map(|o| served.get(o).copied().unwrap_or(0))
            .collect();
        let total: u64 = served.values().sum();
        let (min, max) = (
            with_work.iter().min().copied().unwrap_or(0),
            with_work.iter().max().copied().unwrap_or(0),
        );
        println!(
            "| {}–{} s | {} | {total} | {min}–{max} | {} |",
            w * a.window_secs,
            (w + 1) * a.window_secs,
            with_work.len(),
            jain(&with_work).map_or("–".into(), |j| format!("{j:.3}")),
        );
    }
    Ok(())
}

/// Jain's fairness index (Σx)² / (n·Σx²): 1 when every owner got the same service, 1/n when one got all of it.
fn jain(x: &[u64]) -> Option<f64> {
    let sum: f64 = x.iter().map(|&v| v as f64).sum();
    let squares: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    (squares > 0.0).then(|| sum * sum / (x.len() as f64 * squares))
}

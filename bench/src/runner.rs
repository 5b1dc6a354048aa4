//! Runs every workload in every mode, `runs` times, alternating the order of the modes from
//! one run to the next so that drift of the machine (other jobs, frequency, caches) hits all
//! modes alike; collects one figure per metric, mode and run.
//!
//! Workloads that drop the page cache (the file rows) run after all the others have finished
//! every run: a dropped cache leaves the binaries every run starts (the client, mirrord-net,
//! its agent) to be read from disk again, which would slow the next row's first run.
//!
//! A run that fails is recorded as an error and the harness goes on with the rest; the caller
//! exits non-zero if any error was recorded.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cleanup;
use crate::modes::{Launcher, Mode, Run};
use crate::plan::{
    Metric, Sizes, Workload, COST_DOWNLOAD, COST_ROUND_TRIPS, COST_UNIT, COST_UPLOAD, IDLE_AGENT,
    IDLE_CLIENT, IDLE_OPEN, METRICS,
};
use crate::stats::{median, percentile};
use crate::target_data;

/// How long any single client run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a single `true` start may take.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Figures per metric name, per mode: one per run.
pub type Figures = BTreeMap<&'static str, BTreeMap<Mode, Vec<f64>>>;

#[derive(Debug, Default)]
pub struct Outcome {
    pub figures: Figures,
    pub errors: Vec<String>,
}

pub fn run_all(
    launcher: &Launcher,
    sizes: &Sizes,
    runs: usize,
    modes: &[Mode],
    workloads: &[Workload],
) -> Outcome {
    let mut outcome = Outcome::default();
    for (run, workload) in schedule(workloads, runs) {
        let mut order = modes.to_vec();
        order.rotate_left(run % modes.len());
        for &mode in &order {
            if cleanup::stopping() {
                cleanup::wait_for_stop();
            }
            if mode == Mode::Wrapper && !workload.runs_under_wrapper() {
                continue;
            }
            if mode.is_packet_path_variant() && !workload.uses_packets() {
                continue;
            }
            if workload.is_incoming() && !matches!(mode, Mode::Direct | Mode::MirrordNet) {
                continue;
            }
            let result = measure(launcher, sizes, workload, mode).and_then(|figures| {
                cleanup::with_fixture(|fixture| fixture.check())?
                    .context("the bench servers died")?;
                Ok(figures)
            });
            match result {
                Ok(figures) => {
                    let shown: Vec<String> = figures
                        .iter()
                        .map(|(metric, value)| {
                            format!("{} {value:.1} {}", metric.name, metric.unit)
                        })
                        .collect();
                    eprintln!(
                        "run {}/{runs} {:<22} {:<12} {}",
                        run + 1,
                        workload.name(),
                        mode.label(),
                        shown.join(", ")
                    );
                    for (metric, value) in figures {
                        outcome
                            .figures
                            .entry(metric.name)
                            .or_default()
                            .entry(mode)
                            .or_default()
                            .push(value);
                    }
                }
                Err(_) if cleanup::stopping() => cleanup::wait_for_stop(),
                Err(err) => {
                    let text = format!(
                        "run {} {} {}: {err:#}",
                        run + 1,
                        workload.name(),
                        mode.label()
                    );
                    eprintln!("ERROR {text}");
                    outcome.errors.push(text);
                }
            }
        }
    }
    outcome
}

/// (run, workload) in the order they run: each run of every workload that keeps the caches,
/// then each run of those that drop them.
fn schedule(workloads: &[Workload], runs: usize) -> Vec<(usize, Workload)> {
    let (keep_caches, drop_caches): (Vec<Workload>, Vec<Workload>) = workloads
        .iter()
        .partition(|workload| !workload.drops_caches());
    [keep_caches, drop_caches]
        .iter()
        .flat_map(|phase| (0..runs).flat_map(move |run| phase.iter().map(move |&w| (run, w))))
        .collect()
}

fn metric(name: &str) -> &'static Metric {
    METRICS
        .iter()
        .find(|metric| metric.name == name)
        .expect("a known metric")
}

/// The rows a workload's own figures fill (not the cost rows, which come from the relays).
fn metrics_of(workload: Workload) -> impl Iterator<Item = &'static Metric> {
    METRICS
        .iter()
        .filter(move |metric| metric.workload == workload && metric.unit != COST_UNIT)
}

/// The cost rows of a run: CPU of client + agent per GiB moved or per 10,000 round trips.
fn costs(workload: Workload, sizes: &Sizes, run: &Run) -> Vec<(&'static Metric, f64)> {
    let Some(cpu) = run.cpu_s else {
        return Vec::new();
    };
    let answer = &run.answer;
    let gib = |bytes: Option<u64>| bytes.map(|bytes| bytes as f64 / f64::from(1u32 << 30));
    match workload {
        Workload::BulkUpload1 | Workload::BulkDownload1 => {
            let name = if workload == Workload::BulkUpload1 {
                COST_UPLOAD
            } else {
                COST_DOWNLOAD
            };
            match gib(answer.bytes) {
                Some(gib) if gib > 0.0 => vec![(metric(name), cpu / gib)],
                _ => Vec::new(),
            }
        }
        Workload::PingPong => {
            let trips = (answer.samples_us.len() + sizes.warmup) as f64;
            vec![(metric(COST_ROUND_TRIPS), cpu * 10_000.0 / trips)]
        }
        _ => Vec::new(),
    }
}

/// One workload in one mode: the figure of each of its metrics.
fn measure(
    launcher: &Launcher,
    sizes: &Sizes,
    workload: Workload,
    mode: Mode,
) -> Result<Vec<(&'static Metric, f64)>> {
    if workload.is_incoming() {
        return measure_incoming(launcher, sizes, workload, mode);
    }
    if workload == Workload::BackgroundExec {
        let walls: Vec<f64> = launcher
            .background_exec(mode, sizes.session_starts * 2, START_TIMEOUT)?
            .into_iter()
            .map(|wall| wall.as_secs_f64() * 1000.0)
            .collect();
        let only = metrics_of(workload)
            .next()
            .expect("a background exec metric");
        return Ok(vec![(only, median(&walls))]);
    }
    let Some(job) = workload.job(sizes, &launcher.pod_dir) else {
        let mut walls = Vec::with_capacity(sizes.session_starts);
        for _ in 0..sizes.session_starts {
            let wall = launcher.start_true(mode, START_TIMEOUT)?;
            walls.push(wall.as_secs_f64() * 1000.0);
        }
        let only = metrics_of(workload).next().expect("a session start metric");
        return Ok(vec![(only, median(&walls))]);
    };
    if workload.drops_caches() {
        target_data::drop_caches()?;
    }
    let run = launcher.client(mode, &job, RUN_TIMEOUT)?;
    if launcher.verbose && mode.is_mirrord_net() {
        print_counters(&run);
    }
    let answer = &run.answer;
    let mut figures = costs(workload, sizes, &run);
    figures.extend(match workload {
        Workload::IdleFlows => {
            let mut figures = vec![(
                metric(IDLE_OPEN),
                answer.open_s.context("the client reported no open time")?,
            )];
            // Memory is a mirrord-net figure only: its client and its agent.
            if let (true, Some((client, agent))) = (mode.is_mirrord_net(), run.rss_kib) {
                let agent = agent.context("no mirrord-net-agent process found")?;
                figures.push((metric(IDLE_CLIENT), client as f64 / 1024.0));
                figures.push((metric(IDLE_AGENT), agent as f64 / 1024.0));
            }
            figures
        }
        Workload::FileRead | Workload::FileStat => {
            let passes: Vec<&'static Metric> = metrics_of(workload).collect();
            anyhow::ensure!(
                answer.passes_ms.len() == passes.len(),
                "the client timed {} passes, expected {}",
                answer.passes_ms.len(),
                passes.len()
            );
            passes.into_iter().zip(answer.passes_ms.clone()).collect()
        }
        _ if answer.gbit_per_s.is_some() => {
            let only = metrics_of(workload).next().expect("a bulk metric");
            vec![(only, answer.gbit_per_s.unwrap_or_default())]
        }
        _ => latency_figures(workload, &answer.samples_us)?,
    });
    Ok(figures)
}

/// A latency workload's rows: the p50 and p99 of its samples, as each row's name says.
fn latency_figures(workload: Workload, samples_us: &[f64]) -> Result<Vec<(&'static Metric, f64)>> {
    anyhow::ensure!(!samples_us.is_empty(), "the client measured nothing");
    Ok(metrics_of(workload)
        .map(|metric| {
            let p = if metric.name.ends_with("p99") {
                99.0
            } else {
                50.0
            };
            (metric, percentile(samples_us, p))
        })
        .collect())
}

/// An incoming workload: the client in the services namespace, with a stealing (or, for the
/// mirrored row, mirroring) session running for the mirrord-net mode (started before, ended
/// after the run).
fn measure_incoming(
    launcher: &Launcher,
    sizes: &Sizes,
    workload: Workload,
    mode: Mode,
) -> Result<Vec<(&'static Metric, f64)>> {
    let stealing = match mode {
        Mode::Direct => false,
        Mode::MirrordNet => true,
        other => anyhow::bail!("incoming rows do not run in mode {}", other.label()),
    };
    let mirroring = workload == Workload::IncomingMirrored;
    let session = match (stealing, mirroring) {
        (false, _) => None,
        (true, false) => Some(launcher.stealing_session(START_TIMEOUT)?),
        (true, true) => Some(launcher.mirroring_session(START_TIMEOUT)?),
    };
    let stealing = stealing && !mirroring;
    let run = launcher.incoming_client(&workload.incoming_job(sizes, stealing), RUN_TIMEOUT);
    if let Some(session) = session {
        session.end()?;
    }
    latency_figures(workload, &run?.answer.samples_us)
}

/// With `--verbose`: the client's and agent's log lines about packets and counters.
fn print_counters(run: &Run) {
    for line in run.stderr.lines() {
        let lower = line.to_ascii_lowercase();
        if ["packets", "stats", "counters", "datagrams"]
            .iter()
            .any(|word| lower.contains(word))
        {
            eprintln!("    {line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dropping_workloads_run_after_every_run_of_the_others() {
        let workloads = [Workload::FileRead, Workload::PingPong, Workload::Udp];
        assert_eq!(
            schedule(&workloads, 2),
            vec![
                (0, Workload::PingPong),
                (0, Workload::Udp),
                (1, Workload::PingPong),
                (1, Workload::Udp),
                (0, Workload::FileRead),
                (1, Workload::FileRead),
            ]
        );
    }
}

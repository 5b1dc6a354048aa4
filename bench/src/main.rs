//! `mirrord-net-bench`: measures the same client directly inside a pod namespace, through
//! `mirrord-net exec`, and optionally under any wrapper command, and prints a Markdown table
//! of medians and ratios to direct (plus JSON on request). See docs/benchmarks.md.
//!
//! The binary has three roles: the harness (default), the bench servers (`__serve`, inside the
//! services namespace) and the client (`__client JOB`, in whichever mode is measured).

mod cleanup;
mod client;
mod file_passes;
mod fixture;
mod job;
mod limits;
mod modes;
mod plan;
mod ports;
mod report;
mod runner;
mod server;
mod stats;
mod target_data;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::fixture::Fixture;
use crate::modes::{Launcher, Mode};
use crate::plan::Sizes;

#[derive(Debug, Parser)]
#[command(
    name = "mirrord-net-bench",
    about = "Benchmarks mirrord-net against the direct path"
)]
struct Args {
    /// Every workload with tiny sizes, to check the harness works (figures mean nothing).
    #[arg(long)]
    smoke: bool,
    /// How many alternating runs of every workload in every mode.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// One more mode: the client under this command line (run by `sh -c`, the client's
    /// arguments appended). `{target_pid}`, `{pod_netns}`, `{services_netns}` and `{pod_dir}` are
    /// replaced. Default: the preload design (`bench/wrappers/proxychains.sh`, proxychains4 +
    /// dante) when both are installed.
    #[arg(long)]
    wrapper: Option<String>,
    /// No wrapper mode, even when proxychains4 and dante are installed.
    #[arg(long, conflicts_with = "wrapper")]
    no_wrapper: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run mirrord-net with `-v` and show its counters after each run.
    #[arg(long)]
    verbose: bool,
    /// Run only the workloads whose name contains one of these words (comma-separated,
    /// e.g. `--only ping,udp`); every workload when absent.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Run only these mirrord-net modes besides direct (comma-separated labels, e.g.
    /// `--modes mirrord-net-1500`); every mode when absent.
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Debug, Subcommand)]
enum Role {
    #[command(name = "__serve", hide = true)]
    Serve,
    #[command(name = "__client", hide = true)]
    Client { job: String },
    /// The target's own incoming service (in the pod) or the session's copy of it.
    #[command(name = "__serve-incoming", hide = true)]
    ServeIncoming { by: String },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.role {
        Some(Role::Serve) => server::serve(),
        Some(Role::Client { job }) => client::run(job),
        Some(Role::ServeIncoming { by }) => server::serve_incoming(by),
        None => harness(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mirrord-net-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The preload design (proxychains4 + dante), when both are installed.
fn default_wrapper() -> Option<String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("wrappers/proxychains.sh");
    let installed = |program: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    (script.is_file() && installed("proxychains4") && installed("danted"))
        .then(|| format!("{} {{target_pid}} {{pod_dir}}", script.display()))
}

fn harness(args: &Args) -> Result<()> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    anyhow::ensure!(
        nix::unistd::Uid::effective().is_root(),
        "mirrord-net-bench must run as root (it creates network namespaces)"
    );
    let workloads = plan::select(&args.only)?;
    // Fails early, naming the build command, if the binaries are missing.
    let client_binary = mirrord_net_tests::session::client_binary();
    limits::raise_nofile();
    cleanup::install()?;
    let started = Instant::now();
    let sizes = if args.smoke {
        Sizes::smoke()
    } else {
        Sizes::full()
    };
    let wrapper = match (&args.wrapper, args.no_wrapper) {
        (Some(wrapper), _) => Some(wrapper.clone()),
        (None, true) => None,
        (None, false) => default_wrapper(),
    };
    let fixture = Fixture::start()?;
    let launcher = Launcher {
        target_pid: fixture.pod().target_pid(),
        pod_netns: fixture.pod().pod_netns().name().to_string(),
        services_netns: fixture.pod().services_netns().name().to_string(),
        pod_dir: fixture.pod().dir().to_path_buf(),
        exe: std::env::current_exe()?,
        wrapper: wrapper.clone(),
        verbose: args.verbose,
    };
    eprintln!(
        "pod {} ready in {:.2?} (target pid {}), {} run(s){}",
        fixture.pod().id(),
        fixture.pod().build_time(),
        launcher.target_pid,
        args.runs,
        if args.smoke { ", smoke sizes" } else { "" }
    );
    cleanup::own(fixture);
    // Written once the fixture is the signal handler's: an interrupted write is removed
    // with the pod's directory.
    if workloads
        .iter()
        .any(|workload| workload.needs_target_data())
    {
        let written = Instant::now();
        if let Err(err) = target_data::install(&launcher.pod_dir, launcher.target_pid, &sizes.data)
        {
            cleanup::release();
            return Err(err.context("giving the target its data"));
        }
        eprintln!(
            "target data written and mounted in {:.2?}",
            written.elapsed()
        );
    }

    if let Some(wrapper) = &wrapper {
        eprintln!("wrapper: {wrapper}");
    }
    let mut modes = vec![
        Mode::Direct,
        Mode::MirrordNet,
        Mode::MirrordNetRouted,
        Mode::MirrordNetQuic,
        Mode::MirrordNet1500,
        Mode::MirrordNetStream,
    ];
    if !args.modes.is_empty() {
        modes.retain(|mode| *mode == Mode::Direct || args.modes.iter().any(|m| m == mode.label()));
    }
    if wrapper.is_some() {
        modes.push(Mode::Wrapper);
    }
    let outcome = runner::run_all(&launcher, &sizes, args.runs, &modes, &workloads);
    cleanup::release();

    let table = report::markdown(&outcome, wrapper.is_some());
    println!("{table}");
    println!(
        "{} run(s), {} idle flows, medians over runs; finished in {:.1?}",
        args.runs,
        sizes.idle_flows,
        started.elapsed()
    );
    if let Some(path) = &args.json {
        let context = serde_json::json!({
            "smoke": args.smoke,
            "runs": args.runs,
            "idle_flows": sizes.idle_flows,
            "file_bytes": sizes.data.file_len,
            "tree_entries": sizes.data.tree_entries(),
            "wrapper": wrapper,
            "client_binary": client_binary,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
            "elapsed_s": started.elapsed().as_secs_f64(),
        });
        let json = report::json(&outcome, context);
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !outcome.errors.is_empty() {
        anyhow::bail!(
            "{} workload run(s) failed:\n{}",
            outcome.errors.len(),
            outcome.errors.join("\n")
        );
    }
    Ok(())
}

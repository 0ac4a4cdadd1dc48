//! `crablet-loadtest`: parses the command line and calls the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crablet_loadtest::bench::{self, table, BenchConfig, Goal};
use crablet_loadtest::driver::{self, RunConfig};
use crablet_loadtest::http::Target;
use crablet_loadtest::preload::{self, PreloadConfig, EVENTS_PER_TAG};
use crablet_loadtest::scenario::{Decision, ScenarioConfig, ScenarioKind};

/// Exit code when a run's verification or a bench goal failed (with `--strict`).
const EXIT_CHECK_FAILED: u8 = 2;

#[derive(Parser, Debug)]
#[command(version, about = "Load generator and benchmark for crablet")]
struct Cli {
    /// Tokio worker threads of the load generator (the machine is shared with the
    /// server and PostgreSQL: keep it small).
    #[arg(long, default_value_t = 2, global = true)]
    threads: usize,
    /// Bearer token sent on every request (a server with `auth.tokens`). With
    /// `bench`, the servers it starts are configured to accept this token
    /// (admin scope) and nothing else.
    #[arg(long, global = true, env = "CRABLET_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one scenario against a running server.
    Run(RunArgs),
    /// Load N events quickly with large batched appends (tag <prefix>:<i/10>).
    Preload(PreloadArgs),
    /// Measure every goal (P1-P14), each beside its baseline where it has one.
    Bench(BenchArgs),
    /// Subscribers on /subscribe while writers append: delivery latency
    /// (acknowledged -> received), delivered events/s, gaps/duplicates/order.
    Subscribe(SubscribeArgs),
}

#[derive(clap::Args, Debug)]
struct SubscribeArgs {
    /// Server URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Subscribers, each to a tag of its own.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// More subscribers, each to every event of the run.
    #[arg(long, default_value_t = 10)]
    everything: usize,
    /// Writer connections.
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Appends per second over all writers (one event each).
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Length of the load, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Size of appended events' data, bytes.
    #[arg(long, default_value_t = 64)]
    data_bytes: usize,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Server URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Workload.
    #[arg(long, value_enum)]
    scenario: ScenarioKind,
    /// Virtual clients (one keep-alive connection each).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Length of the load, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Open loop: operations per second over all clients (latency from the
    /// intended send time). Without it: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seed of the random streams (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// read/mixed: number of preloaded tags to pick from.
    #[arg(long, default_value_t = 1000)]
    read_tags: u64,
    /// read/mixed: prefix of the preloaded tags.
    #[arg(long, default_value = "t")]
    tag_prefix: String,
    /// hot-keys: number of keys.
    #[arg(long, default_value_t = 100)]
    hot_keys: usize,
    /// hot-keys: Zipf exponent.
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    /// hot-keys: read-then-append (two requests) or one append with `require`.
    #[arg(long, value_enum, default_value_t = Decision::ReadAppend)]
    decision: Decision,
    /// Size of appended events' data, bytes.
    #[arg(long, default_value_t = 64)]
    data_bytes: usize,
    /// read/mixed: fail instead of preloading missing tags.
    #[arg(long)]
    no_seed: bool,
    /// Skip the post-run verification (hot-keys, consistency).
    #[arg(long)]
    no_verify: bool,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout_s: f64,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args, Debug)]
struct PreloadArgs {
    /// Server URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Events to write.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Events per append.
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// Concurrent appends.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Tag prefix (`<prefix>:<i/10>`).
    #[arg(long, default_value = "t")]
    tag_prefix: String,
    /// Size of each event's data, bytes.
    #[arg(long, default_value_t = 64)]
    data_bytes: usize,
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Use this PostgreSQL (its role must create databases). Default: start a
    /// private cluster with `crablet postgres` in a temp folder.
    #[arg(long)]
    database_url: Option<String>,
    /// The crablet binary (default: `crablet` next to this binary).
    #[arg(long)]
    crablet_bin: Option<PathBuf>,
    /// Short phases and 100k events: a smoke run of about two minutes.
    #[arg(long)]
    quick: bool,
    /// After the goals, run the P1 load for --soak-s seconds and report RSS over time.
    #[arg(long)]
    soak: bool,
    /// Soak length, seconds.
    #[arg(long, default_value_t = bench::DEFAULT_SOAK.as_secs_f64())]
    soak_s: f64,
    /// Only these goals (comma-separated, e.g. p1,p4).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Goal>,
    /// Override the length of every phase, seconds.
    #[arg(long)]
    duration_s: Option<f64>,
    /// Override the events stored for P4/P5.
    #[arg(long)]
    volume_events: Option<u64>,
    /// Measure only the PostgreSQL baselines.
    #[arg(long)]
    baselines_only: bool,
    /// Keep the temp folder (logs, cluster) and the bench databases.
    #[arg(long)]
    keep: bool,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seed of the random streams (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Exit with status 2 when a goal is not met.
    #[arg(long)]
    strict: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command, cli.token)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn seconds(s: f64, what: &str) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        s.is_finite() && s > 0.0,
        "{what} must be a positive number of seconds"
    );
    Ok(Duration::from_secs_f64(s))
}

fn write_json<T: serde::Serialize>(path: &PathBuf, value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

async fn dispatch(command: Command, token: Option<String>) -> anyhow::Result<ExitCode> {
    let token = token.as_deref();
    match command {
        Command::Run(a) => run(a, token).await,
        Command::Preload(a) => {
            let target = Target::parse(&a.url)?.with_token(token);
            let r = preload::preload(
                &target,
                &PreloadConfig {
                    events: a.events,
                    batch: a.batch,
                    concurrency: a.concurrency,
                    tag_prefix: a.tag_prefix,
                    events_per_tag: EVENTS_PER_TAG,
                    data_bytes: a.data_bytes,
                    quiet: false,
                },
            )
            .await?;
            println!(
                "preloaded {} events in {:.1} s: {:.0} events/s ({} batches retried)",
                r.events, r.elapsed_s, r.events_per_s, r.retries
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(a) => bench_command(a, token).await,
        Command::Subscribe(a) => {
            let report =
                crablet_loadtest::subscribe::run(&crablet_loadtest::subscribe::SubscribeConfig {
                    target: Target::parse(&a.url)?.with_token(token),
                    subscribers: a.subscribers,
                    everything: a.everything,
                    writers: a.writers,
                    rate: a.rate,
                    duration: seconds(a.duration_s, "--duration-s")?,
                    data_bytes: a.data_bytes,
                    run_id: format!("{:08x}", clock_seed() as u32),
                })
                .await?;
            print!("{}", report.summary());
            if let Some(path) = &a.json {
                write_json(path, &report)?;
            }
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_CHECK_FAILED)
            })
        }
    }
}

async fn run(a: RunArgs, token: Option<&str>) -> anyhow::Result<ExitCode> {
    let seed = a.seed.unwrap_or_else(clock_seed);
    let cfg = RunConfig {
        target: Target::parse(&a.url)?.with_token(token),
        scenario: ScenarioConfig {
            kind: a.scenario,
            run_id: format!("{:08x}", seed as u32),
            read_tags: a.read_tags,
            tag_prefix: a.tag_prefix,
            hot_keys: a.hot_keys,
            zipf_exponent: a.zipf_s,
            decision: a.decision,
            data_bytes: a.data_bytes,
            seed_reads: !a.no_seed,
        },
        clients: a.clients,
        duration: seconds(a.duration_s, "--duration-s")?,
        rate: a.rate,
        seed,
        request_timeout: seconds(a.timeout_s, "--timeout-s")?,
        progress: !a.quiet,
        setup: true,
        verify: !a.no_verify,
    };
    let report = driver::run(&cfg, Arc::default()).await?;
    print!("{}", report.summary());
    if let Some(path) = &a.json {
        write_json(path, &report)?;
    }
    let failed = report.verification.as_ref().is_some_and(|v| !v.passed());
    Ok(if failed {
        ExitCode::from(EXIT_CHECK_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

async fn bench_command(a: BenchArgs, token: Option<&str>) -> anyhow::Result<ExitCode> {
    let cfg = BenchConfig {
        token: token.map(str::to_owned),
        database_url: a.database_url,
        crablet_bin: a.crablet_bin,
        quick: a.quick,
        soak: a.soak,
        soak_duration: seconds(a.soak_s, "--soak-s")?,
        goals: a.only,
        phase_duration: a
            .duration_s
            .map(|s| seconds(s, "--duration-s"))
            .transpose()?,
        volume_events: a.volume_events,
        baselines_only: a.baselines_only,
        keep: a.keep,
        seed: a.seed.unwrap_or_else(clock_seed),
        request_timeout: crablet_loadtest::http::DEFAULT_REQUEST_TIMEOUT,
    };
    let report = bench::run(cfg).await?;
    println!();
    print!("{}", table::render(&report.rows));
    println!();
    for (k, v) in &report.settings {
        println!("postgres {k} = {v}");
    }
    for note in &report.notes {
        println!("- {note}");
    }
    println!("bench took {:.0} s", report.elapsed_s);
    if let Some(path) = &a.json {
        write_json(path, &report)?;
    }
    let unmet = report.rows.iter().any(|r| r.met != Some(true));
    Ok(if a.strict && unmet {
        ExitCode::from(EXIT_CHECK_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_only_names_goals_up_to_p14() {
        let cli =
            Cli::try_parse_from(["crablet-loadtest", "bench", "--only", "p1,p11,p12,p13,p14"])
                .expect("parses");
        let Command::Bench(args) = cli.command else {
            panic!("not the bench command");
        };
        assert_eq!(
            args.only,
            vec![Goal::P1, Goal::P11, Goal::P12, Goal::P13, Goal::P14]
        );
        assert!(Cli::try_parse_from(["crablet-loadtest", "bench", "--only", "p15"]).is_err());
    }
}

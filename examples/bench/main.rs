//! The benchmark harness behind `scripts/bench` (README "Performance").
//!
//! Runs each workload against the release binaries, with the physical limit
//! measured in the same run (a plain program doing the same work), and the
//! same workloads against supervisord when it is available. Prints a table
//! and writes JSON. Figures are medians with min–max over repeated runs.
//!
//! Speed and memory targets live here, never in timed tests.
//!
//! One module per workload group; `harness` holds what they share. The
//! same executable is also the child of the output and tail workloads
//! (`bench --emit BYTES`, `bench --tick MS`), so the daemon, the physical
//! limit and supervisord all run the very same writer; and of the health
//! workload (`bench --serve PORT`, a tiny HTTP server); and the limit of
//! the launch workloads (`bench --spawn-loop N`, N × `posix_spawnp sleep`).

mod dashboard;
mod harness;
mod health;
mod lifecycle;
mod output;
mod plot;
mod scale;
mod supervisord;
mod tail;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::json;

use harness::{Row, Stat};
use lifecycle::*;
use output::*;
use tail::*;

struct Opts {
    quick: bool,
    n: usize,
    json_out: PathBuf,
    plot: PathBuf,
    only: Option<Vec<String>>,
    supervisord: Option<PathBuf>,
}

fn main() {
    let mut opts = Opts {
        quick: false,
        n: 200,
        json_out: PathBuf::from("target/bench.json"),
        plot: PathBuf::from("docs/scale.png"),
        only: None,
        supervisord: None,
    };
    let mut args = std::env::args().skip(1).peekable();
    // Child modes first: they must start fast and do nothing else.
    match args.peek().map(String::as_str) {
        Some("--emit") => output::emit(args.nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)),
        Some("--tick") => tail::tick(args.nth(1).and_then(|n| n.parse().ok()).unwrap_or(100)),
        Some("--spawn-loop") => {
            scale::spawn_loop(args.nth(1).and_then(|n| n.parse().ok()).unwrap_or(0))
        }
        Some("--serve") => match args.nth(1).and_then(|p| p.parse().ok()) {
            Some(port) => health::serve(port),
            None => std::process::exit(2),
        },
        _ => {}
    }
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--json" => opts.json_out = args.next().map(PathBuf::from).unwrap_or(opts.json_out),
            "--only" => {
                opts.only = args
                    .next()
                    .map(|s| s.split(',').map(str::to_string).collect())
            }
            "--plot" => opts.plot = args.next().map(PathBuf::from).unwrap_or(opts.plot),
            "--supervisord" => opts.supervisord = args.next().map(PathBuf::from),
            "--instances" => opts.n = args.next().and_then(|n| n.parse().ok()).unwrap_or(opts.n),
            "-h" | "--help" => {
                println!("bench [--quick] [--json PATH] [--plot PNG (docs/scale.png)] [--only W1,W1L,W2,W3sh,W5r,TAIL,HEALTH,SCALE,...] [--supervisord PATH] [--instances N (200)]");
                return;
            }
            other => {
                eprintln!("bench: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    if opts.supervisord.is_none() {
        opts.supervisord = which("supervisord");
    }
    let bin = release_dir();
    harness::become_subreaper();
    let mut rows = Vec::new();
    let want = |id: &str| opts.only.as_ref().is_none_or(|o| o.iter().any(|x| x == id));
    // A workload measures every id it names (W5 and W5r share their limit);
    // only the rows asked for are kept. A failure or a panic in one workload
    // is reported and the run goes on (its daemons are stopped on unwind).
    macro_rules! run {
        ([$($id:literal),+], $f:expr) => {
            let ids: &[&str] = &[$($id),+];
            if ids.iter().any(|id| want(id)) {
                eprintln!("bench: {} ...", ids.join(", "));
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| $f)) {
                    Ok(Ok(r)) => rows.extend(r.into_iter().filter(|r| want(r.id))),
                    Ok(Err(e)) => eprintln!("bench: {} failed: {e}", ids.join(", ")),
                    Err(_) => eprintln!("bench: {} panicked", ids.join(", ")),
                }
                harness::reap_orphans();
            }
        };
    }
    run!(["W1"], w1_spawn(&bin, &opts));
    run!(["W1L"], scale::w1_launch(&bin, &opts));
    run!(["W2"], w2_status(&bin, &opts));
    run!(["W3"], w3_crash_loop(&bin, &opts, false));
    run!(["W3sh"], w3_shell(&bin, &opts));
    run!(["W4"], w4_restart_latency(&bin, &opts));
    run!(["W5", "W5r", "W5w"], w5_output(&bin, &opts));
    run!(["W6"], w6_stop_all(&bin, &opts));
    run!(["W7"], w7_reload(&bin, &opts));
    run!(["W8"], w3_crash_loop(&bin, &opts, true));
    run!(["TAIL"], tail_latency(&bin, &opts));
    run!(["HEALTH"], health::health(&bin, &opts));
    run!(["DASH"], dashboard::dashboard(&bin, &opts));
    run!(["SCALE"], scale::scale(&bin, &opts, &opts.plot));
    report(&rows, &opts);
    let left = harness::leftovers();
    if !left.is_empty() {
        eprintln!("bench: processes left behind (killed now): {left:?}");
        std::process::exit(1);
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/release/examples/bench → target/release
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target/release"))
}

fn fmt_stat(s: &Option<Stat>) -> String {
    match s {
        Some(s) if s.min == s.max => format!("{:.3}", s.median),
        Some(s) => format!("{:.3} ({:.3}–{:.3})", s.median, s.min, s.max),
        None => "—".into(),
    }
}

fn report(rows: &[Row], opts: &Opts) {
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("")
            .trim()
    );
    println!(
        "\nTaskmaster benchmarks ({}; {machine})\n",
        if opts.quick { "quick" } else { "full" }
    );
    println!("| id | workload | unit | taskmaster median (min–max) | limit | ratio | supervisord | target | ok |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut out = Vec::new();
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.id,
            r.what,
            r.unit,
            fmt_stat(&r.ours),
            fmt_stat(&r.limit),
            r.ratio
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "—".into()),
            fmt_stat(&r.supervisord),
            r.target,
            match r.pass {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "—",
            }
        );
        let s =
            |s: &Option<Stat>| s.map(|s| json!({"median": s.median, "min": s.min, "max": s.max}));
        out.push(json!({
            "id": r.id, "workload": r.what, "unit": r.unit, "taskmaster": s(&r.ours), "limit": s(&r.limit),
            "ratio": r.ratio, "supervisord": s(&r.supervisord), "target": r.target, "pass": r.pass,
        }));
    }
    let doc = json!({"machine": machine, "quick": opts.quick, "rows": out});
    if let Some(dir) = opts.json_out.parent() {
        let _ = fs::create_dir_all(dir);
    }
    match fs::write(
        &opts.json_out,
        serde_json::to_string_pretty(&doc).unwrap_or_default(),
    ) {
        Ok(()) => println!("\nJSON: {}", opts.json_out.display()),
        Err(e) => eprintln!("bench: cannot write {}: {e}", opts.json_out.display()),
    }
}

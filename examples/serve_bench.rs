//! The station service under load (run on purpose, not in the tests):
//!
//! ```sh
//! cargo run --release --example serve_bench [-- UNITS [ROUNDS [split|netns]]]
//! ```
//!
//! A warm-up run (not counted: a job's first run is slower), then ROUNDS
//! (default 3) of: a 64-channel zero-latency sim run of UNITS units
//! (default 3000) with no client, two with 1,000 live event clients (each
//! on its own connection; first asking for gzip, then not) plus 200 status
//! requests and 10 unit lookups a second, and a second run with no client.
//! It prints each run's throughput and its ratio to the mean of the
//! round's two quiet runs (which bracket the loaded ones, so a drift over
//! the round does not count as load), the p50/p99 latency of the status
//! and unit requests under load, and the median ratios (a shared machine's
//! noise moves single runs by ±10%). Each run also prints where the CPU
//! time went: the serving threads, the runs' threads, and CPU 0's softirq
//! and idle time. A disk whose fsync time wanders moves the throughput of
//! quiet runs by a factor of two on some machines; the CPU split does not
//! depend on it. FLASHGATE_BENCH_TOKEN picks the token
//! (`softhsm`, the default, or `kryoptic`). The service runs as `flashgate
//! serve` does, its serving threads at a lower priority than the runs;
//! FLASHGATE_BENCH_EVEN=1 runs them all at one priority instead.
//!
//! By default the clients share the service's process and cores. With
//! `split` (Linux, `taskset`), the service keeps CPU 0 and the clients run
//! in a process of their own on CPU 1, as clients on other machines would:
//! the ratio then measures what serving them costs the station, not what
//! decrypting a gigabyte costs the clients. With `netns` (Linux, root,
//! iproute2), the split clients also sit in a network namespace of their
//! own, reached over a veth pair whose receive paths are steered (RPS) to
//! the receiving side's CPU: on loopback the kernel delivers a segment to
//! the clients' socket on the sender's CPU, which charges the clients'
//! TCP receive work to the station. A bench killed by a signal leaves its
//! namespace behind (`ip netns del fgbench-PID`). Needs SoftHSM2
//! (`scripts/setup.sh`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::panic
)]

#[path = "common/proc_stat.rs"]
mod proc_stat;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flashgate::station_ca::Role;
use flashgate_serve::{ServeOptions, Service};
use serde_json::Value;
use tokio::io::AsyncReadExt;

const CLIENTS: usize = 1000;

fn policy() -> String {
    flashgate::lab::example_policy()
        .replace("quota = 1000 ", "quota = 10000000 ")
        .replace("end = 1000 ", "end = 99999999 ")
        .replace("width = 6 ", "width = 8 ")
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn json(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn start(&self, job: &str, fixtures: &str, units: u64) -> String {
        let r: Value = self
            .http
            .post(format!("{}/api/v1/runs", self.base))
            .json(&serde_json::json!({"jobs": [job], "fixtures": fixtures, "units": units}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["id"].as_str().expect("the run started").to_owned()
    }

    /// Units per second of the run, from its summary.
    async fn wait(&self, id: &str) -> (u64, f64) {
        loop {
            let s = self.json(&format!("/api/v1/runs/{id}")).await;
            if s["finished"] == true {
                let sum = self.json(&format!("/api/v1/runs/{id}/summary")).await;
                let passed = sum[0]["summary"]["passed"].as_u64().unwrap();
                let ms = sum[0]["summary"]["elapsed_ms"].as_u64().unwrap();
                return (passed, passed as f64 * 1000.0 / ms as f64);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// CPU time of this process's threads (serving ones, named `serve`, and
/// the rest: the runs) and of CPU 0 (softirq, idle), in clock ticks.
struct Cpu {
    at: Instant,
    serving: u64,
    rest: u64,
    softirq: u64,
    idle: u64,
}

impl Cpu {
    fn now() -> Self {
        // The process's own total keeps the time of threads that have
        // ended (a run's channels); the serving threads live as long as
        // the runtime, so theirs is read thread by thread.
        let ticks = |stat: &str| proc_stat::cpu_ticks(stat, false);
        let total = ticks(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default());
        let mut serving = 0;
        for task in std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            if stat.contains("(serve)") {
                serving += ticks(&stat);
            }
        }
        let rest = total.saturating_sub(serving);
        let cpu0: Vec<u64> = std::fs::read_to_string("/proc/stat")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("cpu0 "))
            .map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let field = |i: usize| cpu0.get(i).copied().unwrap_or(0);
        Cpu {
            at: Instant::now(),
            serving,
            rest,
            softirq: field(6),
            idle: field(3) + field(4),
        }
    }

    /// Where CPU time went since `self`, as seconds and as a share of the
    /// wall time (with `split`, CPU 0 is all the service has).
    fn since(&self) -> String {
        let now = Cpu::now();
        let wall = now.at.duration_since(self.at).as_secs_f64();
        let s = |t: u64| t as f64 / proc_stat::TICKS_PER_SECOND;
        let part = |t: u64| format!("{:.1} s ({:.0}%)", s(t), 100.0 * s(t) / wall);
        format!(
            "CPU over {wall:.1} s: serving threads {}, runs {}, CPU 0 softirq {}, CPU 0 idle {}",
            part(now.serving.saturating_sub(self.serving)),
            part(now.rest.saturating_sub(self.rest)),
            part(now.softirq.saturating_sub(self.softirq)),
            part(now.idle.saturating_sub(self.idle)),
        )
    }
}

/// What the clients of one loaded run saw.
#[derive(serde::Serialize, serde::Deserialize)]
struct Load {
    connected: usize,
    connect_s: f64,
    bytes: usize,
    status_ms: Vec<f64>,
    unit_ms: Vec<f64>,
}

/// The TLS client set-up, from the files the service's CA wrote.
fn builder(dir: &Path) -> reqwest::ClientBuilder {
    let root =
        reqwest::Certificate::from_der(&std::fs::read(dir.join("root.der")).unwrap()).unwrap();
    let identity = std::fs::read(dir.join("identity.pem")).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .identity(reqwest::Identity::from_pem(&identity).unwrap())
}

/// Loads run `id` until `stop` resolves, then waits for its event streams
/// to end (they end with the run).
async fn load(
    dir: &Path,
    base: &str,
    id: &str,
    units: u64,
    gzip: bool,
    stop: impl std::future::Future<Output = ()>,
) -> Load {
    let api = Arc::new(Client {
        http: builder(dir).build().unwrap(),
        base: base.to_owned(),
    });
    // One connection per event client.
    let sse = builder(dir)
        .http1_only()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let loaded = Arc::new(AtomicBool::new(true));
    let status_ms = Arc::new(Mutex::new(Vec::new()));
    let unit_ms = Arc::new(Mutex::new(Vec::new()));
    // 200 status requests a second.
    {
        let (api, id, loaded, out) = (
            api.clone(),
            id.to_owned(),
            loaded.clone(),
            status_ms.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while loaded.load(Ordering::Relaxed) {
                tick.tick().await;
                let (api, id, out) = (api.clone(), id.clone(), out.clone());
                tokio::spawn(async move {
                    let t = Instant::now();
                    let _ = api.json(&format!("/api/v1/runs/{id}")).await;
                    out.lock().unwrap().push(t.elapsed().as_secs_f64() * 1e3);
                });
            }
        });
    }
    // 10 unit lookups a second, of a serial the first run issued.
    {
        let (api, loaded, out) = (api.clone(), loaded.clone(), unit_ms.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut n = 0u64;
            while loaded.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let serial = format!("ACME-TH-{:08}", 1 + (n * 7919) % units);
                let t = Instant::now();
                let _ = api.json(&format!("/api/v1/units?serial={serial}")).await;
                out.lock().unwrap().push(t.elapsed().as_secs_f64() * 1e3);
            }
        });
    }
    // The event clients, in waves of 50. The bytes are counted as they
    // come, not decoded: a client's decoding is the client machine's work.
    let url = format!("{base}/api/v1/runs/{id}/events");
    let connect = Instant::now();
    let mut readers = Vec::new();
    for _ in 0..CLIENTS / 50 {
        let wave: Vec<_> = (0..50)
            .map(|_| {
                let (sse, url) = (sse.clone(), url.clone());
                let accept = if gzip { "gzip" } else { "identity" };
                tokio::spawn(
                    async move { sse.get(&url).header("Accept-Encoding", accept).send().await },
                )
            })
            .collect();
        for w in wave {
            if let Ok(Ok(mut r)) = w.await {
                // A client that kept the whole stream would spend the
                // machine on its own memory.
                readers.push(tokio::spawn(async move {
                    let mut n = 0usize;
                    while let Ok(Some(chunk)) = r.chunk().await {
                        n += chunk.len();
                    }
                    n
                }));
            }
        }
    }
    let connected = readers.len();
    let connect_s = connect.elapsed().as_secs_f64();
    stop.await;
    loaded.store(false, Ordering::Relaxed);
    let mut bytes = 0usize;
    for r in readers {
        bytes += r.await.unwrap_or(0);
    }
    let status_ms = status_ms.lock().unwrap().clone();
    let unit_ms = unit_ms.lock().unwrap().clone();
    Load {
        connected,
        connect_s,
        bytes,
        status_ms,
        unit_ms,
    }
}

/// `serve_bench load DIR BASE ID UNITS gzip|plain`: the clients' process
/// of a split run. It loads until its standard input closes and prints
/// what it saw as one JSON line.
fn load_process(args: &[String]) {
    let [dir, base, id, units, encoding] = args else {
        panic!("usage: serve_bench load DIR BASE ID UNITS gzip|plain");
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let seen = runtime.block_on(load(
        Path::new(dir),
        base,
        id,
        units.parse().unwrap(),
        encoding == "gzip",
        async {
            let mut rest = Vec::new();
            let _ = tokio::io::stdin().read_to_end(&mut rest).await;
        },
    ));
    println!("{}", serde_json::to_string(&seen).unwrap());
}

/// Pins every thread of this process (and those it starts later) to `cpu`.
fn pin_self(cpu: u32) {
    let status = Command::new("taskset")
        .args([
            "-a",
            "-cp",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .expect("taskset (util-linux) runs");
    assert!(
        status.success(),
        "taskset could not pin the service to CPU {cpu}"
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("load") {
        return load_process(&args[1..]);
    }
    let units: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(3_000);
    let rounds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let mode = args.get(2).map(String::as_str);
    let split = matches!(mode, Some("split" | "netns"));
    let net_guard = (mode == Some("netns")).then(ClientNet::create);
    let net = net_guard.as_ref();
    let dir = std::env::temp_dir().join(format!("flashgate-serve-bench-{}", std::process::id()));
    let token = std::env::var("FLASHGATE_BENCH_TOKEN").unwrap_or_else(|_| "softhsm".to_owned());
    let setup = flashgate::lab::setup(&dir, &token, None).unwrap();
    let firmware: Vec<u8> = (0..65_536u32).map(|i| (i * 7) as u8).collect();
    let job = flashgate::lab::build_and_import(&setup, &policy(), firmware).unwrap();
    let ca = setup.station.init_station_ca("bench").unwrap();
    let client = ca.issue_client(Role::Operator, "bench", 1).unwrap();
    let mut identity =
        flashgate::x509::der_to_pem(&client.certificate_der, "CERTIFICATE").into_bytes();
    identity.extend(flashgate::x509::der_to_pem(&client.key_pkcs8_der, "PRIVATE KEY").into_bytes());
    let clients_dir = dir.join("clients");
    std::fs::create_dir_all(&clients_dir).unwrap();
    std::fs::write(clients_dir.join("identity.pem"), identity).unwrap();
    std::fs::write(clients_dir.join("root.der"), ca.certificate_der()).unwrap();
    // A seed per run: a UID the job has seen before is a rework, not a new board.
    for round in 0..=rounds {
        for (i, name) in ["quiet", "loaded-gzip", "loaded-plain", "after"]
            .iter()
            .enumerate()
        {
            let seed = round * 10 + i as u64 + 1;
            setup
                .station
                .define_fixtures(
                    &format!("{name}-{round}"),
                    &vec![format!("sim:timing=zero,seed={seed}"); 64],
                )
                .unwrap();
        }
    }
    if split {
        pin_self(0);
    }
    // As `flashgate serve` runs: serving threads below the runs' priority
    // (FLASHGATE_BENCH_EVEN=1: all at one priority, for comparison).
    let even = std::env::var_os("FLASHGATE_BENCH_EVEN").is_some();
    let (runtime, launcher) = if even {
        (
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap(),
            None,
        )
    } else {
        let (r, l) = flashgate_serve::priority::runtime().unwrap();
        (r, Some(l))
    };
    runtime.block_on(async move {
        let listen = net.map_or("127.0.0.1:0", |_| "10.203.0.1:0");
        let mut options = ServeOptions::new(listen.parse().unwrap());
        options.launcher = launcher;
        let service = Service::bind(setup.station, options).await.unwrap();
        let base = format!("https://{}", service.local_addr().unwrap());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(service.run(async move {
            let _ = stop_rx.await;
        }));
        let api = Arc::new(Client { http: builder(&clients_dir).build().unwrap(), base: base.clone() });

        let place = match (net, split) {
            (Some(_), _) => "the clients in a process of their own on CPU 1 in a network namespace over veth (RPS to each side's CPU), the service on CPU 0",
            (None, true) => "the clients in a process of their own on CPU 1, the service on CPU 0",
            (None, false) => "the clients in the service's process",
        };
        println!("64 channels, zero-latency sim, {units} units per run, {rounds} rounds of two loaded runs between two quiet ones; {place}");
        let id = api.start(&job.id, &format!("quiet-{rounds}"), units).await;
        let (_, warm) = api.wait(&id).await;
        println!("warm-up, no clients:           {warm:.0} units/s (not counted)");
        let mut ratios: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
        let cpu = Cpu::now();
        let id = api.start(&job.id, &format!("quiet-{round}"), units).await;
        let (passed, before) = api.wait(&id).await;
        println!("round {round}, no clients:           {passed} passed, {before:.0} units/s");
        println!("  {}", cpu.since());
        let mut loaded_runs = Vec::new();

        // Event clients that ask for gzip (as browsers do), then ones
        // that do not.
        for gzip in [true, false] {
        let encoding = if gzip { "gzip" } else { "plain" };
        let fixtures = format!("loaded-{encoding}-{round}");
        let cpu = Cpu::now();
        let id = api.start(&job.id, &fixtures, units).await;
        let (passed, busy, seen) = if split {
            let mut child = match net {
                Some(net) => {
                    let mut c = tokio::process::Command::new("ip");
                    c.args(["netns", "exec", &net.namespace, "taskset", "-c", "1"]);
                    c
                }
                None => {
                    let mut c = tokio::process::Command::new("taskset");
                    c.args(["-c", "1"]);
                    c
                }
            };
            let mut child = child
                .arg(std::env::current_exe().unwrap())
                .arg("load")
                .arg(&clients_dir)
                .args([base.as_str(), id.as_str(), &units.to_string(), encoding])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("the clients' process starts");
            let (passed, busy) = api.wait(&id).await;
            drop(child.stdin.take());
            let out = child.wait_with_output().await.unwrap();
            let seen: Load = serde_json::from_slice(&out.stdout).expect("the clients' process reports");
            (passed, busy, seen)
        } else {
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            let (dir, base, id2) = (clients_dir.clone(), base.clone(), id.clone());
            let clients = tokio::spawn(async move {
                load(&dir, &base, &id2, units, gzip, async move {
                    let _ = done_rx.await;
                })
                .await
            });
            let (passed, busy) = api.wait(&id).await;
            let _ = done_tx.send(());
            (passed, busy, clients.await.unwrap())
        };
        let Load { connected, connect_s, bytes, mut status_ms, mut unit_ms } = seen;
        println!(
            "{connected} {encoding} event clients (connected in {connect_s:.1} s), 200 status/s, 10 lookups/s: {passed} passed, {busy:.0} units/s"
        );
        println!("  {}", cpu.since());
        loaded_runs.push((encoding, busy));
        println!("event bytes on the wire:       {:.1} MB", bytes as f64 / 1e6);
        println!(
            "status  p50 {:.1} ms  p99 {:.1} ms  ({} requests)",
            percentile(&mut status_ms, 0.5),
            percentile(&mut status_ms, 0.99),
            status_ms.len()
        );
        println!(
            "unit    p50 {:.1} ms  p99 {:.1} ms  ({} requests)",
            percentile(&mut unit_ms, 0.5),
            percentile(&mut unit_ms, 0.99),
            unit_ms.len()
        );
        }
        let cpu = Cpu::now();
        let id = api.start(&job.id, &format!("after-{round}"), units).await;
        let (passed, after) = api.wait(&id).await;
        println!("round {round}, no clients again:     {passed} passed, {after:.0} units/s");
        println!("  {}", cpu.since());
        let quiet = (before + after) / 2.0;
        for (i, (encoding, busy)) in loaded_runs.into_iter().enumerate() {
            println!("ratio ({encoding}):                  {:.3}", busy / quiet);
            ratios[i].push(busy / quiet);
        }
        }
        for (name, r) in ["gzip", "plain"].iter().zip(ratios.iter_mut()) {
            let list: Vec<String> = r.iter().map(|x| format!("{x:.3}")).collect();
            println!("ratio ({name}), median of {}: {:.3}  ({})", r.len(), percentile(r, 0.5), list.join(", "));
        }
        let _ = stop_tx.send(());
        let _ = served.await;
    });
    drop(net_guard);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The clients' network namespace and its veth pair (10.203.0.1 on the
/// service's side, 10.203.0.2 on the clients'), removed on drop.
struct ClientNet {
    namespace: String,
}

impl ClientNet {
    fn create() -> Self {
        let pid = std::process::id();
        let net = ClientNet {
            namespace: format!("fgbench-{pid}"),
        };
        let host = format!("fgbh{}", pid % 100_000);
        let ns = net.namespace.as_str();
        let ip = |args: &[&str]| {
            let status = Command::new("ip")
                .args(args)
                .status()
                .expect("ip (iproute2) runs");
            assert!(
                status.success(),
                "ip {} failed (netns needs root)",
                args.join(" ")
            );
        };
        ip(&["netns", "add", ns]);
        ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", "fgbc", "netns", ns,
        ]);
        ip(&["addr", "add", "10.203.0.1/30", "dev", &host]);
        ip(&["link", "set", &host, "up"]);
        ip(&["-n", ns, "addr", "add", "10.203.0.2/30", "dev", "fgbc"]);
        ip(&["-n", ns, "link", "set", "fgbc", "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        // What the service receives is handled on CPU 0, what the clients
        // receive on CPU 1, as on two machines.
        std::fs::write(format!("/sys/class/net/{host}/queues/rx-0/rps_cpus"), "1").unwrap();
        ip(&[
            "netns",
            "exec",
            ns,
            "sh",
            "-c",
            "echo 2 > /sys/class/net/fgbc/queues/rx-0/rps_cpus",
        ]);
        net
    }
}

impl Drop for ClientNet {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .status();
    }
}

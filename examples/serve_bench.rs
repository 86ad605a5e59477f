//! The station service under load (run on purpose, not in the tests):
//!
//! ```sh
//! cargo run --release --example serve_bench [-- UNITS [ROUNDS]]
//! ```
//!
//! ROUNDS (default 3) of: a 64-channel zero-latency sim run of UNITS units
//! (default 3000) with no client, then two with 1,000 live event clients
//! (each on its own connection; first asking for gzip, then not) plus 200
//! status requests and 10 unit lookups a second. It prints each run's
//! throughput and its ratio to the round's quiet run, the p50/p99 latency
//! of the status and unit requests under load, and the median ratios (a
//! shared machine's noise moves single runs by ±10%). Needs SoftHSM2 (`scripts/setup.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flashgate::station_ca::Role;
use flashgate_serve::{ServeOptions, Service};
use serde_json::Value;

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

fn main() {
    let units: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3_000);
    let rounds: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let dir = std::env::temp_dir().join(format!("flashgate-serve-bench-{}", std::process::id()));
    let setup = flashgate::lab::setup(&dir, "softhsm", None).unwrap();
    let firmware: Vec<u8> = (0..65_536u32).map(|i| (i * 7) as u8).collect();
    let job = flashgate::lab::build_and_import(&setup, &policy(), firmware).unwrap();
    let ca = setup.station.init_station_ca("bench").unwrap();
    let client = ca.issue_client(Role::Operator, "bench", 1).unwrap();
    let mut identity =
        flashgate::x509::der_to_pem(&client.certificate_der, "CERTIFICATE").into_bytes();
    identity.extend(flashgate::x509::der_to_pem(&client.key_pkcs8_der, "PRIVATE KEY").into_bytes());
    let root = reqwest::Certificate::from_der(ca.certificate_der()).unwrap();
    // A seed per run: a UID the job has seen before is a rework, not a new board.
    for round in 0..rounds {
        for (i, name) in ["quiet", "loaded-gzip", "loaded-plain"].iter().enumerate() {
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let service = Service::bind(setup.station, ServeOptions::new("127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let base = format!("https://{}", service.local_addr().unwrap());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(service.run(async move {
            let _ = stop_rx.await;
        }));
        let builder = || {
            reqwest::Client::builder()
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .add_root_certificate(root.clone())
                .identity(reqwest::Identity::from_pem(&identity).unwrap())
        };
        let api = Arc::new(Client { http: builder().build().unwrap(), base: base.clone() });
        // One connection per event client.
        let sse = builder().http1_only().pool_max_idle_per_host(0).build().unwrap();

        println!("64 channels, zero-latency sim, {units} units per run, {rounds} rounds of a quiet run and two loaded ones");
        let mut ratios: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
        let id = api.start(&job.id, &format!("quiet-{round}"), units).await;
        let (passed, quiet) = api.wait(&id).await;
        println!("round {round}, no clients:           {passed} passed, {quiet:.0} units/s");

        // Event clients that ask for gzip (as browsers do), then ones
        // that do not. The bytes are counted as they come, not decoded:
        // a client's decoding is the client machine's work.
        for gzip in [true, false] {
        let encoding = if gzip { "gzip" } else { "plain" };
        let fixtures = format!("loaded-{encoding}-{round}");
        let id = api.start(&job.id, &fixtures, units).await;
        let loaded = Arc::new(AtomicBool::new(true));
        let status_ms = Arc::new(Mutex::new(Vec::new()));
        let unit_ms = Arc::new(Mutex::new(Vec::new()));
        let mut load = Vec::new();
        // 200 status requests a second.
        {
            let (api, id, loaded, out) = (api.clone(), id.clone(), loaded.clone(), status_ms.clone());
            load.push(tokio::spawn(async move {
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
            }));
        }
        // 10 unit lookups a second, of a serial the first run issued.
        {
            let (api, loaded, out) = (api.clone(), loaded.clone(), unit_ms.clone());
            load.push(tokio::spawn(async move {
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
            }));
        }
        // The event clients, in waves of 50.
        let url = format!("{base}/api/v1/runs/{id}/events");
        let connect = Instant::now();
        let mut readers = Vec::new();
        for _ in 0..CLIENTS / 50 {
            let wave: Vec<_> = (0..50)
                .map(|_| {
                    let (sse, url) = (sse.clone(), url.clone());
                    let accept = if gzip { "gzip" } else { "identity" };
                    tokio::spawn(async move { sse.get(&url).header("Accept-Encoding", accept).send().await })
                })
                .collect();
            for w in wave {
                if let Ok(Ok(mut r)) = w.await {
                    // Counted as it comes: a client that kept the whole
                    // stream would spend the machine on its own memory.
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
        let (passed, busy) = api.wait(&id).await;
        loaded.store(false, Ordering::Relaxed);
        let mut bytes = 0usize;
        for r in readers {
            bytes += r.await.unwrap_or(0);
        }
        println!(
            "{connected} {encoding} event clients (connected in {connect_s:.1} s), 200 status/s, 10 lookups/s: {passed} passed, {busy:.0} units/s"
        );
        println!("ratio ({encoding}):                  {:.3}", busy / quiet);
        ratios[usize::from(!gzip)].push(busy / quiet);
        println!("event bytes on the wire:       {:.1} MB", bytes as f64 / 1e6);
        let mut s = status_ms.lock().unwrap().clone();
        let mut u = unit_ms.lock().unwrap().clone();
        println!(
            "status  p50 {:.1} ms  p99 {:.1} ms  ({} requests)",
            percentile(&mut s, 0.5),
            percentile(&mut s, 0.99),
            s.len()
        );
        println!(
            "unit    p50 {:.1} ms  p99 {:.1} ms  ({} requests)",
            percentile(&mut u, 0.5),
            percentile(&mut u, 0.99),
            u.len()
        );
        }
        }
        for (name, r) in ["gzip", "plain"].iter().zip(ratios.iter_mut()) {
            let list: Vec<String> = r.iter().map(|x| format!("{x:.3}")).collect();
            println!("ratio ({name}), median of {}: {:.3}  ({})", r.len(), percentile(r, 0.5), list.join(", "));
        }
        let _ = stop_tx.send(());
        let _ = served.await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}

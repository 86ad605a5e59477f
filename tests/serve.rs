//! `flashgate serve` from outside: real TLS from two clients (reqwest with
//! rustls, curl), the role matrix over every endpoint, a run started and
//! watched over the network, abuse, and SIGTERM in the middle of a run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::station::{Served, ROLES};
use common::{Kind, Lab};
use flashgate_serve::endpoints::ENDPOINTS;
use serde_json::Value;

/// Every connection without a valid client certificate is refused during
/// the handshake: no HTTP status ever comes back, from either client.
#[test]
fn handshake_refuses_what_the_station_does_not_trust() {
    let (lab, _) = Lab::with_sim_job(|p| p, 4096);
    let served = Served::start(&lab, &[]);
    served.revoke(&lab, "revoked");
    // Trusted ones pass.
    let (code, status, body) = served.curl(Some("operator"), &[], "/api/v1/whoami");
    assert_eq!((code, status), (0, 200), "{body}");
    let who: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(who["role"], "operator");
    assert!(who["audit_name"]
        .as_str()
        .unwrap()
        .contains(&served.certs.fingerprint("operator")));
    let refused = |served: &Served, names: &[Option<&str>]| {
        for name in names {
            let (code, status, body) = served.curl(*name, &[], "/api/v1/whoami");
            assert!(
                code != 0 && status == 0,
                "curl with {name:?} got through: {code} {status} {body}"
            );
            let r = served
                .client(*name)
                .get(served.url("/api/v1/whoami"))
                .send();
            assert!(r.is_err(), "reqwest with {name:?} got through: {r:?}");
        }
    };
    // No certificate, another CA's, a revoked one; the enterprise CA's
    // certificates are not the station's either.
    refused(
        &served,
        &[
            None,
            Some("stranger"),
            Some("revoked"),
            Some("ent-operator"),
        ],
    );
    // TLS 1.2 is not offered.
    let (code, status, _) = served.curl(Some("operator"), &["--tls-max", "1.2"], "/api/v1/whoami");
    assert!(code != 0 && status == 0);
    // The deny-list is read again when it changes: no restart.
    served.revoke(&lab, "auditor");
    refused(&served, &[Some("auditor")]);
    let (exit, _) = served.stop();
    assert!(exit.success());

    // Trusting an enterprise CA instead: its certificates work, with the
    // role from their OU; an expired one and one without a role do not.
    let certs = common::station::Certs::existing(&lab);
    let ca = certs.path("ent-ca.pem");
    let served = Served::start_with(&lab, certs, &["--client-ca", ca.to_str().unwrap()]);
    let (code, status, body) = served.curl(Some("ent-operator"), &[], "/api/v1/whoami");
    assert_eq!((code, status), (0, 200), "{body}");
    assert!(body.contains("\"role\":\"operator\""), "{body}");
    refused(
        &served,
        &[Some("expired"), Some("no-role"), Some("operator")],
    );
}

fn request(
    served: &Served,
    client: &reqwest::blocking::Client,
    method: &str,
    path: &str,
) -> reqwest::blocking::Response {
    let url = served.url(path);
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    // Bodies that no handler accepts: an allowed call is refused for its
    // input and changes nothing; a forbidden one never gets that far.
    let b = client.request(m, url);
    let b = match method {
        "POST" | "PUT" => b
            .header("content-type", "application/json")
            .body("{\"not\": \"valid\"}"),
        _ => b,
    };
    b.send().unwrap()
}

/// Every endpoint for every role: the roles in its row are let through,
/// every other gets 403 with the JSON error. The table is the router's own
/// (`ENDPOINTS`), and the served OpenAPI document must list exactly it.
#[test]
fn role_matrix_over_every_endpoint() {
    let (lab, job) = Lab::with_sim_job(|p| p, 4096);
    let served = Served::start(&lab, &[]);
    let doc: Value = served
        .client(Some("auditor"))
        .get(served.url("/api/v1/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented: Vec<String> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in item.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", m.to_uppercase()));
        }
    }
    documented.sort();
    let mut table: Vec<String> = ENDPOINTS
        .iter()
        .map(|e| format!("{} {}", e.method, e.path))
        .collect();
    table.sort();
    assert_eq!(
        documented, table,
        "the OpenAPI document and the role table differ"
    );

    for role in ROLES {
        let client = served.client(Some(role));
        for e in ENDPOINTS {
            let path = e
                .path
                .replace(
                    "{id}",
                    if e.path.contains("/runs/") {
                        "0-0"
                    } else if e.method == "DELETE" {
                        // A job that is not there: an allowed removal is a 404.
                        "00000000000000000000000000000000"
                    } else {
                        &job
                    },
                )
                .replace("{job}", &job)
                .replace("{name}", "no-such-set");
            let r = request(&served, &client, e.method, &path);
            let status = r.status().as_u16();
            let allowed = e.roles.iter().any(|r| r.to_string() == role);
            if allowed {
                assert_ne!(
                    status, 403,
                    "{role} must be allowed {} {}",
                    e.method, e.path
                );
            } else {
                assert_eq!(
                    status, 403,
                    "{role} must be refused {} {}",
                    e.method, e.path
                );
                let body: Value = r.json().unwrap();
                assert_eq!(
                    body["error"]["code"], "forbidden",
                    "{role} {} {}",
                    e.method, e.path
                );
                assert!(body["error"]["message"].as_str().unwrap().contains(role));
            }
        }
    }
    // Nothing above changed the station: the job is still there, its log intact.
    let jobs: Value = served
        .client(Some("auditor"))
        .get(served.url("/api/v1/jobs"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 1);
    let (status, _) = served.stop();
    assert!(status.success());
    let report = lab.export_and_verify(&job, "bundle");
    assert_eq!(report["verdict"], "clean", "{report:#}");
}

/// The run's status once it has ended (polled; five minutes at most).
fn until_finished(served: &Served, op: &reqwest::blocking::Client, id: &str) -> Value {
    until_status(served, op, id, 300, |s| s["finished"] == true)
}

/// The run's status once `done` holds of it (polled for `secs` at most).
fn until_status(
    served: &Served,
    op: &reqwest::blocking::Client,
    id: &str,
    secs: u64,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let s: Value = op
            .get(served.url(&format!("/api/v1/runs/{id}")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if done(&s) {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run {id} stalled: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads an SSE stream to its end: (event name, id, JSON) per event.
fn read_events(r: reqwest::blocking::Response) -> Vec<(String, u64, Value)> {
    parse_events(&r.text().unwrap())
}

/// The same, of a stream asked for with `Accept-Encoding: gzip`: one gzip
/// member, decoded here (the client has no decoder of its own).
fn read_gzip_events(r: reqwest::blocking::Response) -> Vec<(String, u64, Value)> {
    use std::io::Read as _;
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let wire = r.bytes().unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&wire[..])
        .read_to_string(&mut text)
        .expect("one whole gzip member, CRC and length checked");
    assert!(
        wire.len() * 3 < text.len(),
        "{} of {}",
        wire.len(),
        text.len()
    );
    parse_events(&text)
}

fn parse_events(text: &str) -> Vec<(String, u64, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let (mut name, mut id, mut data) = (String::new(), 0, String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                name = v.to_owned();
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = v.parse().unwrap();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
        if !name.is_empty() {
            out.push((name, id, serde_json::from_str(&data).unwrap()));
        }
    }
    out
}

/// An operator starts a run over the network, follows it live, reconnects
/// with Last-Event-ID, and the summary, the status and the audit log agree;
/// the log names the operator's certificate, not anything the request said.
#[test]
fn a_run_started_and_watched_over_the_network() {
    let (lab, job) = Lab::with_job(Kind::Kryoptic, |p| p, 4096);
    let served = Served::start(&lab, &[]);
    let op = served.client(Some("operator"));
    let fixtures = served.sim_fixtures(8, "");
    let id = served.start_run(&job, &fixtures, 40);
    let events = read_events(
        op.get(served.url(&format!("/api/v1/runs/{id}/events")))
            .send()
            .unwrap(),
    );
    let passed = events.iter().filter(|e| e.0 == "unit-passed").count();
    assert_eq!(passed, 40);
    assert_eq!(events.last().unwrap().0, "run-finished");
    let ids: Vec<u64> = events.iter().map(|e| e.1).collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "ids are consecutive"
    );
    // Reconnecting after event 10 gives exactly what followed it.
    let again = read_events(
        op.get(served.url(&format!("/api/v1/runs/{id}/events")))
            .header("Last-Event-ID", "10")
            .send()
            .unwrap(),
    );
    assert_eq!(again.len(), events.len() - 10);
    assert_eq!(again[0].1, 11);
    // Compressed, the same events; from event 10 too (inside a segment).
    let url = served.url(&format!("/api/v1/runs/{id}/events"));
    let gzip = |after: Option<&str>| {
        let mut rq = op.get(&url).header("Accept-Encoding", "br;q=1, gzip;q=0.8");
        if let Some(a) = after {
            rq = rq.header("Last-Event-ID", a);
        }
        read_gzip_events(rq.send().unwrap())
    };
    assert_eq!(gzip(None), events);
    assert_eq!(gzip(Some("10")), again);
    let status: Value = op
        .get(served.url(&format!("/api/v1/runs/{id}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let summary: Value = op
        .get(served.url(&format!("/api/v1/runs/{id}/summary")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(status["finished"], true);
    assert_eq!(status["passed"], 40);
    assert_eq!(summary[0]["summary"]["passed"], 40);
    assert_eq!(status["channels"].as_array().unwrap().len(), 8);
    // Unit lookup by serial and UID from the log.
    let unit = &events.iter().find(|e| e.0 == "unit-passed").unwrap().2["unit"];
    let serial = unit["serial"].as_str().unwrap();
    let found: Value = op
        .get(served.url(&format!("/api/v1/units?serial={serial}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(found[0]["serial"], serial);
    assert_eq!(found[0]["result"], "passed");
    let uid = found[0]["uid"].as_str().unwrap();
    let by_uid: Value = op
        .get(served.url(&format!("/api/v1/units?uid={uid}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(by_uid[0]["serial"], serial);
    // Whole values only: a part of a serial or a UID finds nothing.
    for part in [
        format!("serial={}", &serial[..serial.len() - 1]),
        format!("uid={}", &uid[2..]),
    ] {
        let none: Value = op
            .get(served.url(&format!("/api/v1/units?{part}")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(none, serde_json::json!([]), "{part}");
    }
    // Metrics count the same units.
    let metrics = served
        .client(Some("metrics"))
        .get(served.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "flashgate_units_total{{job=\"{job}\",result=\"passed\",stage=\"\"}} 40"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("flashgate_stage_duration_seconds_bucket"));
    assert!(metrics.contains("flashgate_last_checkpoint_age_seconds"));
    assert!(
        metrics.contains("flashgate_hsm_operation_duration_seconds_count{operation=\"sign\"}"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("flashgate_quota_left{{job=\"{job}\"}}")));
    let (exit, _) = served.stop();
    assert!(exit.success());
    let operator = format!(
        "sha256:{}",
        common::station::Certs {
            dir: lab.path("certs")
        }
        .fingerprint("operator")
    );
    let run_started = lab
        .records()
        .into_iter()
        .find_map(|r| match r.kind {
            flashgate_audit::RecordKind::RunStarted(s) => Some(s),
            _ => None,
        })
        .unwrap();
    assert!(
        run_started.operator.contains("OU=operator"),
        "{}",
        run_started.operator
    );
    assert!(
        run_started.operator.contains(&operator),
        "{}",
        run_started.operator
    );
    let report = lab.export_and_verify(&job, "bundle");
    assert_eq!(report["verdict"], "clean", "{report:#}");
}

/// Oversized bodies get 413; a client that sends its headers too slowly is
/// cut off; one that stops reading its events is dropped and the run ends
/// as if it were not there.
#[test]
fn abuse_is_bounded() {
    let (lab, job) = Lab::with_sim_job(|p| p, 4096);
    let served = Served::start(&lab, &["--max-body", "65536", "--header-timeout", "2"]);
    let sup = served.client(Some("supervisor"));
    let r = sup
        .post(served.url("/api/v1/jobs"))
        .body(vec![0u8; 100_000])
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);

    // Slow loris: a TLS session that never finishes its request headers.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let port = served.port;
    let certs_dir = served.certs.dir.clone();
    let cut = rt.block_on(async move {
        let mut tls = raw_tls(&certs_dir, "operator", port).await;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let started = std::time::Instant::now();
        // The service closes it; a read ends (EOF or an error) well before 30 s.
        let r = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        (r.is_ok(), started.elapsed())
    });
    assert!(cut.0, "a slow client was not cut off");

    // A reader that stops: start a long run, open its events and never read.
    let op = served.client(Some("operator"));
    let fixtures = served.sim_fixtures(4, "");
    let id = served.start_run(&job, &fixtures, 900);
    let certs_dir = served.certs.dir.clone();
    let request = format!("GET /api/v1/runs/{id}/events HTTP/1.1\r\nHost: x\r\n\r\n");
    let dropped = rt.block_on(async move {
        use tokio::io::AsyncWriteExt;
        let mut tls = raw_tls(&certs_dir, "operator", port).await;
        tls.write_all(request.as_bytes()).await.unwrap();
        // Read nothing while the run goes on.
        tokio::time::sleep(Duration::from_secs(1)).await;
        tls
    });
    // The run is not held up by it.
    let status = until_finished(&served, &op, &id);
    assert_eq!(status["passed"], 900);
    // And the stalled reader was dropped: reading now ends at EOF.
    let ended = rt.block_on(async move {
        use tokio::io::AsyncReadExt;
        let mut tls = dropped;
        let mut sink = vec![0u8; 1 << 16];
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match tls.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    });
    assert!(ended, "a reader that stopped was never dropped");
    let (exit, _) = served.stop();
    assert!(exit.success());
    assert_eq!(lab.export_and_verify(&job, "bundle")["verdict"], "clean");
}

async fn raw_tls(
    certs: &std::path::Path,
    who: &str,
    port: u16,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls_pki::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for c in rustls_pki::pem_certs(&std::fs::read(certs.join("station-ca.pem")).unwrap()) {
        roots.add(c).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> =
        rustls_pki::pem_certs(&std::fs::read(certs.join(format!("{who}.pem"))).unwrap());
    let key: PrivateKeyDer<'static> =
        rustls_pki::pem_key(&std::fs::read(certs.join(format!("{who}.key.pem"))).unwrap());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
}

mod rustls_pki {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    pub use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    pub fn pem_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem)
            .map(Result::unwrap)
            .collect()
    }

    pub fn pem_key(pem: &[u8]) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(pem).unwrap()
    }
}

/// SIGTERM in the middle of a run: the units in flight finish, the run is
/// recorded as stopped and checkpointed, the service exits 0; a restart
/// finds nothing to recover and the bundle verifies with every unit counted.
#[test]
fn sigterm_during_a_run_finishes_cleanly() {
    let (lab, job) = Lab::with_sim_job(|p| p, 4096);
    let served = Served::start(&lab, &[]);
    let op = served.client(Some("operator"));
    let fixtures = served.sim_fixtures(4, ",timing=realistic");
    let id = served.start_run(&job, &fixtures, 100000);
    // Let a few units pass.
    until_status(&served, &op, &id, 120, |s| {
        s["passed"].as_u64().unwrap() >= 4
    });
    // The runs come first: every serving thread at nice +10, every other
    // thread (the run's, its channels', the log's) at the process's own.
    let threads = threads_with_nice(served.child.id());
    let base = threads
        .iter()
        .find(|(tid, ..)| *tid == served.child.id())
        .map(|(_, _, nice)| *nice)
        .unwrap();
    assert!(
        threads.iter().any(|(_, name, _)| name == "serve"),
        "{threads:?}"
    );
    assert!(
        threads.iter().any(|(_, name, _)| name.starts_with("run-")),
        "{threads:?}"
    );
    for (_, name, nice) in &threads {
        let want = if name == "serve" {
            (base + 10).min(19)
        } else {
            base
        };
        assert_eq!(*nice, want, "thread {name}: {threads:?}");
    }
    let (exit, log) = served.stop();
    assert!(exit.success(), "serve exited {exit:?}: {log}");
    // Restart: nothing to recover.
    let again = Served::start_with(
        &lab,
        common::station::Certs {
            dir: lab.path("certs"),
        },
        &[],
    );
    let st: Value = again
        .client(Some("auditor"))
        .get(again.url("/api/v1/station"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(st["recovered"].as_array().unwrap().len(), 0, "{st}");
    drop(again.stop());
    let report = lab.export_and_verify(&job, "bundle");
    assert_eq!(report["verdict"], "clean", "{report:#}");
    let records = lab.records();
    let stopped = records
        .iter()
        .filter(|r| matches!(r.kind, flashgate_audit::RecordKind::RunStopped(_)))
        .count();
    assert_eq!(stopped, 1, "the run is recorded as stopped");
}

/// Each thread of process `pid`: its id, name and nice value (from
/// `/proc`).
fn threads_with_nice(pid: u32) -> Vec<(u32, String, i32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid: u32 = task.unwrap().file_name().to_str().unwrap().parse().unwrap();
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else {
            continue; // ended meanwhile
        };
        // "tid (name) state ..." with the name possibly holding spaces;
        // nice is the 19th field, the 17th after the name.
        let (head, rest) = stat.rsplit_once(") ").unwrap();
        let name = head.split_once(" (").unwrap().1.to_owned();
        let nice: i32 = rest.split(' ').nth(16).unwrap().parse().unwrap();
        out.push((tid, name, nice));
    }
    out
}

/// A thousand live clients on one run, each on a connection of its own:
/// every one of them sees the whole stream, and the run is as it would be
/// with none.
#[test]
fn a_thousand_event_clients_leave_the_run_correct() {
    const CLIENTS: usize = 1000;
    const UNITS: u64 = 80;
    let (lab, job) = Lab::with_sim_job(|p| p, 4096);
    let served = Served::start(&lab, &[]);
    // About a second a unit: the run is live while the clients connect.
    let fixtures = served.sim_fixtures(8, ",timing=realistic");
    let op = served.client(Some("operator"));
    let id = served.start_run(&job, &fixtures, UNITS);
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&served.certs.pem("station-ca")).unwrap(),
        )
        .identity(reqwest::Identity::from_pem(&served.certs.identity_pem("operator")).unwrap())
        // One connection per client: HTTP/2 would carry them all on one.
        .http1_only()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = served.url(&format!("/api/v1/runs/{id}/events"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let seen: Vec<Result<(usize, bool), String>> = rt.block_on(async move {
        // Clients arrive in waves of 50, as a line's screens and scripts
        // would, not in one instant; each wave is connected (response
        // headers in) before the next starts. The run goes on meanwhile.
        let mut responses = Vec::new();
        for _ in 0..CLIENTS / 50 {
            let wave: Vec<_> = (0..50)
                .map(|_| {
                    let (client, url) = (client.clone(), url.clone());
                    tokio::spawn(async move { client.get(&url).send().await })
                })
                .collect();
            for t in wave {
                responses.push(t.await.unwrap());
            }
        }
        let tasks: Vec<_> = responses
            .into_iter()
            .map(|r| {
                tokio::spawn(async move {
                    let text = match r {
                        Ok(r) => r.text().await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    text.map(|text| {
                        let passed = text.matches("event: unit-passed\n").count();
                        (passed, text.contains("event: run-finished\n"))
                    })
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    assert_eq!(seen.len(), CLIENTS);
    let failed: Vec<&String> = seen.iter().filter_map(|r| r.as_ref().err()).collect();
    if !failed.is_empty() {
        let (_, log) = served.stop();
        panic!(
            "{} clients failed, first: {}\nservice log:\n{log}",
            failed.len(),
            failed[0]
        );
    }
    for (passed, finished) in seen.iter().flatten() {
        assert_eq!(*passed as u64, UNITS);
        assert!(finished);
    }
    let summary: Value = op
        .get(served.url(&format!("/api/v1/runs/{id}/summary")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(summary[0]["summary"]["passed"], UNITS);
    let (exit, _) = served.stop();
    assert!(exit.success());
    assert_eq!(lab.export_and_verify(&job, "bundle")["verdict"], "clean");
}

/// A supervisor imports and removes jobs over the network (curl uploads the
/// package file as it is); a tampered package is refused with the import's
/// own sentence and leaves nothing; an operator may not upload; an auditor
/// downloads the audit bundle, which verifies offline; the journal names
/// who did each.
#[test]
fn jobs_and_bundles_over_the_network() {
    let (lab, first) = Lab::with_sim_job(|p| p, 4096);
    let policy = lab.policy("policy2.toml", |p| p);
    lab.build_job("job2.fgj", &policy, 2048);
    let served = Served::start(&lab, &[]);
    let package = lab.path("job2.fgj");
    let at = format!("@{}", package.display());
    let upload = [
        "--data-binary",
        at.as_str(),
        "-H",
        "content-type: application/octet-stream",
    ];
    // An operator may not.
    let (_, status, body) = served.curl(Some("operator"), &upload, "/api/v1/jobs");
    assert_eq!(status, 403, "{body}");
    // A tampered package: one byte flipped in the middle.
    let mut bytes = std::fs::read(&package).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(lab.path("tampered.fgj"), &bytes).unwrap();
    let at_bad = format!("@{}", lab.path("tampered.fgj").display());
    let (_, status, body) = served.curl(
        Some("supervisor"),
        &["--data-binary", at_bad.as_str()],
        "/api/v1/jobs",
    );
    assert_eq!(status, 422, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], "package-refused");
    assert!(!err["error"]["message"].as_str().unwrap().is_empty());
    let sup = served.client(Some("supervisor"));
    let jobs: Value = sup
        .get(served.url("/api/v1/jobs"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        jobs.as_array().unwrap().len(),
        1,
        "the tampered package left nothing"
    );
    // The real one.
    let (_, status, body) = served.curl(Some("supervisor"), &upload, "/api/v1/jobs");
    assert_eq!(status, 201, "{body}");
    let job: Value = serde_json::from_str(&body).unwrap();
    let second = job["id"].as_str().unwrap().to_owned();
    assert_eq!(job["quota_left"], job["quota"]);
    // The same package again is a replay.
    let (_, status, _) = served.curl(Some("supervisor"), &upload, "/api/v1/jobs");
    assert_eq!(status, 422);
    // Remove it.
    let r = sup
        .delete(served.url(&format!("/api/v1/jobs/{second}")))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    // The auditor's bundle of the first job, as a tar, verifies offline.
    let r = served
        .client(Some("auditor"))
        .get(served.url(&format!("/api/v1/audit/bundle/{first}")))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    std::fs::write(lab.path("bundle.tar"), r.bytes().unwrap()).unwrap();
    let untar = std::process::Command::new("tar")
        .args(["-xf", "bundle.tar"])
        .current_dir(lab.path(""))
        .status()
        .unwrap();
    assert!(untar.success());
    lab.verify_bundle(&format!("bundle-{first}"));
    let (exit, _) = served.stop();
    assert!(exit.success());
    let journal = std::fs::read_to_string(lab.path("state/station/journal.jsonl")).unwrap();
    let lines: Vec<Value> = journal
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = lines
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "job-import",
            "job-import",
            "job-import",
            "job-remove",
            "audit-export"
        ],
        "{journal}"
    );
    let supervisor = common::station::Certs::existing(&lab).fingerprint("supervisor");
    assert!(lines[1]["who"].as_str().unwrap().contains(&supervisor));
    assert!(lines[0]["outcome"]
        .as_str()
        .unwrap()
        .starts_with("import refused"));
    assert!(lines[4]["who"].as_str().unwrap().contains("OU=auditor"));
}

/// Unit lookups follow the audit log as it grows: units of a run after
/// the first lookup are found, and so are those of a run long enough to
/// fill more than one of the index's stretches (4,096 records each).
#[test]
fn unit_lookups_follow_the_log_as_it_grows() {
    let (lab, job) = Lab::with_sim_job(
        |p| {
            p.replace("quota = 1000 ", "quota = 10000 ")
                .replace("end = 1000 ", "end = 99999 ")
        },
        4096,
    );
    let served = Served::start(&lab, &[]);
    let op = served.client(Some("operator"));
    let lookup = |q: &str| -> Vec<Value> {
        let r: Value = op
            .get(served.url(&format!("/api/v1/units?{q}")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        r.as_array().unwrap().clone()
    };
    let finish = |id: &str| until_finished(&served, &op, id);
    // Before any unit: nothing, and the index has read the log so far.
    assert!(lookup("serial=ACME-TH-000001").is_empty());
    let fixtures = served.sim_fixtures(8, ",timing=zero");
    let first = served.start_run(&job, &fixtures, 10);
    finish(&first);
    let one = lookup("serial=ACME-TH-000001");
    assert_eq!(one.len(), 1, "{one:?}");
    let uid = one[0]["uid"].as_str().unwrap().to_owned();
    // A long run: its units go past the first stretch.
    let second = served.start_run(&job, &fixtures, 4500);
    // Its serials, from its events as they come (counter values a run
    // reserved and did not use are skipped, so they are not 11..4510).
    // The stream lasts as long as the run, which in a debug build on a
    // slow machine takes longer than the client's usual 60 s per request.
    let events = read_events(
        op.get(served.url(&format!("/api/v1/runs/{second}/events")))
            .timeout(Duration::from_secs(600))
            .send()
            .unwrap(),
    );
    let serials: Vec<String> = events
        .iter()
        .filter(|e| e.0 == "unit-passed")
        .map(|e| e.2["unit"]["serial"].as_str().unwrap().to_owned())
        .collect();
    let s = finish(&second);
    assert_eq!(s["passed"].as_u64().unwrap(), serials.len() as u64);
    assert!(serials.len() > 4096, "{}", serials.len());
    for serial in [0, 1, 2000, 4095, 4096, serials.len() - 1].map(|i| &serials[i]) {
        let found = lookup(&format!("serial={serial}"));
        assert_eq!(found.len(), 1, "{serial}: {found:?}");
        assert_eq!(found[0]["serial"], serial.as_str());
        assert_eq!(found[0]["result"], "passed");
    }
    assert!(lookup("serial=ACME-TH-099999").is_empty());
    // By UID, in either run.
    let late = events
        .iter()
        .filter(|e| e.0 == "unit-passed")
        .nth(4096)
        .map(|e| &e.2["unit"])
        .unwrap();
    for (uid, serial) in [
        (uid.as_str(), "ACME-TH-000001"),
        (
            late["uid"].as_str().unwrap(),
            late["serial"].as_str().unwrap(),
        ),
    ] {
        let by_uid = lookup(&format!("uid={uid}"));
        assert_eq!(by_uid.len(), 1, "{by_uid:?}");
        assert_eq!(by_uid[0]["serial"], serial);
    }
    let (exit, _) = served.stop();
    assert!(exit.success());
}

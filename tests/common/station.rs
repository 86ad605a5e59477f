//! A station service under test: certificates for every role (and the
//! ones that must be refused), `flashgate serve` started as a child on a
//! free loopback port, and clients for it (reqwest with rustls, curl).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::Lab;

/// The client certificates the tests use.
pub const ROLES: [&str; 4] = ["operator", "supervisor", "auditor", "metrics"];

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA made with openssl in `dir` as `NAME.pem` / `NAME.key`.
pub fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key.pem"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "30",
            "-subj",
            &format!("/CN={name}/O=flashgate station"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A leaf `NAME.pem` / `NAME.key` from `ca`, with `subject`, `days` valid
/// (-1: already expired) and the extensions `ext`.
pub fn make_leaf(dir: &Path, ca: &str, name: &str, subject: &str, days: i32, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key.pem"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key.pem"),
            "-days",
            &days.to_string(),
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

pub const CLIENT_EXT: &str =
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n";

/// Certificates in `lab/certs`: the station CA's (`station-ca.pem`), one
/// client per role and `revoked` issued by `flashgate appliance
/// issue-cert`; made with openssl: `stranger` (a supervisor of another CA),
/// and an enterprise CA `ent-ca` with `ent-operator`, `expired` and
/// `no-role` (a certificate without an OU).
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    pub fn make(lab: &Lab) -> Self {
        let dir = lab.path("certs");
        std::fs::create_dir_all(&dir).unwrap();
        lab.ok(&["appliance", "ca", "init", "--name", "line 3"]);
        for (role, name) in ROLES
            .iter()
            .map(|r| (*r, *r))
            .chain([("operator", "revoked")])
        {
            lab.ok(&[
                "appliance",
                "issue-cert",
                "--role",
                role,
                "--name",
                name,
                "--out",
                "certs",
            ]);
        }
        make_ca(&dir, "other-ca");
        make_leaf(
            &dir,
            "other-ca",
            "stranger",
            "/CN=mallory/OU=supervisor/O=flashgate station",
            30,
            CLIENT_EXT,
        );
        make_ca(&dir, "ent-ca");
        make_leaf(
            &dir,
            "ent-ca",
            "ent-operator",
            "/CN=erin/OU=operator/O=Acme CM",
            30,
            CLIENT_EXT,
        );
        make_leaf(
            &dir,
            "ent-ca",
            "expired",
            "/CN=late/OU=operator/O=Acme CM",
            -1,
            CLIENT_EXT,
        );
        make_leaf(
            &dir,
            "ent-ca",
            "no-role",
            "/CN=nobody/O=Acme CM",
            30,
            CLIENT_EXT,
        );
        Self { dir }
    }

    /// The certificates already made in `lab/certs`.
    pub fn existing(lab: &Lab) -> Self {
        Self {
            dir: lab.path("certs"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn pem(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(&format!("{name}.pem"))).unwrap()
    }

    /// Certificate and key of `name` as one PEM (reqwest's identity form).
    pub fn identity_pem(&self, name: &str) -> Vec<u8> {
        let mut out = self.pem(name);
        out.extend(std::fs::read(self.path(&format!("{name}.key.pem"))).unwrap());
        out
    }

    /// SHA-256 of `name`'s certificate, hex.
    pub fn fingerprint(&self, name: &str) -> String {
        use sha2::Digest;
        let text = String::from_utf8(self.pem(name)).unwrap();
        let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap()
        };
        hex::encode(sha2::Sha256::digest(der))
    }
}

/// A running `flashgate serve`.
pub struct Served {
    pub child: Child,
    pub base: String,
    pub port: u16,
    pub certs: Certs,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Served {
    /// Starts `flashgate serve` on the lab's appliance with `extra` flags.
    pub fn start(lab: &Lab, extra: &[&str]) -> Self {
        let certs = Certs::make(lab);
        Self::start_with(lab, certs, extra)
    }

    pub fn start_with(lab: &Lab, certs: Certs, extra: &[&str]) -> Self {
        let mut args = vec!["serve".to_owned(), "--listen".into(), "127.0.0.1:0".into()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = lab
            .command(&refs)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start flashgate serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
            s
        });
        let addr = line
            .trim()
            .strip_prefix("listening on https://")
            .unwrap_or_else(|| panic!("flashgate serve did not start: {line:?}"))
            .to_owned();
        let port = addr.rsplit(':').next().unwrap().parse().unwrap();
        Self {
            child,
            base: format!("https://{addr}"),
            port,
            certs,
            stderr: Some(stderr),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A blocking client with `name`'s certificate (None: no certificate).
    pub fn client(&self, name: Option<&str>) -> reqwest::blocking::Client {
        let mut b = reqwest::blocking::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(&self.certs.pem("station-ca")).unwrap(),
            )
            .timeout(std::time::Duration::from_secs(60));
        if let Some(n) = name {
            b = b.identity(reqwest::Identity::from_pem(&self.certs.identity_pem(n)).unwrap());
        }
        b.build().unwrap()
    }

    /// An async client with `name`'s certificate.
    pub fn async_client(&self, name: &str) -> reqwest::Client {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(&self.certs.pem("station-ca")).unwrap(),
            )
            .identity(reqwest::Identity::from_pem(&self.certs.identity_pem(name)).unwrap())
            .build()
            .unwrap()
    }

    /// `curl` with `name`'s certificate: (exit code, status or 0, body).
    pub fn curl(&self, name: Option<&str>, args: &[&str], path: &str) -> (i32, u16, String) {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "30", "--cacert"])
            .arg(self.certs.path("station-ca.pem"))
            .args(["-w", "\n%{http_code}"]);
        if let Some(n) = name {
            c.arg("--cert")
                .arg(self.certs.path(&format!("{n}.pem")))
                .arg("--key")
                .arg(self.certs.path(&format!("{n}.key.pem")));
        }
        let out = c.args(args).arg(self.url(path)).output().expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (
            out.status.code().unwrap_or(-1),
            code.trim().parse().unwrap_or(0),
            body.to_owned(),
        )
    }

    /// Defines a fixture set of `channels` sim channels (the sim spec with
    /// `extra` options appended) through the API, as a supervisor would;
    /// returns its name.
    pub fn sim_fixtures(&self, channels: usize, extra: &str) -> String {
        let name = format!("bench-{channels}");
        let spec = format!("sim:seed=3,flash-base=0x08000000{extra}");
        let r = self
            .client(Some("supervisor"))
            .put(self.url(&format!("/api/v1/fixtures/{name}")))
            .json(&serde_json::json!({ "channels": vec![spec; channels] }))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().unwrap());
        name
    }

    /// Starts a run of `job` on `fixtures` as the operator; returns its id.
    pub fn start_run(&self, job: &str, fixtures: &str, units: u64) -> String {
        let r = self
            .client(Some("operator"))
            .post(self.url("/api/v1/runs"))
            .json(&serde_json::json!({"jobs": [job], "fixtures": fixtures, "units": units}))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "the run did not start");
        let started: serde_json::Value = r.json().unwrap();
        started["id"].as_str().unwrap().to_owned()
    }

    /// Puts `name` on the station's deny-list with `appliance revoke-cert`
    /// while the service runs.
    pub fn revoke(&self, lab: &Lab, name: &str) {
        let cert = self.certs.path(&format!("{name}.pem"));
        lab.ok(&["appliance", "revoke-cert", "--cert", cert.to_str().unwrap()]);
    }

    /// SIGTERM, then the exit status and what the service logged.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        super::terminate(&mut self.child);
        let status = self.child.wait().unwrap();
        let log = self.stderr.take().unwrap().join().unwrap_or_default();
        (status, log)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

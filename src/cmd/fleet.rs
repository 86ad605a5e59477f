//! `flashgate fleet ...`: the OEM's collector over every appliance's bundles.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use flashgate::oem;
use flashgate_fleet::device::{DeviceAnswer, DeviceQuery};
use flashgate_fleet::inventory::{InventoryFormat, Selection};
use flashgate_fleet::Fleet;

/// The database every fleet command works on.
#[derive(Args, Clone)]
pub struct DbArg {
    /// The fleet database: a libpq connection string or postgresql:// URL.
    #[arg(long, env = "DATABASE_URL")]
    db: String,
}

#[derive(Subcommand)]
pub enum FleetCmd {
    /// Create or migrate the fleet schema, and trust OEM keys.
    Init {
        #[command(flatten)]
        db: DbArg,
        /// An OEM job-signing public key (PEM) to trust; may be repeated.
        #[arg(long)]
        oem: Vec<PathBuf>,
        /// Call an appliance silent after this many seconds without a new record.
        #[arg(long)]
        silent_after: Option<u64>,
    },
    /// Verify bundles and store them. Exit 0 all merged clean, 1 something to look at, 2 error.
    Ingest {
        #[command(flatten)]
        db: DbArg,
        /// Audit bundle directories, as `audit export` writes them.
        #[arg(required = true)]
        bundles: Vec<PathBuf>,
        /// An OEM job-signing public key (PEM) to trust from now on; may be repeated.
        #[arg(long)]
        oem: Vec<PathBuf>,
        /// The CM the appliances belong to (recorded on first sight).
        #[arg(long)]
        cm: Option<String>,
        /// Print one JSON object per bundle.
        #[arg(long)]
        json: bool,
        /// The witness key directory (`fleet witness init`): cosign each consistent
        /// appliance log's checkpoint after its ingest.
        #[arg(long, requires = "cosigned_out")]
        witness: Option<PathBuf>,
        /// Where the cosigned checkpoints go, one `<appliance>.checkpoint` each, for the CMs.
        #[arg(long, requires = "witness")]
        cosigned_out: Option<PathBuf>,
    },
    /// Serve the report page and the read API over HTTPS with client certificates
    /// (roles fleet-admin, fleet-viewer in the subject OU).
    Serve {
        #[command(flatten)]
        db: DbArg,
        /// Address and port, e.g. 127.0.0.1:8443 (port 0: any free one, printed).
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The server's certificate chain (PEM, leaf first).
        #[arg(long)]
        server_cert: PathBuf,
        /// Its PKCS#8 private key (PEM).
        #[arg(long)]
        server_key: PathBuf,
        /// The CA (PEM) the staff's client certificates chain to.
        #[arg(long)]
        client_ca: PathBuf,
        /// Client certificate fingerprints refused, one per line (re-read when it changes;
        /// a missing file refuses no one).
        #[arg(long)]
        deny_list: PathBuf,
    },
    /// The collector's witness key, which cosigns the checkpoints it found consistent.
    Witness {
        #[command(subcommand)]
        cmd: WitnessCmd,
    },
    /// Per product, CM, appliance and job: units, yield, quota, checkpoints, anomalies.
    Report {
        #[command(flatten)]
        db: DbArg,
        /// Only this product.
        #[arg(long)]
        product: Option<String>,
        /// JSON (docs/FLEET.md).
        #[arg(long)]
        json: bool,
    },
    /// Where and when a device was made, with an inclusion proof per record.
    Device {
        #[command(flatten)]
        db: DbArg,
        /// The device's UID (hex).
        #[arg(long, group = "what")]
        uid: Option<String>,
        /// Its serial number.
        #[arg(long, group = "what")]
        serial: Option<String>,
        /// Its certificate (PEM or DER).
        #[arg(long, group = "what")]
        cert: Option<PathBuf>,
        /// Write each record's proof.json and the appliance's enrollment.cbor here
        /// (record-1/, record-2/, ...), for `audit check-proof`.
        #[arg(long)]
        out: Option<PathBuf>,
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// The certificates of a job's or product's passed units, for a cloud registry.
    Inventory {
        #[command(flatten)]
        db: DbArg,
        /// One job (hex id).
        #[arg(long, group = "sel")]
        job: Option<String>,
        /// Every job of a product.
        #[arg(long, group = "sel")]
        product: Option<String>,
        /// csv or json.
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum WitnessCmd {
    /// Create the witness key: an Ed25519 private key file and its verifier key.
    Init {
        /// The directory for witness.key.pem (mode 0600) and witness.vkey.
        #[arg(long)]
        out: PathBuf,
        /// The witness's name in its cosignatures: a schema-less URL, say acme.example/fleet.
        #[arg(long)]
        name: String,
        /// Make the key in this PKCS#11 token (RFC 7512 URI with module-path and
        /// pin-source, as `oem init` takes) instead of a key file.
        #[arg(long)]
        pkcs11_uri: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Csv,
    Json,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the fleet runtime")
}

async fn trust(fleet: &Fleet, keys: &[PathBuf], w: &mut String) -> Result<()> {
    for path in keys {
        let key = oem::read_public_key_pem(path)?;
        if fleet.add_oem_key(&key).await? {
            let _ = writeln!(w, "trusting OEM key {}", path.display());
        }
    }
    Ok(())
}

/// `flashgate fleet ...`.
pub fn run(cmd: FleetCmd, w: &mut String) -> Result<u8> {
    if let FleetCmd::Serve {
        db,
        listen,
        server_cert,
        server_key,
        client_ca,
        deny_list,
    } = cmd
    {
        return serve(
            &db.db,
            flashgate_fleet_serve::FleetServeOptions::new(
                listen,
                server_cert,
                server_key,
                client_ca,
                deny_list,
            ),
        );
    }
    runtime()?.block_on(async move {
        match cmd {
            FleetCmd::Init {
                db,
                oem,
                silent_after,
            } => {
                let mut fleet = Fleet::connect(&db.db).await?;
                let (before, after) = fleet.init().await?;
                if before == after {
                    let _ = writeln!(w, "fleet schema is at version {after}");
                } else {
                    let _ = writeln!(w, "fleet schema migrated from version {before} to {after}");
                }
                trust(&fleet, &oem, w).await?;
                if let Some(s) = silent_after {
                    fleet.set_silent_after(s).await?;
                }
                Ok(0)
            }
            FleetCmd::Ingest {
                db,
                bundles,
                oem,
                cm,
                json,
                witness,
                cosigned_out,
            } => {
                use flashgate_fleet::ingest::Outcome;
                let witness = witness.map(|d| load_witness(&d)).transpose()?;
                let mut fleet = Fleet::open(&db.db).await?;
                trust(&fleet, &oem, w).await?;
                let options = flashgate_fleet::ingest::IngestOptions { cm };
                let mut code = 0;
                for dir in &bundles {
                    let report = fleet.ingest(dir, &options).await?;
                    if !(report.outcome == Outcome::Merged
                        || report.outcome == Outcome::AlreadyIngested)
                        || !report.anomalies.is_empty()
                    {
                        code = 1;
                    }
                    if json {
                        let _ = writeln!(w, "{}", serde_json::to_string(&report)?);
                    } else {
                        let _ = writeln!(w, "{report}");
                    }
                    // Only a log found consistent is cosigned.
                    let consistent =
                        report.outcome.merged() || report.outcome == Outcome::AlreadyIngested;
                    if let (Some(witness), Some(out), true) = (&witness, &cosigned_out, consistent)
                    {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs());
                        if let Some(c) = fleet.cosign(&report, witness, now).await? {
                            let path = c.write_to(out)?;
                            if !json {
                                let _ = writeln!(
                                    w,
                                    "  cosigned checkpoint at {} written to {}",
                                    c.size,
                                    path.display()
                                );
                            }
                        }
                    }
                }
                Ok(code)
            }
            // Handled above, on a runtime of its own.
            FleetCmd::Serve { .. } => Ok(2),
            FleetCmd::Witness {
                cmd:
                    WitnessCmd::Init {
                        out,
                        name,
                        pkcs11_uri,
                    },
            } => {
                use flashgate_fleet::witness::{Witness, KEY_FILE, VKEY_FILE};
                let (key, place) = match pkcs11_uri {
                    None => (
                        Witness::init(&out, &name)?,
                        out.join(KEY_FILE).display().to_string(),
                    ),
                    Some(uri) => {
                        let (public, uri) = witness_key_in_token(&uri)?;
                        (Witness::init_in_token(&out, &name, public, &uri)?, uri)
                    }
                };
                let _ = writeln!(
                    w,
                    "witness key made in {place}; give the CMs {} (its verifier key):\n{}",
                    out.join(VKEY_FILE).display(),
                    key.to_vkey()
                );
                Ok(0)
            }
            FleetCmd::Report { db, product, json } => {
                let fleet = Fleet::open(&db.db).await?;
                let report = fleet.report(product.as_deref()).await?;
                if json {
                    let _ = writeln!(w, "{}", serde_json::to_string_pretty(&report)?);
                } else {
                    let _ = write!(w, "{report}");
                }
                Ok(0)
            }
            FleetCmd::Device {
                db,
                uid,
                serial,
                cert,
                out,
                json,
            } => {
                let query = match (uid, serial, cert) {
                    (Some(u), None, None) => DeviceQuery::Uid(
                        hex::decode(u.trim()).with_context(|| format!("'{u}' is not hex"))?,
                    ),
                    (None, Some(s), None) => DeviceQuery::Serial(s),
                    (None, None, Some(p)) => DeviceQuery::Certificate(read_certificate(&p)?),
                    _ => bail!("give one of --uid, --serial or --cert"),
                };
                let fleet = Fleet::open(&db.db).await?;
                let answer = fleet.device(&query).await?;
                if let (Some(dir), DeviceAnswer::Ours { records }) = (&out, &answer) {
                    for (i, r) in records.iter().enumerate() {
                        let d = dir.join(format!("record-{}", i + 1));
                        std::fs::create_dir_all(&d)
                            .with_context(|| format!("cannot create {}", d.display()))?;
                        std::fs::write(
                            d.join("proof.json"),
                            serde_json::to_string_pretty(&r.proof)?,
                        )
                        .with_context(|| format!("cannot write {}", d.display()))?;
                        std::fs::write(d.join("enrollment.cbor"), &r.enrollment)
                            .with_context(|| format!("cannot write {}", d.display()))?;
                    }
                }
                if json {
                    let _ = writeln!(w, "{}", serde_json::to_string_pretty(&answer)?);
                } else {
                    render_device(&answer, out.as_deref(), w);
                }
                Ok(match answer {
                    DeviceAnswer::Ours { .. } => 0,
                    _ => 1,
                })
            }
            FleetCmd::Inventory {
                db,
                job,
                product,
                format,
                out,
            } => {
                let selection = match (job, product) {
                    (Some(j), None) => Selection::Job(
                        hex::decode(&j)
                            .ok()
                            .and_then(|v| v.try_into().ok())
                            .with_context(|| format!("'{j}' is not a job id (32 hex digits)"))?,
                    ),
                    (None, Some(p)) => Selection::Product(p),
                    _ => bail!("give --job or --product"),
                };
                let format = match format {
                    Format::Csv => InventoryFormat::Csv,
                    Format::Json => InventoryFormat::Json,
                };
                let fleet = Fleet::open(&db.db).await?;
                let n = match &out {
                    Some(path) => {
                        let f = tokio::fs::File::create(path)
                            .await
                            .with_context(|| format!("cannot create {}", path.display()))?;
                        let mut bw = tokio::io::BufWriter::new(f);
                        let n = fleet.inventory(&selection, format, &mut bw).await?;
                        let _ = writeln!(w, "{n} certificates written to {}", path.display());
                        n
                    }
                    None => {
                        let mut bw = tokio::io::BufWriter::new(tokio::io::stdout());
                        fleet.inventory(&selection, format, &mut bw).await?
                    }
                };
                Ok(if n == 0 { 1 } else { 0 })
            }
        }
    })
}

/// The default label of a witness key made in a token.
const WITNESS_LABEL: &str = "flashgate-witness";

/// Makes the witness's Ed25519 key in the token `uri` names (label: its
/// `object=`, else [`WITNESS_LABEL`]); returns the public key and the URI of the key.
fn witness_key_in_token(uri: &str) -> Result<([u8; 32], String)> {
    let uri = oem::Pkcs11Uri::parse(uri)?;
    let label = uri
        .object
        .clone()
        .unwrap_or_else(|| WITNESS_LABEL.to_owned());
    let token = flashgate::hsm::Token::open(&uri.token_config())?;
    if !token.find_by_label(&label)?.is_empty() {
        bail!(
            "the token '{}' already holds an object labelled '{label}'; name another with object= in the URI",
            uri.token
        );
    }
    let pair = token.generate_ed25519(&label)?;
    let public = token.ed25519_public(pair.public)?;
    Ok((public, uri.with_object(&label).to_string()))
}

/// The witness in `dir`, its key a file or in a token.
fn load_witness(dir: &std::path::Path) -> Result<flashgate_fleet::witness::Witness> {
    use flashgate_fleet::witness::{Witness, WitnessKey};
    match Witness::key_location(dir)? {
        WitnessKey::File => Ok(Witness::load(dir)?),
        WitnessKey::Token(uri) => {
            let parsed = oem::Pkcs11Uri::parse(&uri)
                .with_context(|| format!("the witness key in {}", dir.display()))?;
            let label = parsed
                .object
                .clone()
                .unwrap_or_else(|| WITNESS_LABEL.to_owned());
            let token = std::sync::Arc::new(flashgate::hsm::Token::open(&parsed.token_config())?);
            let signer = flashgate::hsm::TokenEd25519::find(token, &label)
                .with_context(|| format!("the witness key {uri}"))?;
            Ok(Witness::with_signer(dir, Box::new(signer))?)
        }
    }
}

/// `fleet serve`: until SIGTERM or SIGINT.
fn serve(db: &str, options: flashgate_fleet_serve::FleetServeOptions) -> Result<u8> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the service's runtime")?;
    runtime.block_on(async move {
        let fleet = Fleet::open(db).await?;
        let service = flashgate_fleet_serve::FleetService::bind(fleet, options).await?;
        if let Some(addr) = service.local_addr() {
            println!("listening on https://{addr}");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
        service.run(super::serve::shutdown_signal()).await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(0)
}

fn read_certificate(path: &std::path::Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.starts_with(b"-----BEGIN") {
        let text = String::from_utf8_lossy(&bytes);
        return flashgate::x509::pem_to_der(&text, "CERTIFICATE")
            .with_context(|| format!("{} holds no PEM certificate", path.display()));
    }
    Ok(bytes)
}

fn render_device(answer: &DeviceAnswer, out: Option<&std::path::Path>, w: &mut String) {
    match answer {
        DeviceAnswer::Ours { records } => {
            let _ = writeln!(w, "ours: {} record(s)", records.len());
            for (i, r) in records.iter().enumerate() {
                let _ = writeln!(
                    w,
                    "record {}: {} unit, product {}, job {}, appliance {} (CM {}), operator {}, at {}, counter {}, serial {}, uid {}, log record {} of {}",
                    i + 1,
                    r.result,
                    r.product,
                    r.job_id,
                    r.appliance_id,
                    r.cm,
                    r.operator.as_deref().unwrap_or("-"),
                    flashgate::display::time(u64::try_from(r.time_ms / 1000).unwrap_or(0)),
                    r.counter,
                    r.serial.as_deref().unwrap_or("-"),
                    r.uid.as_deref().unwrap_or("-"),
                    r.proof.index,
                    r.proof.tree_size
                );
                if let Some(stage) = &r.stage {
                    let _ = writeln!(w, "  failed at stage {stage}");
                }
            }
            if let Some(dir) = out {
                let _ = writeln!(
                    w,
                    "proofs written under {}; check one with: flashgate audit check-proof {}/record-1/proof.json --appliance {}/record-1/enrollment.cbor",
                    dir.display(),
                    dir.display(),
                    dir.display()
                );
            }
        }
        DeviceAnswer::NotOurs { reason } => {
            let _ = writeln!(w, "not ours: {reason}");
        }
        DeviceAnswer::IssuedOutsideLog { reason, .. } => {
            let _ = writeln!(w, "issued outside the log: {reason}");
        }
        DeviceAnswer::Unknown { reason } => {
            let _ = writeln!(w, "unknown: {reason}");
        }
    }
}

//! `flashgate appliance ...`: enroll the appliance and show what it is;
//! its client-certificate authority, client certificates and deny-list.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use flashgate::enrollment::VerifiedEnrollment;
use flashgate::station::{Access, Station};
use flashgate::station_ca::{self, ClientIdentity, Role, StationCaError};

#[derive(Subcommand)]
pub enum ApplianceCmd {
    /// Create the appliance keys in the token and write the enrollment record.
    Init {
        /// Also write the enrollment record here (to send to the OEM).
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Show the appliance identity, profiles and token objects.
    Show,
    /// The station's client-certificate authority (key in the HSM).
    #[command(subcommand)]
    Ca(CaCmd),
    /// Issue a client certificate and key for one person or program.
    IssueCert {
        /// The client's role: operator, supervisor, auditor or metrics.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The client's name (the certificate's CN and the files' names).
        #[arg(long)]
        name: String,
        /// Directory for the files (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Refuse a client certificate at the handshake from now on.
    RevokeCert(RevokeArgs),
}

#[derive(Subcommand)]
pub enum CaCmd {
    /// Create the CA key in the token and its self-signed certificate.
    Init {
        /// The CA's name ("NAME station CA"); default: the appliance id.
        #[arg(long)]
        name: Option<String>,
    },
}

/// Which certificate to revoke.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct RevokeArgs {
    /// The client certificate (PEM or DER).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Its SHA-256 fingerprint, 64 hex digits (colons allowed).
    #[arg(long)]
    fingerprint: Option<String>,
}

fn parse_role(word: &str) -> Result<Role, String> {
    word.parse().map_err(|e: StationCaError| e.to_string())
}

/// Runs `appliance CMD`.
pub fn run(config: &Path, cmd: ApplianceCmd, w: &mut String) -> Result<u8> {
    match cmd {
        ApplianceCmd::Init { out } => {
            let station = Station::open_for_enrollment(super::load_config(config)?)?;
            let (bytes, e) = station.enroll()?;
            if let Some(out) = out {
                std::fs::write(&out, &bytes)
                    .with_context(|| format!("cannot write {}", out.display()))?;
            }
            print_enrollment(w, &e);
            let _ = writeln!(
                w,
                "record:       {}",
                station.appliance().enrollment_path().display()
            );
        }
        ApplianceCmd::Show => {
            let station = super::open(config, Access::Read)?;
            print_enrollment(w, &station.enrollment()?);
            let _ = writeln!(w, "token objects:");
            for object in station.appliance().token_objects()? {
                print_object(w, &object);
            }
        }
        ApplianceCmd::Ca(CaCmd::Init { name }) => {
            let station = super::open(
                config,
                Access::Write {
                    purpose: "the station CA is being created".to_owned(),
                },
            )?;
            let name = match name {
                Some(n) => n,
                None => station.enrollment().map_or_else(
                    |_| "flashgate".to_owned(),
                    |e| e.record().appliance_id.clone(),
                ),
            };
            let ca = station.init_station_ca(&name)?;
            let state_dir = &station.appliance().config.state_dir;
            let _ = writeln!(w, "station CA:   {}", ca.subject());
            let _ = writeln!(
                w,
                "certificate:  {}",
                station_ca::ca_certificate_path(state_dir).display()
            );
            let _ = writeln!(
                w,
                "key:          {} in the token (sign only; it never leaves the token)",
                station_ca::CA_LABEL
            );
            let _ = writeln!(
                w,
                "valid until:  {}",
                flashgate::display::time(ca.not_after())
            );
            let _ = writeln!(w, "fingerprint:  sha256:{}", hex::encode(ca.fingerprint()));
        }
        ApplianceCmd::IssueCert {
            role,
            name,
            out,
            days,
        } => {
            let station = super::open(config, Access::Read)?;
            let ca = station.station_ca()?;
            let issued = ca.issue_client(role, &name, days)?;
            let files = issued.write(&ca, &out, &name)?;
            let _ = writeln!(w, "issued:       {}", issued.identity.subject);
            let _ = writeln!(
                w,
                "fingerprint:  sha256:{}",
                hex::encode(issued.fingerprint)
            );
            let _ = writeln!(
                w,
                "valid until:  {}",
                flashgate::display::time(issued.not_after)
            );
            let _ = writeln!(w, "certificate:  {}", files.certificate.display());
            let _ = writeln!(
                w,
                "key:          {} (PKCS#8, mode 0600)",
                files.key.display()
            );
            let _ = writeln!(
                w,
                "pkcs12:       {} (certificate, key and station CA; mode 0600)",
                files.pkcs12.display()
            );
            let _ = writeln!(
                w,
                "password:     the PKCS#12 password is in {} (mode 0600)",
                files.password.display()
            );
            let _ = writeln!(w, "station CA:   {}", files.ca_certificate.display());
            let _ = writeln!(
                w,
                "Hand these to {name} over a channel you trust, then delete the key, the .p12 and its password here."
            );
        }
        ApplianceCmd::RevokeCert(args) => {
            let (fingerprint, note) = match (&args.cert, &args.fingerprint) {
                (Some(path), _) => {
                    let bytes = std::fs::read(path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let der = std::str::from_utf8(&bytes)
                        .ok()
                        .and_then(|t| flashgate::x509::pem_to_der(t, "CERTIFICATE"))
                        .unwrap_or(bytes);
                    let note = match ClientIdentity::from_der(&der) {
                        Ok(id) => id.subject,
                        Err(e @ StationCaError::NotACertificate { .. }) => {
                            return Err(e).with_context(|| {
                                format!("{} holds no certificate", path.display())
                            })
                        }
                        // Revoked all the same: the deny-list goes by fingerprint.
                        Err(_) => String::new(),
                    };
                    (station_ca::fingerprint(&der), note)
                }
                (None, Some(text)) => (station_ca::parse_fingerprint(text)?, String::new()),
                (None, None) => anyhow::bail!("give --cert FILE.pem or --fingerprint HEX"),
            };
            // Not the writer lock: a running `flashgate serve` holds it,
            // and revoking must work while it does.
            let station = super::open(config, Access::Read)?;
            let added = station.revoke_client(fingerprint, &note)?;
            let path = station_ca::revoked_path(&station.appliance().config.state_dir);
            let hex = hex::encode(fingerprint);
            if added {
                let _ = writeln!(w, "revoked:      sha256:{hex}, added to {}", path.display());
            } else {
                let _ = writeln!(
                    w,
                    "revoked:      sha256:{hex} was already in {}; nothing changed",
                    path.display()
                );
            }
            let _ = writeln!(
                w,
                "A running `flashgate serve` picks up the deny-list without a restart."
            );
        }
    }
    Ok(0)
}

pub fn print_enrollment(w: &mut String, e: &VerifiedEnrollment) {
    use std::fmt::Write as _;
    let r = e.record();
    let _ = writeln!(w, "appliance:    {}", r.appliance_id);
    let _ = writeln!(
        w,
        "token:        {} {} serial {} label '{}'",
        r.token.manufacturer, r.token.model, r.token.serial, r.token.label
    );
    let _ = writeln!(
        w,
        "profiles:     {}",
        r.profiles
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(w, "enrolled:     {}", flashgate::display::time(r.created));
    let _ = writeln!(w, "fingerprint:  {}", e.fingerprint());
    let _ = writeln!(
        w,
        "pin-holder extraction (measured on this token at enrollment):"
    );
    for p in &r.profiles {
        let verdict = r.extraction(*p).map_or("not measured", |x| x.name());
        let _ = writeln!(w, "  {p}: {verdict}");
    }
    for (path, outcome) in &r.extraction_paths {
        if outcome.starts_with("possible") {
            let _ = writeln!(w, "    {path}: {outcome}");
        }
    }
    let refused = |p: &flashgate::hsm::Profile| {
        r.extraction(*p) == Some(flashgate::hsm::probe::Extraction::Refused)
    };
    match r.profiles.first() {
        Some(first) if refused(first) => {
            if !r.profiles.iter().all(refused) {
                let _ = writeln!(
                    w,
                    "note:         job build chooses {first}, under which the PIN holder cannot extract job secrets; \
                     a job forced to a profile marked possible can be opened by whoever holds this HSM's user PIN"
                );
            }
        }
        _ => {
            let _ = writeln!(
                w,
                "note:         whoever holds this HSM's user PIN can extract job secrets under a profile marked possible; \
                 use this appliance for development only (an OEM policy with `[job] require_pin_holder_safe = true` refuses to build for it)"
            );
        }
    }
}

/// One token object for `appliance show`: only the attributes its class has.
fn print_object(w: &mut String, object: &flashgate::appliance::TokenObject) {
    use cryptoki::object::ObjectClass;
    let (label, class, a) = (&object.label, object.class, &object.attributes);
    use std::fmt::Write as _;
    let flags: Vec<(bool, &str)> = if class == ObjectClass::PRIVATE_KEY {
        vec![
            (a.sign, "sign"),
            (a.sign_recover, "sign-recover"),
            (a.decrypt, "decrypt"),
            (a.unwrap, "unwrap"),
            (a.derive, "derive"),
        ]
    } else if class == ObjectClass::PUBLIC_KEY {
        vec![
            (a.verify, "verify"),
            (a.verify_recover, "verify-recover"),
            (a.encrypt, "encrypt"),
            (a.wrap, "wrap"),
            (a.derive, "derive"),
        ]
    } else if class == ObjectClass::SECRET_KEY {
        vec![
            (a.encrypt, "encrypt"),
            (a.decrypt, "decrypt"),
            (a.sign, "sign"),
            (a.verify, "verify"),
            (a.wrap, "wrap"),
            (a.unwrap, "unwrap"),
            (a.derive, "derive"),
        ]
    } else {
        Vec::new()
    };
    let on: Vec<&str> = flags
        .iter()
        .filter_map(|(on, n)| on.then_some(*n))
        .collect();
    let usage = if on.is_empty() {
        "-".to_owned()
    } else {
        on.join(",")
    };
    let storage = format!("modifiable={} copyable={}", a.modifiable, a.copyable);
    if flags.is_empty() {
        let _ = writeln!(w, "  {label}  class={class} {storage}");
        return;
    }
    if class == ObjectClass::PUBLIC_KEY {
        let _ = writeln!(w, "  {label}  class={class} usage={usage}");
    } else {
        let _ = writeln!(
            w,
            "  {label}  class={class} sensitive={} extractable={} usage={usage}",
            a.sensitive, a.extractable
        );
    }
    let all: Vec<String> = flags.iter().map(|(v, n)| format!("{n}={v}")).collect();
    let mechanisms = a.allowed_mechanisms.as_ref().map_or_else(
        || "any".to_owned(),
        |m| {
            m.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        },
    );
    let _ = writeln!(
        w,
        "      {} {storage} mechanisms={mechanisms}",
        all.join(" ")
    );
}

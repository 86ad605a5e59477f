//! `flashgate appliance ...`: enroll the appliance and show what it is.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use flashgate::enrollment::VerifiedEnrollment;
use flashgate::station::{Access, Station};

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

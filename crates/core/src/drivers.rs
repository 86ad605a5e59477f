//! The target drivers this build of flashgate knows, and what each declares
//! it can do, so that a job is refused at `job build` and at run start, not
//! after its first board has been given secrets.

use flashgate_policy::{KeySource, LockLevel, Policy};
use flashgate_target::{Capabilities, Capability, Driver};

/// Every driver this build has: adding a protocol is its crate and one line here.
pub static DRIVERS: &[&Driver] = &[
    &flashgate_target_sim::DRIVER,
    &flashgate_avr_isp::DRIVER,
    &flashgate_stm32_uart::DRIVER,
    &flashgate_openocd::DRIVER,
];

/// The registered driver named `name`.
pub fn find(name: &str) -> Option<&'static Driver> {
    DRIVERS.iter().copied().find(|d| d.name == name)
}

/// The capabilities a driver must have for a job with this policy.
pub fn required(policy: &Policy) -> Capabilities {
    let mut c = Capabilities::from([
        Capability::ProgramFlash,
        Capability::ReadFlash,
        Capability::ReadUid,
        // The certificate is always stored; keys unless made on the chip.
        Capability::StoreSecret,
    ]);
    if policy.keys().iter().any(|k| k.source == KeySource::OnChip) {
        c.insert(Capability::OnChipKeygen);
    }
    if policy.lock().require_challenge {
        c.insert(Capability::AnswerChallenge);
    }
    match policy.lock().level {
        LockLevel::None => {}
        LockLevel::Readout => {
            c.insert(Capability::SetLock);
            c.insert(Capability::ReadLock);
        }
        LockLevel::Permanent => {
            c.insert(Capability::SetLock);
            c.insert(Capability::ReadLock);
            c.insert(Capability::LockPermanent);
        }
    }
    c
}

/// Why a driver cannot run a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DriverMismatch {
    /// The driver is not the one the job's policy names.
    #[error("this job is for the {wanted} driver, not {given}")]
    WrongDriver { wanted: String, given: String },
    /// The driver lacks what the job needs.
    #[error("the {driver} driver cannot {missing}, which this job needs; {advice}")]
    MissingCapability {
        driver: String,
        missing: String,
        advice: String,
    },
}

fn advice(driver: &str, missing: &[Capability]) -> String {
    if driver == "avr-isp" && missing == [Capability::AnswerChallenge] {
        return "add agent=PATH (the serial port of the target's UART, where its provisioning agent answers) to --target".to_owned();
    }
    if driver == "stm32-uart" && missing == [Capability::SetLock] {
        return "it cannot get the board back into its bootloader after the challenge to set readout protection: add reset=lines (the fixture's DTR/RTS on NRST and BOOT0; on a pseudo-terminal also control=SOCKET, the simulator's control socket) or reset=agent (firmware that answers EnterBootloader) to --target".to_owned();
    }
    if missing.contains(&Capability::LockPermanent) {
        return format!(
            "the {driver} driver sets readout protection only: ask the OEM for a job with lock.level = \"readout\", or use a driver that can lock permanently"
        );
    }
    "use a driver and fixture that can".to_owned()
}

/// Fails, before any board is touched, when `driver` is not the policy's or
/// lacks a capability the job needs.
pub fn check(
    policy: &Policy,
    driver: &str,
    capabilities: Capabilities,
) -> Result<(), DriverMismatch> {
    let wanted = policy.target().driver.as_str();
    if wanted != driver {
        return Err(DriverMismatch::WrongDriver {
            wanted: wanted.to_owned(),
            given: driver.to_owned(),
        });
    }
    let missing = capabilities.missing(&required(policy));
    if missing.is_empty() {
        return Ok(());
    }
    Err(DriverMismatch::MissingCapability {
        driver: driver.to_owned(),
        missing: missing
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        advice: advice(driver, &missing),
    })
}

/// At `job build`: whether the policy's own driver, wired as a production
/// fixture would be (agent reachable), can run the job at all.
pub fn check_policy(policy: &Policy) -> Result<(), DriverMismatch> {
    let driver = policy.target().driver.as_str();
    let caps = find(driver).map_or_else(Capabilities::empty, |d| (d.production)());
    check(policy, driver, caps)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn shipped(name: &str, edit: impl Fn(String) -> String) -> Result<Policy, String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join("policies")
            .join(name);
        let text = edit(std::fs::read_to_string(path).unwrap());
        Policy::from_toml_str(&text).map_err(|e| e.to_string())
    }

    fn permanent(t: String) -> String {
        t.replace("level = \"readout\"", "level = \"permanent\"")
    }

    #[test]
    fn the_shipped_policies_run_on_their_drivers() {
        for name in [
            "sim-secure-mcu.toml",
            "avr-atmega328p.toml",
            "stm32f103.toml",
        ] {
            let p = shipped(name, |t| t).unwrap();
            check_policy(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn a_permanent_lock_is_refused_where_the_driver_cannot_set_it() {
        let p = shipped("sim-secure-mcu.toml", permanent).unwrap();
        assert_eq!(p.lock().level, LockLevel::Permanent);
        check_policy(&p).unwrap();
        let mut checked = 0;
        for name in ["stm32f103.toml", "avr-atmega328p.toml"] {
            // A policy the policy parser itself refuses is refused all the same.
            let Ok(p) = shipped(name, permanent) else {
                continue;
            };
            checked += 1;
            let e = check_policy(&p).unwrap_err().to_string();
            assert!(e.contains("cannot lock-permanent"), "{name}: {e}");
            assert!(e.contains("lock.level = \"readout\""), "{name}: {e}");
        }
        assert_eq!(checked, 2, "both policies parse with a permanent lock");
    }

    #[test]
    fn an_avr_fixture_without_its_agent_is_told_to_add_it() {
        let p = shipped("avr-atmega328p.toml", |t| t).unwrap();
        let spec = find("avr-isp").unwrap().spec("port=/dev/null").unwrap();
        let e = check(&p, "avr-isp", spec.capabilities())
            .unwrap_err()
            .to_string();
        assert!(e.contains("add agent=PATH"), "{e}");
        assert!(matches!(
            check(&p, "sim", Capabilities::all()),
            Err(DriverMismatch::WrongDriver { .. })
        ));
    }
}

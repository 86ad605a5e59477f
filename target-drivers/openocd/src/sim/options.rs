//! Simulator options, parsed from `key=value,...`.

use std::path::PathBuf;
use std::str::FromStr;

use flashgate_target::{Location, Space};

use super::SimError;

/// IDCODE of the Cortex-M3 r1p1 JTAG-DP (what `target/stm32f1x.cfg` expects).
pub const DEBUG_IDCODE: u32 = 0x3BA0_0477;
/// IDCODE of the STM32F10x medium-density boundary-scan TAP.
pub const BOUNDARY_IDCODE: u32 = 0x1641_0041;
/// DBGMCU_IDCODE of a medium-density STM32F103, revision X (REV_ID 0x2003, DEV_ID 0x410).
pub const DEV_ID: u32 = 0x2003_6410;
/// The device type the agent reports (the same as the UART simulator's F103).
pub const DEVICE_TYPE: &str = "stm32f103-md";

/// The timing model: how long flash operations keep BSY set, and the agent's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimTiming {
    /// `realistic` (true) or `zero`.
    pub realistic: bool,
    /// Half-word programming, ns (tPROG).
    pub program_ns: u64,
    /// Page erase, ns (tERASE).
    pub page_erase_ns: u64,
    /// Mass erase, ns (tME).
    pub mass_erase_ns: u64,
    /// SHA-256 per byte the agent measures, ns.
    pub agent_hash_ns_per_byte: u64,
    /// One P-256 signature by the agent, ns.
    pub agent_sign_ns: u64,
}

impl SimTiming {
    /// Every operation completes at once; BSY never reads 1.
    pub const fn zero() -> Self {
        SimTiming {
            realistic: false,
            program_ns: 0,
            page_erase_ns: 0,
            mass_erase_ns: 0,
            agent_hash_ns_per_byte: 0,
            agent_sign_ns: 0,
        }
    }

    /// STM32F103 datasheet figures (tPROG 52.5 µs typical, tERASE 20 ms, tME 20 ms), and the
    /// agent's SHA-256 and signature as the UART simulator has them.
    pub const fn realistic() -> Self {
        SimTiming {
            realistic: true,
            program_ns: 52_500,
            page_erase_ns: 20_000_000,
            mass_erase_ns: 20_000_000,
            agent_hash_ns_per_byte: 1_000,
            agent_sign_ns: 150_000_000,
        }
    }
}

/// Which error an injected flash fault sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashFaultKind {
    /// PGERR: as if the half-word had not been erased.
    Pgerr,
    /// WRPRTERR: as if the page were write-protected.
    Wrprterr,
}

/// A flash error injected into the n-th half-word programmed (counted from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashFault {
    /// The error.
    pub kind: FlashFaultKind,
    /// Which programming operation fails.
    pub nth: u32,
}

impl FromStr for FlashFault {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, SimError> {
        let bad = || SimError::BadValue {
            key: "flash-error",
            value: s.to_owned(),
            expected: "pgerr or wrprterr, optionally #N for the N-th half-word",
        };
        let (kind, nth) = match s.split_once('#') {
            Some((k, n)) => (k, parse_u64(n).ok_or_else(bad)?),
            None => (s, 1),
        };
        let kind = match kind {
            "pgerr" => FlashFaultKind::Pgerr,
            "wrprterr" => FlashFaultKind::Wrprterr,
            _ => return Err(bad()),
        };
        let nth = u32::try_from(nth).ok().filter(|&n| n > 0).ok_or_else(bad)?;
        Ok(FlashFault { kind, nth })
    }
}

/// The provisioning agent on the chip's UART, served on a pseudo-terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentOptions {
    /// Serve the agent's UART on a pty.
    pub enabled: bool,
    /// A stable symbolic link to the pty.
    pub link: Option<PathBuf>,
    /// Sleep the agent's simulated time before answering (wire time, digest, signature).
    pub realtime: bool,
    /// Where the agent reads its 32-byte identity key.
    pub identity: Location,
    /// The UART's baud rate (8N1), for the wire time.
    pub baud: u32,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            enabled: false,
            link: None,
            realtime: true,
            identity: Location::new(Space::Flash, 0x1_FC00),
            baud: 115_200,
        }
    }
}

/// Everything that defines one simulated chip and how it is served.
///
/// Option string (`flashgate sim stm32-jtag`, tests), comma-separated `key=value`:
///
/// | key | value | default |
/// |-----|-------|---------|
/// | `timing` | `realistic` (datasheet flash times) or `zero` | `realistic` |
/// | `tck-khz` | the TCK rate the simulated clock assumes (OpenOCD's `adapter speed`) | 1000 |
/// | `seed` | number the UID is derived from | 0 |
/// | `uid` | 24 hex digits | from `seed` |
/// | `idcode` | IDCODE of the Cortex-M3 debug TAP (a wrong part) | 0x3BA00477 |
/// | `bs-idcode` | IDCODE of the boundary-scan TAP | 0x16410041 |
/// | `dev-id` | DBGMCU_IDCODE | 0x20036410 |
/// | `locked` | `1`: a fresh chip starts at readout protection level 1 | `0` |
/// | `drop-after-bytes` | the socket closes after this many bytes from the host | never |
/// | `flash-error` | `pgerr` or `wrprterr`, `#N` for the N-th half-word programmed | none |
/// | `packed` | `on`: the AHB-AP offers packed transfers (the real one does not) | `off` |
/// | `state` | state file: loaded at start if it exists, saved as the chip changes | none |
/// | `agent` | `on`: serve the agent's UART on a pty | `off` |
/// | `agent-link` | symbolic link to the agent's pty | none |
/// | `agent-realtime` | `off`: the agent answers without sleeping its simulated time | `on` |
/// | `agent-baud` | the agent UART's baud rate | 115200 |
/// | `identity` | where the agent reads its key, e.g. `flash:0x1fc00` | `flash:0x1FC00` |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimOptions {
    /// Timing model.
    pub timing: SimTiming,
    /// TCK rate of the simulated clock, kHz.
    pub tck_khz: u32,
    /// Seed of the UID when `uid` is not given.
    pub seed: u64,
    /// Unique ID; derived from `seed` when `None`.
    pub uid: Option<[u8; 12]>,
    /// IDCODE of the debug TAP.
    pub idcode: u32,
    /// IDCODE of the boundary-scan TAP.
    pub boundary_idcode: u32,
    /// DBGMCU_IDCODE.
    pub dev_id: u32,
    /// A fresh chip starts readout-protected (a state file, if loaded, wins).
    pub locked: bool,
    /// The host's connection is closed after this many bytes in total.
    pub drop_after_bytes: Option<u64>,
    /// A flash programming error to inject.
    pub flash_error: Option<FlashFault>,
    /// The AHB-AP supports packed transfers.
    pub packed: bool,
    /// State file.
    pub state_file: Option<PathBuf>,
    /// The agent's UART.
    pub agent: AgentOptions,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            timing: SimTiming::realistic(),
            tck_khz: 1000,
            seed: 0,
            uid: None,
            idcode: DEBUG_IDCODE,
            boundary_idcode: BOUNDARY_IDCODE,
            dev_id: DEV_ID,
            locked: false,
            drop_after_bytes: None,
            flash_error: None,
            packed: false,
            state_file: None,
            agent: AgentOptions::default(),
        }
    }
}

impl SimOptions {
    /// The defaults with zero timing (fast tests).
    pub fn zero() -> Self {
        SimOptions {
            timing: SimTiming::zero(),
            ..SimOptions::default()
        }
    }

    /// The UID the chip reports.
    pub fn chip_uid(&self) -> [u8; 12] {
        // The UART simulator's derivation: one seed, one chip, whichever port it is seen from.
        self.uid
            .unwrap_or_else(|| flashgate_stm32_uart::sim::derive_uid(self.seed))
    }

    /// Simulated nanoseconds per TCK cycle.
    pub fn tck_period_ns(&self) -> u64 {
        1_000_000 / u64::from(self.tck_khz.max(1))
    }
}

/// Decimal or `0x` hexadecimal.
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

impl FromStr for SimOptions {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, SimError> {
        let bad = |key: &'static str, value: &str, expected: &'static str| SimError::BadValue {
            key,
            value: value.to_owned(),
            expected,
        };
        let u32_of = |key: &'static str, v: &str| {
            parse_u64(v)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad(key, v, "a 32-bit number"))
        };
        let mut o = SimOptions::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| bad("option", item, "key=value"))?;
            match k {
                "timing" => {
                    o.timing = match v {
                        "realistic" => SimTiming::realistic(),
                        "zero" | "instant" => SimTiming::zero(),
                        _ => return Err(bad("timing", v, "realistic or zero")),
                    }
                }
                "tck-khz" => {
                    o.tck_khz = u32_of("tck-khz", v)?;
                    if o.tck_khz == 0 || o.tck_khz > 1_000_000 {
                        return Err(bad("tck-khz", v, "a rate from 1 to 1000000 kHz"));
                    }
                }
                "seed" => o.seed = parse_u64(v).ok_or_else(|| bad("seed", v, "an integer"))?,
                "uid" => {
                    o.uid = Some(
                        hex::decode(v)
                            .ok()
                            .and_then(|b| b.try_into().ok())
                            .ok_or_else(|| bad("uid", v, "24 hex digits"))?,
                    )
                }
                "idcode" => o.idcode = u32_of("idcode", v)?,
                "bs-idcode" => o.boundary_idcode = u32_of("bs-idcode", v)?,
                "dev-id" => o.dev_id = u32_of("dev-id", v)?,
                "locked" => o.locked = parse_bool(v).ok_or_else(|| bad("locked", v, "0 or 1"))?,
                "drop-after-bytes" => {
                    o.drop_after_bytes = Some(
                        parse_u64(v).ok_or_else(|| bad("drop-after-bytes", v, "a byte count"))?,
                    )
                }
                "flash-error" => o.flash_error = Some(v.parse()?),
                "packed" => {
                    o.packed = parse_bool(v).ok_or_else(|| bad("packed", v, "on or off"))?
                }
                "state" => o.state_file = Some(PathBuf::from(v)),
                "agent" => {
                    o.agent.enabled = parse_bool(v).ok_or_else(|| bad("agent", v, "on or off"))?
                }
                "agent-link" => o.agent.link = Some(PathBuf::from(v)),
                "agent-realtime" => {
                    o.agent.realtime =
                        parse_bool(v).ok_or_else(|| bad("agent-realtime", v, "on or off"))?
                }
                "agent-baud" => {
                    o.agent.baud = u32_of("agent-baud", v)?;
                    if o.agent.baud == 0 {
                        return Err(bad("agent-baud", v, "a baud rate"));
                    }
                }
                "identity" => {
                    let at: Location = v
                        .parse()
                        .map_err(|_| bad("identity", v, "a location such as flash:0x1fc00"))?;
                    if super::agent::identity_address(at).is_none() {
                        return Err(bad(
                            "identity",
                            v,
                            "a flash location with 32 bytes inside the 128 KiB",
                        ));
                    }
                    o.agent.identity = at;
                }
                other => {
                    return Err(SimError::UnknownKey {
                        key: other.to_owned(),
                    })
                }
            }
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn defaults_and_every_key() {
        let o: SimOptions = "".parse().unwrap();
        assert_eq!(o, SimOptions::default());
        let o: SimOptions = "timing=zero, tck-khz=4000, seed=7, idcode=0x4ba00477, \
             bs-idcode=0x06410041, dev-id=0x20006410, locked=1, drop-after-bytes=1000, \
             flash-error=wrprterr#3, packed=on, state=/tmp/x.json, agent=on, \
             agent-link=/tmp/tty, agent-realtime=off, agent-baud=9600, identity=flash:0x1f000"
            .parse()
            .unwrap();
        assert_eq!(o.timing, SimTiming::zero());
        assert_eq!(o.tck_khz, 4000);
        assert_eq!(o.tck_period_ns(), 250);
        assert_eq!(o.idcode, 0x4BA0_0477);
        assert_eq!(o.boundary_idcode, 0x0641_0041);
        assert_eq!(o.dev_id, 0x2000_6410);
        assert!(o.locked && o.packed && o.agent.enabled && !o.agent.realtime);
        assert_eq!(o.drop_after_bytes, Some(1000));
        assert_eq!(
            o.flash_error,
            Some(FlashFault {
                kind: FlashFaultKind::Wrprterr,
                nth: 3
            })
        );
        assert_eq!(o.agent.baud, 9600);
        assert_eq!(o.agent.identity, Location::new(Space::Flash, 0x1F000));
        let uid: SimOptions = "uid=000102030405060708090a0b".parse().unwrap();
        assert_eq!(uid.chip_uid(), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(&o.chip_uid()[5..8], b"SIM");
    }

    #[test]
    fn bad_values_say_what_is_accepted() {
        for (s, want) in [
            ("timing=fast", "realistic or zero"),
            ("flash-error=oops", "pgerr or wrprterr"),
            ("flash-error=pgerr#0", "pgerr or wrprterr"),
            ("uid=12", "24 hex digits"),
            ("locked=maybe", "0 or 1"),
            ("identity=otp:0", "a flash location"),
            ("tck-khz=0", "from 1 to"),
            ("nonsense", "key=value"),
        ] {
            let e = s.parse::<SimOptions>().unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
        }
        let e = "colour=red".parse::<SimOptions>().unwrap_err();
        assert!(matches!(e, SimError::UnknownKey { .. }));
    }
}

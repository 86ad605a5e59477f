//! The provisioning agent in the chip's firmware, on the chip's UART (USART1, 8N1).
//!
//! The agent is modelled as part of the application: it answers `flashgate-agent` frames
//! (see `docs/AGENT.md`) only while the core runs (not halted by the debugger, not held in
//! reset) and flash holds an image (its initial stack pointer is not erased). It reports the
//! device type `stm32f103-md` and the chip's 96-bit UID, reads its identity key from flash
//! at the configured location (firmware reads its own flash even when readout-protected),
//! measures its own flash, and refuses EnterBootloader (the debug port is the way in here).
//!
//! Time: wire time at the agent's baud rate both ways, plus SHA-256 per measured byte and one
//! signature per challenge, with `timing=realistic`.

use std::time::Duration;

use flashgate_agent::{AgentDevice, AgentEndpoint, AgentError};
use flashgate_serial::SerialDevice;
use flashgate_target::{Location, Space};
use zeroize::Zeroizing;

use super::flash::{FLASH_BASE, FLASH_SIZE};
use super::options::DEVICE_TYPE;
use super::{JtagSim, SimHandle};

/// The bus address of a 32-byte identity key at `at` (a flash offset, or a flash address).
pub(crate) fn identity_address(at: Location) -> Option<u32> {
    if at.space != Space::Flash {
        return None;
    }
    let address = if at.offset >= FLASH_BASE {
        at.offset
    } else {
        FLASH_BASE.checked_add(at.offset)?
    };
    let end = u64::from(address) + 32;
    (end <= u64::from(FLASH_BASE) + u64::from(FLASH_SIZE)).then_some(address)
}

/// The chip's UART with the provisioning agent behind it: serve it on a pty
/// ([`flashgate_serial::pty::PtyServer`]) beside the JTAG socket.
#[derive(Debug)]
pub struct AgentUart {
    sim: SimHandle,
    endpoint: AgentEndpoint,
}

impl AgentUart {
    /// The UART of the chip `sim`.
    pub fn new(sim: SimHandle) -> Self {
        AgentUart {
            sim,
            endpoint: AgentEndpoint::new(),
        }
    }
}

/// The firmware's view of its chip.
struct Firmware<'a> {
    chip: &'a JtagSim,
    uid: [u8; 12],
    measured: u64,
}

impl AgentDevice for Firmware<'_> {
    fn device_type(&self) -> &str {
        DEVICE_TYPE
    }

    fn uid(&self) -> &[u8] {
        &self.uid
    }

    fn identity_scalar(&mut self) -> Zeroizing<[u8; 32]> {
        let mut s = Zeroizing::new([0xFF; 32]);
        let key = identity_address(self.chip.options().agent.identity)
            .and_then(|a| self.chip.peek(a, 32));
        if let Some(bytes) = key {
            let bytes = Zeroizing::new(bytes);
            s.copy_from_slice(&bytes);
        }
        s
    }

    fn read_flash(&mut self, address: u32, buf: &mut [u8]) -> Result<(), AgentError> {
        let length = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let end = u64::from(address) + u64::from(length);
        if address < FLASH_BASE || end > u64::from(FLASH_BASE) + u64::from(FLASH_SIZE) {
            return Err(AgentError::RegionOutside { address, length });
        }
        let s = (address - FLASH_BASE) as usize;
        buf.copy_from_slice(&self.chip.flash()[s..s + buf.len()]);
        self.measured += u64::from(length);
        Ok(())
    }
}

fn wire(bytes: usize, baud: u32) -> Duration {
    let bits = bytes as u64 * 10;
    Duration::from_nanos((bits * 1_000_000_000).div_ceil(u64::from(baud.max(1))))
}

impl SerialDevice for AgentUart {
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Duration) {
        let chip = self.sim.lock();
        let timing = chip.options().timing;
        let baud = chip.options().agent.baud;
        let mut took = if timing.realistic {
            wire(input.len(), baud)
        } else {
            Duration::ZERO
        };
        if !chip.agent_running() {
            // The firmware does not run: nothing answers, and a half frame is lost.
            self.endpoint.reset();
            return (Vec::new(), took);
        }
        let mut fw = Firmware {
            chip: &chip,
            uid: chip.uid(),
            measured: 0,
        };
        let reply = self.endpoint.receive(&mut fw, input);
        if timing.realistic {
            took += Duration::from_nanos(fw.measured * timing.agent_hash_ns_per_byte);
            if reply.get(1) == Some(&flashgate_agent::kind::CHALLENGE_REPLY) {
                took += Duration::from_nanos(timing.agent_sign_ns);
            }
            took += wire(reply.len(), baud);
        }
        (reply, took)
    }

    fn reset_link(&mut self) {
        self.endpoint.reset();
    }
}

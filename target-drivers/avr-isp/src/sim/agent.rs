//! The provisioning agent in the target's firmware, on the target's own UART.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flashgate_agent::{AgentDevice, AgentEndpoint, AgentError};
use flashgate_serial::SerialDevice;
use flashgate_target::{Location, Space};
use zeroize::Zeroizing;

use crate::sim::{lock, AvrChip, AvrFault, AvrTiming, Shared};
use crate::uid::{board_uid, serial_offset, SERIAL_LEN};

/// The target's UART with the provisioning agent behind it: a second serial line, sharing
/// the chip with the programmer.
///
/// The agent is modelled as part of the application firmware and always present (it does
/// not depend on the image programmed), but it runs only while the programmer does not hold
/// the target in reset: while the programmer is in programming mode the line is silent.
/// It answers `flashgate-agent` frames with:
///
/// - device type: the part name (`atmega328p`);
/// - UID: `signature || EEPROM serial`, read from the chip as firmware would (see
///   [`crate::uid`]);
/// - identity key: the 32 bytes at the configured location (`flash:0x7E00` by default, or
///   `eeprom:OFFSET`), read directly (the lock bits do not stop firmware); blank gives
///   `Error(NoKey)`;
/// - measurements over its own flash (bus address = flash offset).
///
/// Time: wire time at the agent's baud rate both ways, plus SHA-256 per measured byte and
/// one signature when it answers a challenge.
#[derive(Debug)]
pub struct AgentUart {
    shared: Arc<Mutex<Shared>>,
    timing: AvrTiming,
    endpoint: AgentEndpoint,
}

impl AgentUart {
    pub(crate) fn new(shared: Arc<Mutex<Shared>>, timing: AvrTiming) -> Self {
        AgentUart {
            shared,
            timing,
            endpoint: AgentEndpoint::new(),
        }
    }
}

/// The firmware's view of its chip.
struct Firmware<'a> {
    chip: &'a AvrChip,
    uid: Vec<u8>,
    identity: Location,
    measured: u64,
}

impl<'a> Firmware<'a> {
    fn new(chip: &'a AvrChip, identity: Location) -> Self {
        let part = chip.part();
        let at = serial_offset(part) as usize;
        let serial = &chip.eeprom()[at..at + SERIAL_LEN];
        Firmware {
            chip,
            uid: board_uid(&part.signature, serial),
            identity,
            measured: 0,
        }
    }
}

impl AgentDevice for Firmware<'_> {
    fn device_type(&self) -> &str {
        self.chip.part().name
    }

    fn uid(&self) -> &[u8] {
        &self.uid
    }

    fn identity_scalar(&mut self) -> Zeroizing<[u8; 32]> {
        let mut s = Zeroizing::new([0xFF; 32]);
        let memory = match self.identity.space {
            Space::Flash => self.chip.flash(),
            Space::Eeprom => self.chip.eeprom(),
            // Nowhere else on an AVR: reads as erased, which the agent reports as NoKey.
            Space::KeyStore | Space::Otp => return s,
        };
        let start = self.identity.offset as usize;
        if let Some(src) = memory.get(start..start + 32) {
            s.copy_from_slice(src);
        }
        s
    }

    fn read_flash(&mut self, address: u32, buf: &mut [u8]) -> Result<(), AgentError> {
        let start = address as usize;
        match self.chip.flash().get(start..start + buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                self.measured += buf.len() as u64;
                Ok(())
            }
            None => Err(AgentError::RegionOutside {
                address,
                length: buf.len() as u32,
            }),
        }
    }
}

impl SerialDevice for AgentUart {
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Duration) {
        let mut took = self.timing.agent_serial(input.len());
        let shared = Arc::clone(&self.shared);
        let mut s = lock(&shared);
        if s.chip.in_reset() || !s.chip.present() || s.take_agent_fault(AvrFault::AgentSilent) {
            // Firmware not running (or hung): nothing answers on the UART.
            self.endpoint.reset();
            s.agent_time += took;
            return (Vec::new(), took);
        }
        let identity = s.identity;
        let mut fw = Firmware::new(&s.chip, identity);
        let mut reply = self.endpoint.receive(&mut fw, input);
        let measured = fw.measured;
        took += self.timing.agent_hash_per_byte * u32::try_from(measured).unwrap_or(u32::MAX);
        if reply.get(1) == Some(&flashgate_agent::kind::CHALLENGE_REPLY) {
            took += self.timing.agent_sign;
        }
        if !reply.is_empty() && s.take_agent_fault(AvrFault::AgentCorrupt) {
            if let Some(last) = reply.last_mut() {
                *last ^= 0xFF;
            }
        }
        took += self.timing.agent_serial(reply.len());
        s.agent_time += took;
        (reply, took)
    }

    fn reset_link(&mut self) {
        self.endpoint.reset();
    }
}

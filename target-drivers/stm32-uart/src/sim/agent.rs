//! The application after Go: the provisioning agent, answering on the same UART.

use flashgate_agent::{AgentDevice, AgentError};
use zeroize::Zeroizing;

use super::Stm32Sim;

impl Stm32Sim {
    /// Bytes for the running application: the provisioning agent.
    pub(super) fn app_bytes(&mut self, bytes: &[u8]) {
        if !self.app_booted {
            self.app_booted = true;
        }
        let mut endpoint = std::mem::take(&mut self.agent);
        let mut view = AgentView {
            sim: &*self,
            measured: 0,
            reboot: false,
        };
        let reply = endpoint.receive(&mut view, bytes);
        let (measured, reboot) = (view.measured, view.reboot);
        self.agent = endpoint;
        if self.timing.agent_work {
            let p = self.mem.part;
            let mut ns = measured * u64::from(p.digest_ns_per_byte);
            if reply.get(1) == Some(&flashgate_agent::kind::CHALLENGE_REPLY) {
                ns += u64::from(p.sign_us) * 1_000;
            }
            self.ns = self.ns.saturating_add(ns);
        }
        self.out.extend_from_slice(&reply);
        if reboot {
            // The reply is out; the firmware resets into system memory.
            self.charge_us(u64::from(self.mem.part.timing.reset_us));
            self.system_reset();
        }
    }
}

/// The chip as its own firmware sees it; counts the bytes it measures.
struct AgentView<'a> {
    sim: &'a Stm32Sim,
    measured: u64,
    reboot: bool,
}

impl AgentDevice for AgentView<'_> {
    fn device_type(&self) -> &str {
        self.sim.mem.part.device_type
    }

    fn uid(&self) -> &[u8] {
        &self.sim.mem.uid
    }

    fn identity_scalar(&mut self) -> Zeroizing<[u8; 32]> {
        let mut s = Zeroizing::new([0xFF; 32]);
        let read = self
            .sim
            .mem
            .part
            .location_address(self.sim.identity, 32)
            .ok()
            .and_then(|a| self.sim.mem.read(a, 32));
        if let Some(bytes) = read {
            let bytes = Zeroizing::new(bytes);
            s.copy_from_slice(&bytes);
        }
        s
    }

    fn read_flash(&mut self, address: u32, buf: &mut [u8]) -> Result<(), AgentError> {
        let length = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let flash = self.sim.mem.part.flash();
        if address < flash.start || u64::from(address) + u64::from(length) > u64::from(flash.end) {
            return Err(AgentError::RegionOutside { address, length });
        }
        let s = (address - flash.start) as usize;
        buf.copy_from_slice(&self.sim.mem.flash[s..s + buf.len()]);
        self.measured += u64::from(length);
        Ok(())
    }

    fn enter_bootloader(&mut self) -> bool {
        self.reboot = self.sim.agent_reboot;
        self.reboot
    }
}

//! The fixture's wiring: what drives NRST and BOOT0, and what the chip does when the
//! programmer's modem lines change them.

use std::str::FromStr;

use flashgate_serial::ModemLine;

use super::{Mode, Stm32Sim};

/// What drives one of the chip's NRST or BOOT0 pins on the fixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinSource {
    /// A modem line of the programmer's port.
    Line(ModemLine),
    /// Tied high (NRST: pulled up; BOOT0: strapped to the bootloader).
    High,
    /// Tied low (BOOT0 strapped to the application).
    Low,
}

impl FromStr for PinSource {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "dtr" => Ok(PinSource::Line(ModemLine::Dtr)),
            "rts" => Ok(PinSource::Line(ModemLine::Rts)),
            "high" | "none" => Ok(PinSource::High),
            "low" => Ok(PinSource::Low),
            _ => Err(()),
        }
    }
}

/// How the fixture wires the programmer's modem lines to the chip.
///
/// Default: DTR to NRST, RTS to BOOT0, through a USB-UART whose outputs are inverted (an
/// asserted line is at 0 V), the wiring stm32flash's `-rts,dtr,-dtr:rts` expects. With both
/// lines cleared (as at power-up) both pins are high: the chip runs, and a reset starts the
/// bootloader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wiring {
    /// What drives NRST (active low: low holds the chip in reset).
    pub nrst: PinSource,
    /// What drives BOOT0 (high at reset: the bootloader starts).
    pub boot0: PinSource,
    /// An asserted line is low at the pin (true, a TTL USB-UART) or high (false).
    pub inverted: bool,
}

impl Default for Wiring {
    fn default() -> Self {
        Wiring {
            nrst: PinSource::Line(ModemLine::Dtr),
            boot0: PinSource::Line(ModemLine::Rts),
            inverted: true,
        }
    }
}

impl Wiring {
    /// The pin's level (true = high) with DTR and RTS asserted as given.
    pub fn level(&self, pin: PinSource, dtr: bool, rts: bool) -> bool {
        match pin {
            PinSource::High => true,
            PinSource::Low => false,
            PinSource::Line(l) => {
                let asserted = if l == ModemLine::Dtr { dtr } else { rts };
                asserted != self.inverted
            }
        }
    }
}

impl Stm32Sim {
    /// The levels at NRST and BOOT0 (true = high).
    pub fn pins(&self) -> (bool, bool) {
        let (dtr, rts) = self.lines;
        (
            self.wiring.level(self.wiring.nrst, dtr, rts),
            self.wiring.level(self.wiring.boot0, dtr, rts),
        )
    }

    pub(super) fn nrst_high(&self) -> bool {
        self.pins().0
    }

    /// The host asserted (`true`) or cleared a modem line of the fixture. NRST going low
    /// holds the chip in reset; going high starts it, in the bootloader if BOOT0 is high,
    /// else in the application.
    pub fn set_modem_line(&mut self, line: ModemLine, asserted: bool) {
        let was = self.nrst_high();
        match line {
            ModemLine::Dtr => self.lines.0 = asserted,
            ModemLine::Rts => self.lines.1 = asserted,
        }
        let (now, boot0) = self.pins();
        if was && !now {
            self.mode = Mode::InReset;
            self.agent.reset();
            self.app_booted = false;
        } else if !was && now {
            self.system_reset();
            if !boot0 && matches!(self.mode, Mode::AwaitSync) {
                self.mode = self.start_application(self.mem.part.flash_base);
            }
        }
    }

    /// What the core does when it starts the application at `address`: a blank vector
    /// table (initial stack pointer 0xFFFFFFFF) faults.
    fn start_application(&mut self, address: u32) -> Mode {
        self.agent.reset();
        self.app_booted = false;
        let sp = self.mem.read(address, 4).unwrap_or_default();
        if sp.iter().all(|&b| b == 0xFF) {
            Mode::Crashed
        } else {
            Mode::App
        }
    }
}

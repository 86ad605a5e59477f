//! The driver: a [`Target`] over one OpenOCD process and, for the
//! challenge, the agent on the target's UART.

mod memory;

use std::time::Duration;

use flashgate_agent::Message;
use flashgate_serial::Transport;
use flashgate_target::{
    Capabilities, Capability, ChallengeRequest, ChallengeResponse, DeviceInfo, Location, LockLevel,
    LockPermission, LockState, MemoryRegion, Stage, Target, TargetError,
};

use crate::openocd::{OpenOcd, OpenOcdConfig, OpenOcdError};
use crate::part::{DebugPart, DBGMCU_IDCODE};

/// What the driver can do with the agent's UART wired.
pub const CAPABILITIES: Capabilities = Capabilities::empty()
    .with(Capability::ProgramFlash)
    .with(Capability::ReadFlash)
    .with(Capability::ReadUid)
    .with(Capability::StoreSecret)
    .with(Capability::AnswerChallenge)
    .with(Capability::SetLock)
    .with(Capability::ReadLock);

/// Timing of the agent's side.
#[derive(Debug, Clone)]
pub struct OpenOcdOptions {
    /// How long the agent may take to answer one frame.
    pub agent_timeout: Duration,
    /// How long the firmware takes to start its agent after the core is released.
    pub agent_boot: Duration,
}

impl Default for OpenOcdOptions {
    fn default() -> Self {
        Self {
            agent_timeout: Duration::from_secs(5),
            agent_boot: Duration::from_millis(50),
        }
    }
}

/// One board through OpenOCD.
pub struct OpenOcdTarget {
    ocd: Option<OpenOcd>,
    config: OpenOcdConfig,
    agent: Option<Box<dyn Transport>>,
    options: OpenOcdOptions,
    part: Option<&'static DebugPart>,
    uid: Option<Vec<u8>>,
    agent_checked: bool,
    /// Files handed to OpenOCD (images to write).
    scratch: tempfile::TempDir,
}

impl std::fmt::Debug for OpenOcdTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOcdTarget")
            .field("ocd", &self.ocd)
            .field("part", &self.part.map(|p| p.part.device_type))
            .finish_non_exhaustive()
    }
}

/// An OpenOCD failure as the station reports it: the stage, the address,
/// and OpenOCD's own sentence.
pub(crate) fn ocd_error(stage: Stage, address: Option<u32>, e: OpenOcdError) -> TargetError {
    match e {
        OpenOcdError::Connection { .. } => TargetError::ContactLost { stage, address },
        other => TargetError::Tool {
            stage,
            address,
            detail: other.to_string(),
        },
    }
}

impl OpenOcdTarget {
    /// A board reached by OpenOCD started from `config` (at
    /// [`Target::connect`]), its agent on `agent` if wired.
    pub fn new(
        config: OpenOcdConfig,
        agent: Option<Box<dyn Transport>>,
        options: OpenOcdOptions,
    ) -> Result<Self, TargetError> {
        let scratch = tempfile::Builder::new()
            .prefix("flashgate-openocd-")
            .tempdir()
            .map_err(|e| TargetError::Protocol {
                stage: Stage::Connect,
                detail: format!("cannot make a temporary directory for OpenOCD: {e}"),
            })?;
        Ok(Self {
            ocd: None,
            config,
            agent,
            options,
            part: None,
            uid: None,
            agent_checked: false,
            scratch,
        })
    }

    fn ocd(&mut self, stage: Stage) -> Result<&mut OpenOcd, TargetError> {
        self.ocd.as_mut().ok_or(TargetError::Protocol {
            stage,
            detail: "OpenOCD is not running: call connect first".to_owned(),
        })
    }

    /// One OpenOCD command at `stage`.
    pub(crate) fn run(&mut self, stage: Stage, command: &str) -> Result<String, TargetError> {
        self.ocd(stage)?
            .command(command)
            .map_err(|e| ocd_error(stage, None, e))
    }

    fn require_part(&self, stage: Stage) -> Result<&'static DebugPart, TargetError> {
        self.part.ok_or(TargetError::Protocol {
            stage,
            detail: "the part is not known yet: call identify first".to_owned(),
        })
    }

    /// The lock as the option bytes and FLASH_OBR say.
    fn lock_state(&mut self, stage: Stage) -> Result<LockState, TargetError> {
        let p = self.require_part(stage)?;
        let ob: [u8; 16] = self
            .read_bytes(stage, p.part.option_bytes, 16)?
            .try_into()
            .map_err(|_| TargetError::Protocol {
                stage,
                detail: "the option bytes did not read as 16 bytes".to_owned(),
            })?;
        let obr = self.read_word(stage, p.flash_obr)?;
        // What the chip applies (OBR, loaded at reset) and what a reset will
        // apply (the option bytes): locked if either says so.
        let level = match (p.part.rdp_level(&ob), obr & p.obr_rdprt != 0) {
            (flashgate_stm32_uart::part::RdpLevel::Level0, false) => LockLevel::None,
            (flashgate_stm32_uart::part::RdpLevel::Level2, _) => LockLevel::Permanent,
            _ => LockLevel::Readout,
        };
        Ok(LockState {
            level,
            raw: p.part.rdp_raw(&ob),
        })
    }

    /// Resets the core and halts it (the option bytes load at reset).
    fn reset_halt(&mut self, stage: Stage) -> Result<(), TargetError> {
        self.run(stage, "reset halt").map(|_| ())
    }
}

impl Target for OpenOcdTarget {
    fn capabilities(&self) -> Capabilities {
        if self.agent.is_some() {
            CAPABILITIES
        } else {
            let mut c = Capabilities::empty();
            for cap in CAPABILITIES
                .iter()
                .filter(|&c| c != Capability::AnswerChallenge)
            {
                c.insert(cap);
            }
            c
        }
    }

    fn connect(&mut self) -> Result<(), TargetError> {
        let stage = Stage::Connect;
        self.agent_checked = false;
        if self.ocd.is_none() {
            let ocd = OpenOcd::start(&self.config).map_err(|e| ocd_error(stage, None, e))?;
            self.ocd = Some(ocd);
            self.ocd(stage)?
                .init()
                .map_err(|e| ocd_error(stage, None, e))?;
        }
        self.reset_halt(stage)
    }

    fn identify(&mut self) -> Result<DeviceInfo, TargetError> {
        let stage = Stage::Identify;
        let idcode = self.read_word(stage, DBGMCU_IDCODE)?;
        let dev_id = u16::try_from(idcode & 0xFFF).unwrap_or(0);
        let p = DebugPart::by_dev_id(dev_id).ok_or_else(|| TargetError::WrongDevice {
            expected: "a part the OpenOCD driver knows (STM32F103 medium density, DEV_ID 0x410)"
                .to_owned(),
            found: format!("DBGMCU_IDCODE 0x{idcode:08x} (DEV_ID 0x{dev_id:03x})"),
        })?;
        self.part = Some(p);
        let kib = self.read_bytes(stage, p.part.flash_size_address, 2)?;
        let flash_kib = u32::from(u16::from_le_bytes([kib[0], kib[1]]));
        let uid = self.read_bytes(stage, p.part.uid_address, 12)?;
        self.uid = Some(uid.clone());
        let lock = self.lock_state(stage)?;
        Ok(DeviceInfo {
            device_type: p.part.device_type.to_owned(),
            uid,
            signature: idcode.to_be_bytes().to_vec(),
            flash: MemoryRegion {
                base: p.part.flash_base,
                size: flash_kib.saturating_mul(1024).min(p.part.flash_size),
                page_size: 2,
            },
            lock,
        })
    }

    fn erase(&mut self) -> Result<(), TargetError> {
        let stage = Stage::Erase;
        let p = self.require_part(stage)?;
        self.run(stage, &format!("{} mass_erase 0", p.flash_driver))?;
        Ok(())
    }

    fn program(&mut self, address: u32, data: &[u8]) -> Result<(), TargetError> {
        self.write_flash(Stage::Program, address, data)
    }

    fn read(&mut self, address: u32, buf: &mut [u8]) -> Result<(), TargetError> {
        let got = self.read_bytes(Stage::Verify, address, buf.len())?;
        buf.copy_from_slice(&got);
        Ok(())
    }

    fn store_secret(&mut self, at: Location, data: &[u8]) -> Result<(), TargetError> {
        let stage = Stage::StoreSecret;
        let p = self.require_part(stage)?;
        let address = p
            .part
            .location_address(at, data.len())
            .map_err(|detail| TargetError::InvalidRequest { stage, detail })?;
        // Only blank storage is written: a secret is never laid over another.
        let before = self.read_bytes(stage, address, data.len())?;
        if let Some(i) = before.iter().position(|b| *b != 0xFF) {
            return Err(TargetError::NotBlank {
                address: address.wrapping_add(u32::try_from(i).unwrap_or(0)),
                found: before[i],
            });
        }
        self.fill_flash(stage, address, data)?;
        let back = zeroize::Zeroizing::new(self.read_bytes(stage, address, data.len())?);
        if back.as_slice() != data {
            return Err(TargetError::SecretMismatch { location: at });
        }
        Ok(())
    }

    fn challenge(&mut self, request: &ChallengeRequest) -> Result<ChallengeResponse, TargetError> {
        let stage = Stage::Challenge;
        if self.agent.is_none() {
            return Err(TargetError::Unsupported {
                stage,
                capability: Capability::AnswerChallenge,
            });
        }
        // The firmware, and its agent, runs once the core is released.
        if !self.agent_checked {
            self.run(stage, "reset run")?;
            std::thread::sleep(self.options.agent_boot);
        }
        let timeout = self.options.agent_timeout;
        let agent = self.agent.as_mut().ok_or(TargetError::Unsupported {
            stage,
            capability: Capability::AnswerChallenge,
        })?;
        if !self.agent_checked {
            flashgate_agent::uart::hello(agent.as_mut(), timeout, stage, self.uid.as_deref())?;
            self.agent_checked = true;
        }
        flashgate_agent::uart::exchange(
            agent.as_mut(),
            &Message::Challenge(request.clone()),
            timeout,
            stage,
        )?
        .into_challenge_reply()
        .map_err(|e| e.at_stage(stage))
    }

    fn set_lock(&mut self, permission: LockPermission) -> Result<(), TargetError> {
        let stage = Stage::Lock;
        let p = self.require_part(stage)?;
        match permission.level() {
            LockLevel::Readout => {}
            LockLevel::None => {
                return Err(TargetError::InvalidRequest {
                    stage,
                    detail: "a lock permission for level none locks nothing: allow readout"
                        .to_owned(),
                })
            }
            LockLevel::Permanent => {
                return Err(TargetError::InvalidRequest {
                    stage,
                    detail: format!(
                        "the {} has no permanent readout lock through OpenOCD's {} driver: lock at readout",
                        p.part.device_type, p.flash_driver
                    ),
                })
            }
        }
        // Back under the debugger's control, then RDP level 1; it takes
        // effect at the next reset, which read_lock's caller sees.
        self.reset_halt(stage)?;
        self.agent_checked = false;
        self.run(stage, &format!("{} lock 0", p.flash_driver))?;
        self.reset_halt(stage)
    }

    fn read_lock(&mut self) -> Result<LockState, TargetError> {
        self.lock_state(Stage::LockReadback)
    }
}

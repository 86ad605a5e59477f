//! `AvrIspTarget`: flashgate's driver for AVRs behind an ArduinoISP (STK500v1) programmer.

mod agent;
mod config;
mod eeprom;
mod flash;
mod link;
mod progmode;

use std::time::Duration;

use flashgate_agent::Message;
use flashgate_serial::{LineConfig, SerialError, SerialPortTransport, Transport};
use flashgate_target::{
    Capabilities, Capability, ChallengeRequest, ChallengeResponse, DeviceInfo, Location, LockLevel,
    LockPermission, LockState, MemoryRegion, Space, Stage, Target, TargetError, MISMATCH_WINDOW,
};
use zeroize::Zeroizing;

pub use config::AvrIspConfig;

use crate::part::Part;
use crate::stk::*;
use crate::uid::{board_uid, serial_is_blank, serial_offset, SERIAL_LEN};

/// Lock byte bits that exist on the supported parts (bits 7:6 are unused and read 1).
const LOCK_MASK: u8 = 0x3F;
/// Longest flash or EEPROM block read with one `READ_PAGE`.
const READ_BLOCK: u32 = 256;
/// Time-out used when leaving programming mode as the driver is dropped.
const DROP_TIMEOUT: Duration = Duration::from_millis(200);

/// What identify found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The part.
    pub part: &'static Part,
    /// Signature bytes.
    pub signature: [u8; 3],
    /// Board serial from EEPROM (`None` if the lock bits hid it).
    pub serial: Option<[u8; SERIAL_LEN]>,
    /// `signature || serial`.
    pub uid: Vec<u8>,
    /// High fuse at identify time.
    pub high_fuse: u8,
}

#[derive(Debug, Default)]
struct Session {
    connected: bool,
    pmode: bool,
    ext_addr: Option<u8>,
    version: (u8, u8, u8),
    identity: Option<Identity>,
    agent_checked: bool,
}

/// Driver for one AVR board behind an ArduinoISP programmer, with the provisioning agent on
/// the target's UART.
///
/// - **connect**: `GET_SYNC` (retried), programmer version, `SET_DEVICE`/`SET_DEVICE_EXT`
///   for the configured part, then a fresh `LEAVE_PROGMODE`/`ENTER_PROGMODE` (which resets
///   the target even if the programmer was left in programming mode).
/// - **identify**: `READ_SIGN`, matched against the parts table; lock byte (`58 00`), high
///   fuse (`58 08`) and the board serial from EEPROM (see [`crate::uid`] for the UID).
/// - **erase**: Chip Erase (`AC 80`), waiting the part's tWD_ERASE; the board serial is
///   written back if EESAVE is not programmed; the lock byte must read back erased.
/// - **program**: per page, `LOAD_ADDRESS` and `PROG_PAGE 'F'` sent in one write (one round
///   trip per page); `4D` extended address where needed; the signature re-read every
///   [`signature_check_pages`](AvrIspConfig::signature_check_pages) pages.
/// - **read/verify**: `LOAD_ADDRESS` + `READ_PAGE 'F'` in 256-byte blocks, pipelined
///   [`read_pipeline`](AvrIspConfig::read_pipeline) deep.
/// - **store_secret**: `flash:OFFSET` through the flash path; `eeprom:OFFSET` through
///   `UNIVERSAL` Load EEPROM Page (`C1`) and Write EEPROM Page (`C2`) sent one page per
///   write, waiting what of tWD_EEPROM the sketch's answer and the next command do not
///   already take on the wire (faster than `PROG_PAGE 'E'`, which the sketch writes byte by
///   byte with 45 ms each, and free of its word-address rule); read back and compared
///   without revealing it.
/// - **challenge**: leaves programming mode so the firmware runs, then talks
///   `flashgate-agent` frames on the agent link (Hello first, UID checked against identify).
/// - **set_lock**: re-enters programming mode, checks it is still the same board (signature
///   and serial), writes the configured lock byte (`AC E0`), waits tWD_FUSE and compares the
///   lock bits (7:6 ignored) it reads back.
///
/// Host-side waits go through [`Transport::wait`], so an in-process simulator sees them.
/// After a time-out or a protocol error the link counts as lost: call `connect` again.
pub struct AvrIspTarget {
    isp: Box<dyn Transport>,
    agent: Option<Box<dyn Transport>>,
    config: AvrIspConfig,
    part: &'static Part,
    session: Session,
    timeout_override: Option<Duration>,
}

impl std::fmt::Debug for AvrIspTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvrIspTarget")
            .field("programmer", &self.isp.name())
            .field("agent", &self.agent.as_ref().map(|a| a.name()))
            .field("part", &self.part.name)
            .field("session", &self.session)
            .finish()
    }
}

impl AvrIspTarget {
    /// A driver over a programmer link and, optionally, the agent link.
    pub fn new(
        programmer: Box<dyn Transport>,
        agent: Option<Box<dyn Transport>>,
        config: AvrIspConfig,
    ) -> Self {
        AvrIspTarget {
            isp: programmer,
            agent,
            part: config.part,
            config,
            session: Session::default(),
            timeout_override: None,
        }
    }

    /// Opens the programmer's serial port (8N1 at [`AvrIspConfig::baud`]) and, if given, the
    /// agent's (8N1 at [`AvrIspConfig::agent_baud`]).
    ///
    /// A port that cannot be opened is reported as a connect-stage error naming the port.
    pub fn open(
        programmer_port: &str,
        agent_port: Option<&str>,
        config: AvrIspConfig,
    ) -> Result<Self, TargetError> {
        let open = |port: &str, baud: u32, what: &str| {
            SerialPortTransport::open(port, LineConfig::n81(baud)).map_err(|e| {
                TargetError::Protocol {
                    stage: Stage::Connect,
                    detail: format!("the {what} is missing: {e}"),
                }
            })
        };
        let isp = open(programmer_port, config.baud, "programmer")?;
        let agent = match agent_port {
            Some(p) => {
                Some(Box::new(open(p, config.agent_baud, "agent UART")?) as Box<dyn Transport>)
            }
            None => None,
        };
        Ok(AvrIspTarget::new(Box::new(isp), agent, config))
    }

    /// The part the driver currently programs (the identified one after identify).
    pub fn part(&self) -> &'static Part {
        self.part
    }

    /// What identify found.
    pub fn identity(&self) -> Option<&Identity> {
        self.session.identity.as_ref()
    }

    /// Programmer hardware version, firmware major and minor (ArduinoISP: 2, 1, 18).
    pub fn programmer_version(&self) -> (u8, u8, u8) {
        self.session.version
    }

    /// The configuration.
    pub fn config(&self) -> &AvrIspConfig {
        &self.config
    }

    /// Reads the fuses: low, high, extended.
    pub fn read_fuses(&mut self) -> Result<[u8; 3], TargetError> {
        let stage = Stage::Identify;
        self.ensure_pmode(stage)?;
        Ok([
            self.universal(stage, None, [0x50, 0x00, 0x00, 0x00])?,
            self.universal(stage, None, [0x58, 0x08, 0x00, 0x00])?,
            self.universal(stage, None, [0x50, 0x08, 0x00, 0x00])?,
        ])
    }

    /// Leaves programming mode (the target's firmware starts) and forgets the session.
    pub fn disconnect(&mut self) -> Result<(), TargetError> {
        if self.session.connected && self.session.pmode {
            self.leave_progmode(Stage::Connect)?;
        }
        self.session.connected = false;
        Ok(())
    }

    /// Gives the transports back (programmer, agent).
    pub fn into_transports(mut self) -> (Box<dyn Transport>, Option<Box<dyn Transport>>) {
        let _ = self.disconnect();
        let isp = std::mem::replace(&mut self.isp, Box::new(NoLink));
        (isp, self.agent.take())
    }

    fn lock_state(raw: u8) -> LockState {
        LockState {
            level: if raw & 0x03 == 0x03 {
                LockLevel::None
            } else {
                LockLevel::Readout
            },
            raw: vec![raw],
        }
    }
}

impl Drop for AvrIspTarget {
    fn drop(&mut self) {
        // Release the target's RESET so the board is left running, not held in reset.
        if self.session.connected && self.session.pmode {
            self.timeout_override = Some(DROP_TIMEOUT);
            let _ = self.leave_progmode(Stage::Connect);
        }
    }
}

/// What the driver can do with `config`: the agent's challenge only with an
/// agent UART, a permanent lock only when the configuration names a lock byte
/// for it (an AVR's lock bits are cleared by chip erase, so readout is the
/// default), and never on-chip key generation.
pub fn capabilities(config: &AvrIspConfig, agent: bool) -> Capabilities {
    let mut c = Capabilities::from([
        Capability::ProgramFlash,
        Capability::ReadFlash,
        Capability::ReadUid,
        Capability::StoreSecret,
        Capability::SetLock,
        Capability::ReadLock,
    ]);
    if agent {
        c.insert(Capability::AnswerChallenge);
    }
    if config.lock_permanent.is_some() {
        c.insert(Capability::LockPermanent);
    }
    c
}

impl Target for AvrIspTarget {
    fn capabilities(&self) -> Capabilities {
        capabilities(&self.config, self.agent.is_some())
    }

    fn connect(&mut self) -> Result<(), TargetError> {
        self.session = Session::default();
        self.part = self.config.part;
        if self.config.reset_on_connect {
            self.isp
                .pulse_reset()
                .map_err(|e| self.link_error(Stage::Connect, None, e))?;
            self.isp.wait(self.config.boot_wait);
        }
        self.sync()?;
        self.session.connected = true;
        let hw = self.get_parameter(PARM_HW_VER)?;
        let major = self.get_parameter(PARM_SW_MAJOR)?;
        let minor = self.get_parameter(PARM_SW_MINOR)?;
        self.session.version = (hw, major, minor);
        self.set_device(self.config.part)?;
        // Leave first: a programmer left in programming mode would not reset the target.
        self.leave_progmode(Stage::Connect)?;
        self.enter_progmode(Stage::Connect)?;
        if let Some(agent) = self.agent.as_mut() {
            let _ = agent.clear_input();
        }
        Ok(())
    }

    fn identify(&mut self) -> Result<DeviceInfo, TargetError> {
        let stage = Stage::Identify;
        self.ensure_pmode(stage)?;
        let signature = self.read_signature(stage)?;
        if no_target(&signature) {
            return Err(TargetError::ContactLost {
                stage,
                address: None,
            });
        }
        let part = Part::by_signature(&signature).ok_or_else(|| TargetError::WrongDevice {
            expected: self.config.part.name.to_owned(),
            found: describe_signature(&signature),
        })?;
        if part != self.part {
            self.set_device(part)?;
        }
        let lock = self.universal(stage, None, [0x58, 0x00, 0x00, 0x00])?;
        let high_fuse = self.universal(stage, None, [0x58, 0x08, 0x00, 0x00])?;
        let state = Self::lock_state(lock);
        // With LB mode 3 the EEPROM cannot be read: report the lock, the caller refuses the board.
        let serial = if lock & 0x02 == 0 {
            None
        } else {
            let mut s = [0u8; SERIAL_LEN];
            self.read_eeprom(stage, serial_offset(part), &mut s)?;
            if serial_is_blank(&s) {
                return Err(TargetError::InvalidRequest {
                    stage,
                    detail: format!(
                        "the board has no serial number (EEPROM 0x{:04x}..0x{:04x} reads {}): an AVR has no factory UID, so flashgate uses the serial written at board test; write one there, then retry",
                        serial_offset(part),
                        part.eeprom_size - 1,
                        hex(&s)
                    ),
                });
            }
            Some(s)
        };
        let uid = board_uid(&signature, &serial.unwrap_or([0; SERIAL_LEN]));
        self.session.identity = Some(Identity {
            part,
            signature,
            serial,
            uid: uid.clone(),
            high_fuse,
        });
        self.session.agent_checked = false;
        Ok(DeviceInfo {
            device_type: part.name.to_owned(),
            uid,
            signature: signature.to_vec(),
            flash: MemoryRegion {
                base: 0,
                size: part.flash_size,
                page_size: part.flash_page,
            },
            lock: state,
        })
    }

    fn erase(&mut self) -> Result<(), TargetError> {
        let stage = Stage::Erase;
        self.ensure_pmode(stage)?;
        let part = self.part;
        // Keep the board serial unless EESAVE keeps the whole EEPROM.
        let high_fuse = self.universal(stage, None, [0x58, 0x08, 0x00, 0x00])?;
        let keep = if high_fuse & crate::sim::EESAVE != 0 {
            let mut s = [0u8; SERIAL_LEN];
            self.read_eeprom(stage, serial_offset(part), &mut s)?;
            (!serial_is_blank(&s)).then_some(s)
        } else {
            None
        };
        self.universal(stage, None, [0xAC, 0x80, 0x00, 0x00])?;
        self.isp.wait(part.chip_erase);
        self.session.ext_addr = None;
        if let Some(serial) = keep {
            let at = serial_offset(part);
            let mut back = [0u8; SERIAL_LEN];
            let written = self
                .write_eeprom(stage, at, &serial)
                .and_then(|()| self.read_eeprom(stage, at, &mut back));
            if written.is_err() || back != serial {
                // Erasing again would not bring the serial back, and without it the next
                // run refuses the board at identify: say how to restore it.
                let why = match written {
                    Err(e) => e.to_string(),
                    Ok(()) => format!("it reads back {}", hex::encode(back)),
                };
                return Err(TargetError::Protocol {
                    stage,
                    detail: format!(
                        "the board serial {} was not written back to EEPROM 0x{at:04x} after the chip erase ({why}): restore it before the board is tried again, with {}",
                        hex::encode(serial),
                        crate::uid::restore_command(part, &serial)
                    ),
                });
            }
        }
        let lock = self.universal(stage, None, [0x58, 0x00, 0x00, 0x00])?;
        if lock & LOCK_MASK != LOCK_MASK {
            return Err(TargetError::VerifyMismatch {
                stage,
                address: 0,
                expected: vec![0xFF],
                found: vec![lock],
            });
        }
        Ok(())
    }

    fn program(&mut self, address: u32, data: &[u8]) -> Result<(), TargetError> {
        self.program_flash(Stage::Program, address, data)
    }

    fn read(&mut self, address: u32, buf: &mut [u8]) -> Result<(), TargetError> {
        self.read_flash(Stage::Verify, address, buf)
    }

    fn verify(&mut self, address: u32, expected: &[u8]) -> Result<(), TargetError> {
        let stage = Stage::Verify;
        let mut got = vec![0u8; expected.len()];
        self.read_flash(stage, address, &mut got)?;
        if let Some(j) = expected.iter().zip(&got).position(|(a, b)| a != b) {
            let at = address + j as u32;
            // A target that stopped answering reads 0x00 everywhere: say so.
            let sig = self.read_signature(stage)?;
            if no_target(&sig) {
                return Err(TargetError::ContactLost {
                    stage,
                    address: Some(at),
                });
            }
            let end = (j + MISMATCH_WINDOW).min(expected.len());
            return Err(TargetError::VerifyMismatch {
                stage,
                address: at,
                expected: expected[j..end].to_vec(),
                found: got[j..end].to_vec(),
            });
        }
        Ok(())
    }

    fn store_secret(&mut self, at: Location, data: &[u8]) -> Result<(), TargetError> {
        let stage = Stage::StoreSecret;
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let part = self.part;
        let outside = |space_size: u32, what: &str| {
            TargetError::InvalidRequest {
            stage,
            detail: format!(
                "{at}+{len} lies outside the {space_size}-byte {what} of an {}: fix the location in the job",
                part.name
            ),
        }
        };
        let mut back = Zeroizing::new(vec![0u8; data.len()]);
        match at.space {
            Space::Flash => {
                if u64::from(at.offset) + u64::from(len) > u64::from(part.flash_size) {
                    return Err(outside(part.flash_size, "flash"));
                }
                self.program_flash(stage, at.offset, data)?;
                self.read_flash(stage, at.offset, &mut back)?;
            }
            Space::Eeprom => {
                let usable = serial_offset(part);
                if u64::from(at.offset) + u64::from(len) > u64::from(usable) {
                    return Err(TargetError::InvalidRequest {
                        stage,
                        detail: format!(
                            "{at}+{len} runs into the board serial in the last {SERIAL_LEN} EEPROM bytes (or past the {}-byte EEPROM): put the key below 0x{usable:04x}",
                            part.eeprom_size
                        ),
                    });
                }
                self.ensure_pmode(stage)?;
                self.write_eeprom(stage, at.offset, data)?;
                self.read_eeprom(stage, at.offset, &mut back)?;
            }
            Space::KeyStore | Space::Otp => {
                return Err(TargetError::InvalidRequest {
                    stage,
                    detail: format!(
                        "an AVR has no {} space: put the identity key in flash:OFFSET or eeprom:OFFSET, where the firmware's agent reads it",
                        at.space
                    ),
                })
            }
        }
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
        if !self.session.connected {
            return Err(TargetError::Protocol {
                stage,
                detail: "the programmer is not connected: call connect first".to_owned(),
            });
        }
        // The firmware (and its agent) runs only while the programmer releases RESET.
        if self.session.pmode {
            self.leave_progmode(stage)?;
            self.session.agent_checked = false;
        }
        if let Some(agent) = self.agent.as_mut() {
            agent.wait(self.config.agent_boot);
        }
        if !self.session.agent_checked {
            let expected = self.session.identity.as_ref().map(|id| id.uid.clone());
            let timeout = self.config.agent_timeout;
            let agent = self.agent.as_mut().ok_or(TargetError::Unsupported {
                stage,
                capability: Capability::AnswerChallenge,
            })?;
            flashgate_agent::uart::hello(agent.as_mut(), timeout, stage, expected.as_deref())?;
            self.session.agent_checked = true;
        }
        self.agent_exchange(&Message::Challenge(request.clone()))?
            .into_challenge_reply()
            .map_err(|e| e.at_stage(stage))
    }

    fn set_lock(&mut self, permission: LockPermission) -> Result<(), TargetError> {
        let stage = Stage::Lock;
        let byte = match permission.level() {
            LockLevel::None => {
                return Err(TargetError::InvalidRequest {
                    stage,
                    detail: "a lock permission for level none locks nothing: allow readout"
                        .to_owned(),
                })
            }
            LockLevel::Readout => self.config.lock_readout,
            LockLevel::Permanent => self.config.lock_permanent.ok_or_else(|| {
                TargetError::InvalidRequest {
                    stage,
                    detail: "an AVR has no permanent lock over ISP (a chip erase always clears the lock bits): lock at readout, or name a lock byte for permanent in the driver configuration".to_owned(),
                }
            })?,
        };
        self.ensure_pmode(stage)?;
        self.universal(stage, None, [0xAC, 0xE0, 0x00, byte])?;
        self.isp.wait(self.part.fuse_write);
        let got = self.universal(stage, None, [0x58, 0x00, 0x00, 0x00])?;
        if got & LOCK_MASK != byte & LOCK_MASK {
            return Err(TargetError::VerifyMismatch {
                stage,
                address: 0,
                expected: vec![byte],
                found: vec![got],
            });
        }
        Ok(())
    }

    fn read_lock(&mut self) -> Result<LockState, TargetError> {
        let stage = Stage::LockReadback;
        self.ensure_pmode(stage)?;
        let raw = self.universal(stage, None, [0x58, 0x00, 0x00, 0x00])?;
        Ok(Self::lock_state(raw))
    }
}

/// A transport that is never there (left behind by `into_transports`).
struct NoLink;

impl Transport for NoLink {
    fn write_all(&mut self, _: &[u8]) -> Result<(), SerialError> {
        Err(SerialError::Io(
            "the transport was taken from this driver".to_owned(),
        ))
    }
    fn read_exact(&mut self, _: &mut [u8], timeout: Duration) -> Result<(), SerialError> {
        Err(SerialError::Timeout(timeout))
    }
    fn clear_input(&mut self) -> Result<(), SerialError> {
        Ok(())
    }
}

fn no_target(sig: &[u8; 3]) -> bool {
    *sig == [0, 0, 0] || *sig == [0xFF, 0xFF, 0xFF]
}

fn describe_signature(sig: &[u8; 3]) -> String {
    match Part::by_signature(sig) {
        Some(p) => p.name.to_owned(),
        None => format!("an unknown AVR with signature {}", hex(sig)),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

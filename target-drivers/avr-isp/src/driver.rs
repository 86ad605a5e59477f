//! `AvrIspTarget`: flashgate's driver for AVRs behind an ArduinoISP (STK500v1) programmer.

use std::time::Duration;

use flashgate_agent::{Decoder, Message, HEADER_LEN, MAX_PAYLOAD, SOF};
use flashgate_serial::{LineConfig, SerialError, SerialPortTransport, Transport};
use flashgate_target::{
    Capabilities, Capability, ChallengeRequest, ChallengeResponse, DeviceInfo, Location, LockLevel,
    LockPermission, LockState, MemoryRegion, Space, Stage, Target, TargetError, MISMATCH_WINDOW,
};
use zeroize::Zeroizing;

use crate::part::{Part, ATMEGA328P};
use crate::stk::*;
use crate::uid::{board_uid, serial_is_blank, serial_offset, SERIAL_LEN};

/// Lock byte bits that exist on the supported parts (bits 7:6 are unused and read 1).
const LOCK_MASK: u8 = 0x3F;
/// Longest flash or EEPROM block read with one `READ_PAGE`.
const READ_BLOCK: u32 = 256;
/// The ArduinoISP sketch's serial receive buffer: never queue more than this many bytes.
const PROGRAMMER_RX_BUFFER: usize = 64;
/// The sketch's answer to `UNIVERSAL` (`STK_INSYNC`, the byte, `STK_OK`).
const WRITE_PAGE_REPLY_LEN: u64 = 3;
/// The shortest command that makes the sketch send an SPI instruction (`READ_SIGN`, `EOP`).
const SHORTEST_SPI_COMMAND_LEN: u64 = 2;
/// Time-out used when leaving programming mode as the driver is dropped.
const DROP_TIMEOUT: Duration = Duration::from_millis(200);

/// How the driver talks to the programmer and the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvrIspConfig {
    /// The part the job is for: sent to the programmer (`SET_DEVICE`) before the signature
    /// is read. [`identify`](Target::identify) reports the part it actually finds.
    pub part: &'static Part,
    /// Baud rate of the programmer's serial port (ArduinoISP: 19200).
    pub baud: u32,
    /// Baud rate of the agent UART (8N1).
    pub agent_baud: u32,
    /// How long to wait for one answer from the programmer.
    pub command_timeout: Duration,
    /// How many `GET_SYNC` tries before the programmer counts as missing.
    pub sync_attempts: u32,
    /// How long each `GET_SYNC` try waits.
    pub sync_timeout: Duration,
    /// Pulse DTR/RTS on connect (resets an Arduino whose auto-reset is enabled).
    pub reset_on_connect: bool,
    /// After that pulse, how long the Arduino's bootloader takes before the sketch runs.
    pub boot_wait: Duration,
    /// How long to wait for the agent's reply (it hashes flash and signs).
    pub agent_timeout: Duration,
    /// After releasing the target's RESET, how long its firmware takes to start.
    pub agent_boot: Duration,
    /// Lock byte written for [`LockLevel::Readout`] (default `0xFC`: LB mode 3, further
    /// programming and verification disabled; boot lock bits untouched). The policy may
    /// name another byte, e.g. `0xCC` to lock the boot section too.
    pub lock_readout: u8,
    /// Lock byte for [`LockLevel::Permanent`]; `None` (default) refuses it, since an AVR's
    /// lock bits are always cleared by a chip erase.
    pub lock_permanent: Option<u8>,
    /// How many `LOAD_ADDRESS`+`READ_PAGE` pairs may be in flight at once (1 = strict
    /// request/reply). Each pair is 9 bytes, so up to 7 fit the sketch's 64-byte receive buffer.
    pub read_pipeline: usize,
    /// Re-read the signature after this many flash pages (and after the last), so that a
    /// target that reset mid-programming (brown-out) is caught in the program stage.
    pub signature_check_pages: u32,
}

impl Default for AvrIspConfig {
    /// ATmega328P at 19200 baud, agent at 115200, 2 s command and 10 s agent time-outs,
    /// readout lock `0xFC`, reads pipelined 4 deep, signature re-checked every 16 pages.
    fn default() -> Self {
        AvrIspConfig {
            part: &ATMEGA328P,
            baud: 19_200,
            agent_baud: 115_200,
            command_timeout: Duration::from_secs(2),
            sync_attempts: 5,
            sync_timeout: Duration::from_millis(500),
            reset_on_connect: false,
            boot_wait: Duration::from_secs(2),
            agent_timeout: Duration::from_secs(10),
            agent_boot: Duration::from_millis(100),
            lock_readout: 0xFC,
            lock_permanent: None,
            read_pipeline: 4,
            signature_check_pages: 16,
        }
    }
}

impl AvrIspConfig {
    /// The default configuration for `part`.
    pub fn for_part(part: &'static Part) -> Self {
        AvrIspConfig {
            part,
            ..AvrIspConfig::default()
        }
    }
}

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

    // ---- STK500v1 ----

    fn timeout(&self) -> Duration {
        self.timeout_override.unwrap_or(self.config.command_timeout)
    }

    fn link_error(&mut self, stage: Stage, address: Option<u32>, e: SerialError) -> TargetError {
        self.session.connected = false;
        match e {
            SerialError::Timeout(timeout) => TargetError::Timeout {
                stage,
                address,
                timeout,
            },
            other => TargetError::Protocol {
                stage,
                detail: format!(
                    "{other}: check the programmer's USB cable and that no other program uses {}",
                    self.isp.name()
                ),
            },
        }
    }

    fn protocol(&mut self, stage: Stage, detail: String) -> TargetError {
        self.session.connected = false;
        TargetError::Protocol { stage, detail }
    }

    fn send(
        &mut self,
        stage: Stage,
        address: Option<u32>,
        bytes: &[u8],
    ) -> Result<(), TargetError> {
        self.isp
            .write_all(bytes)
            .map_err(|e| self.link_error(stage, address, e))
    }

    fn read_bytes(
        &mut self,
        stage: Stage,
        address: Option<u32>,
        buf: &mut [u8],
    ) -> Result<(), TargetError> {
        let timeout = self.timeout();
        self.isp
            .read_exact(buf, timeout)
            .map_err(|e| self.link_error(stage, address, e))
    }

    /// Reads one reply: `STK_INSYNC`, `data_len` bytes, `STK_OK`.
    fn expect_reply(
        &mut self,
        stage: Stage,
        address: Option<u32>,
        command: u8,
        data: &mut [u8],
    ) -> Result<(), TargetError> {
        let what = command_label(command);
        let at = At(address);
        let mut b = [0u8; 1];
        self.read_bytes(stage, address, &mut b)?;
        match b[0] {
            INSYNC => {}
            NOSYNC => {
                return Err(self.protocol(
                    stage,
                    format!(
                        "the programmer answered STK_NOSYNC (0x15) to {what}{at}: it lost step with the host; check the baud rate ({}) and the cable, then connect again",
                        self.config.baud
                    ),
                ))
            }
            FAILED => {
                // Answers to commands sent after this one may still be queued: the link is
                // lost, so the next operation cannot take one of them as its own answer.
                self.session.connected = false;
                return Err(TargetError::Nack { stage, address });
            }
            other => {
                return Err(self.protocol(
                    stage,
                    format!(
                        "expected STK_INSYNC (0x14) in answer to {what}{at} but received 0x{other:02x}: the link is garbled or the programmer is not an ArduinoISP; check the baud rate and cable, then connect again"
                    ),
                ))
            }
        }
        self.read_bytes(stage, address, data)?;
        self.read_bytes(stage, address, &mut b)?;
        match b[0] {
            OK => Ok(()),
            FAILED => {
                self.session.connected = false;
                Err(TargetError::Nack { stage, address })
            }
            other => Err(self.protocol(
                stage,
                format!(
                    "expected STK_OK (0x10) to end the answer to {what}{at} but received 0x{other:02x}: the link is garbled; check the cable, then connect again"
                ),
            )),
        }
    }

    fn command(
        &mut self,
        stage: Stage,
        address: Option<u32>,
        bytes: &[u8],
        data: &mut [u8],
    ) -> Result<(), TargetError> {
        self.send(stage, address, bytes)?;
        self.expect_reply(stage, address, bytes[0], data)
    }

    fn universal(
        &mut self,
        stage: Stage,
        address: Option<u32>,
        instr: [u8; 4],
    ) -> Result<u8, TargetError> {
        let mut out = [0u8; 1];
        let [a, b, c, d] = instr;
        self.command(stage, address, &[UNIVERSAL, a, b, c, d, EOP], &mut out)?;
        Ok(out[0])
    }

    fn get_parameter(&mut self, parm: u8) -> Result<u8, TargetError> {
        let mut out = [0u8; 1];
        self.command(Stage::Connect, None, &[GET_PARAMETER, parm, EOP], &mut out)?;
        Ok(out[0])
    }

    fn sync(&mut self) -> Result<(), TargetError> {
        let stage = Stage::Connect;
        let mut heard: Vec<u8> = Vec::new();
        for _ in 0..self.config.sync_attempts.max(1) {
            self.isp
                .clear_input()
                .map_err(|e| self.link_error(stage, None, e))?;
            self.send(stage, None, &[GET_SYNC, EOP])?;
            let mut b = [0u8; 2];
            match self.isp.read_exact(&mut b[..1], self.config.sync_timeout) {
                Ok(()) if b[0] == INSYNC => {
                    match self.isp.read_exact(&mut b[1..], self.config.sync_timeout) {
                        Ok(()) if b[1] == OK => return Ok(()),
                        Ok(()) => heard.extend_from_slice(&b),
                        Err(SerialError::Timeout(_)) => heard.push(b[0]),
                        Err(e) => return Err(self.link_error(stage, None, e)),
                    }
                }
                Ok(()) => heard.push(b[0]),
                Err(SerialError::Timeout(_)) => {}
                Err(e) => return Err(self.link_error(stage, None, e)),
            }
        }
        let port = self.isp.name();
        let tries = self.config.sync_attempts.max(1);
        Err(self.protocol(
            stage,
            if heard.is_empty() {
                format!(
                    "no answer from the programmer on {port} after {tries} tries: check that the ArduinoISP is plugged in and powered, runs the ArduinoISP sketch, and listens at {} baud",
                    self.config.baud
                )
            } else {
                format!(
                    "the programmer on {port} answers but not in STK500v1 sync (received {}): check the baud rate ({}) and that it runs the ArduinoISP sketch",
                    hex(&heard[heard.len().saturating_sub(8)..]),
                    self.config.baud
                )
            },
        ))
    }

    fn set_device(&mut self, part: &'static Part) -> Result<(), TargetError> {
        let stage = Stage::Connect;
        let mut cmd = vec![
            SET_DEVICE,
            part.stk500_devcode,
            0,    // revision
            0,    // serial and parallel programming
            1,    // full parallel interface
            1,    // polling
            1,    // self-timed
            1,    // lock bytes
            3,    // fuse bytes
            0xFF, // flash poll values
            0xFF,
            0xFF, // EEPROM poll values
            0xFF,
        ];
        cmd.extend_from_slice(&(part.flash_page as u16).to_be_bytes());
        cmd.extend_from_slice(&(part.eeprom_size as u16).to_be_bytes());
        cmd.extend_from_slice(&part.flash_size.to_be_bytes());
        cmd.push(EOP);
        self.command(stage, None, &cmd, &mut [])?;
        // avrdude sends 4 extended parameters to firmware newer than 1.10, 3 to older.
        let (_, major, minor) = self.session.version;
        let ext = if major > 1 || (major == 1 && minor > 10) {
            vec![
                SET_DEVICE_EXT,
                5,
                part.eeprom_page as u8,
                part.pagel,
                part.bs2,
                1,
                EOP,
            ]
        } else {
            vec![
                SET_DEVICE_EXT,
                4,
                part.eeprom_page as u8,
                part.pagel,
                part.bs2,
                EOP,
            ]
        };
        self.command(stage, None, &ext, &mut [])?;
        self.part = part;
        Ok(())
    }

    fn enter_progmode(&mut self, stage: Stage) -> Result<(), TargetError> {
        self.command(stage, None, &[ENTER_PROGMODE, EOP], &mut [])?;
        self.session.pmode = true;
        // The target was reset: its extended address register is back to 0, but do not rely on it.
        self.session.ext_addr = None;
        Ok(())
    }

    fn leave_progmode(&mut self, stage: Stage) -> Result<(), TargetError> {
        self.command(stage, None, &[LEAVE_PROGMODE, EOP], &mut [])?;
        self.session.pmode = false;
        Ok(())
    }

    fn read_signature(&mut self, stage: Stage) -> Result<[u8; 3], TargetError> {
        let mut sig = [0u8; 3];
        self.command(stage, None, &[READ_SIGN, EOP], &mut sig)?;
        Ok(sig)
    }

    /// Makes sure the link is up and the target in programming mode; after re-entering it,
    /// checks that it is still the board identify saw.
    fn ensure_pmode(&mut self, stage: Stage) -> Result<(), TargetError> {
        if !self.session.connected {
            return Err(TargetError::Protocol {
                stage,
                detail: "the programmer is not connected: call connect first (again after a time-out or protocol error)".to_owned(),
            });
        }
        if self.session.pmode {
            return Ok(());
        }
        self.enter_progmode(stage)?;
        if let Some(id) = self.session.identity.clone() {
            self.check_same_board(stage, &id)?;
        }
        Ok(())
    }

    fn check_same_board(&mut self, stage: Stage, id: &Identity) -> Result<(), TargetError> {
        let sig = self.read_signature(stage)?;
        if sig != id.signature {
            return Err(if no_target(&sig) {
                TargetError::ContactLost {
                    stage,
                    address: None,
                }
            } else {
                TargetError::WrongDevice {
                    expected: id.part.name.to_owned(),
                    found: describe_signature(&sig),
                }
            });
        }
        if let Some(serial) = id.serial {
            let mut now = [0u8; SERIAL_LEN];
            self.read_eeprom(stage, serial_offset(id.part), &mut now)?;
            if now != serial {
                return Err(self.protocol(
                    stage,
                    format!(
                        "the board's serial now reads {} but identify read {}: the board was swapped; identify it again",
                        hex(&now),
                        hex(&serial)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Re-reads the signature after programming; a target that stopped answering reset
    /// during the write (brown-out) at or after `since`.
    fn check_target(&mut self, stage: Stage, since: u32) -> Result<(), TargetError> {
        let sig = self.read_signature(stage)?;
        if sig == self.part.signature {
            return Ok(());
        }
        if no_target(&sig) {
            // Programming is no longer enabled: force a fresh ENTER_PROGMODE next time.
            self.session.pmode = false;
            let _ = self.leave_progmode(stage);
            return Err(TargetError::BrownOut {
                stage,
                address: Some(since),
            });
        }
        Err(TargetError::WrongDevice {
            expected: self.part.name.to_owned(),
            found: describe_signature(&sig),
        })
    }

    fn set_ext(&mut self, stage: Stage, address: u32) -> Result<(), TargetError> {
        if !self.part.needs_extended_address() {
            return Ok(());
        }
        let ext = ((address / 2) >> 16) as u8;
        if self.session.ext_addr != Some(ext) {
            self.universal(stage, Some(address), [0x4D, 0x00, ext, 0x00])?;
            self.session.ext_addr = Some(ext);
        }
        Ok(())
    }

    fn check_flash_range(
        &self,
        stage: Stage,
        address: u32,
        length: usize,
    ) -> Result<(), TargetError> {
        let length = u32::try_from(length).unwrap_or(u32::MAX);
        if u64::from(address) + u64::from(length) > u64::from(self.part.flash_size) {
            return Err(TargetError::OutOfRange {
                stage,
                address,
                length,
            });
        }
        Ok(())
    }

    /// Programs flash; the caller checked the range.
    fn program_flash(
        &mut self,
        stage: Stage,
        address: u32,
        data: &[u8],
    ) -> Result<(), TargetError> {
        self.ensure_pmode(stage)?;
        self.check_flash_range(stage, address, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        // Word-align: pad with 0xFF, which programming leaves untouched.
        let start = address & !1;
        let mut image = Zeroizing::new(Vec::with_capacity(data.len() + 2));
        if address & 1 == 1 {
            image.push(0xFF);
        }
        image.extend_from_slice(data);
        if image.len() % 2 == 1 {
            image.push(0xFF);
        }
        let page = self.part.flash_page;
        let mut at = start;
        let mut done = 0usize;
        let mut since = start;
        let mut pages = 0u32;
        while done < image.len() {
            let room = (page - at % page) as usize;
            let n = room.min(image.len() - done);
            self.set_ext(stage, at)?;
            let word = ((at / 2) & 0xFFFF) as u16;
            let mut msg = Vec::with_capacity(9 + n);
            msg.extend_from_slice(&[LOAD_ADDRESS]);
            msg.extend_from_slice(&word.to_le_bytes());
            msg.push(EOP);
            msg.push(PROG_PAGE);
            msg.extend_from_slice(&(n as u16).to_be_bytes());
            msg.push(MEM_FLASH);
            msg.extend_from_slice(&image[done..done + n]);
            msg.push(EOP);
            self.send(stage, Some(at), &msg)?;
            msg.fill(0);
            self.expect_reply(stage, Some(at), LOAD_ADDRESS, &mut [])?;
            self.expect_reply(stage, Some(at), PROG_PAGE, &mut [])?;
            pages += 1;
            at += n as u32;
            done += n;
            if pages >= self.config.signature_check_pages.max(1) {
                self.check_target(stage, since)?;
                since = at;
                pages = 0;
            }
        }
        if pages > 0 {
            self.check_target(stage, since)?;
        }
        Ok(())
    }

    /// Reads flash; the caller checked the range.
    fn read_flash(
        &mut self,
        stage: Stage,
        address: u32,
        buf: &mut [u8],
    ) -> Result<(), TargetError> {
        self.ensure_pmode(stage)?;
        self.check_flash_range(stage, address, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let start = address & !1;
        let end = (address + buf.len() as u32 + 1) & !1;
        let mut blocks: Vec<(u32, u32)> = Vec::new();
        let mut at = start;
        while at < end {
            let n = (READ_BLOCK - at % READ_BLOCK).min(end - at);
            blocks.push((at, n));
            at += n;
        }
        let mut data = Zeroizing::new(vec![0u8; (end - start) as usize]);
        let depth = self.config.read_pipeline.clamp(1, PROGRAMMER_RX_BUFFER / 9);
        let mut i = 0;
        while i < blocks.len() {
            // A group shares one extended address byte and fits the programmer's buffer.
            let ext = |a: u32| (a / 2) >> 16;
            let mut j = i + 1;
            while j < blocks.len() && j - i < depth && ext(blocks[j].0) == ext(blocks[i].0) {
                j += 1;
            }
            self.set_ext(stage, blocks[i].0)?;
            let mut msg = Vec::with_capacity(9 * (j - i));
            for &(a, n) in &blocks[i..j] {
                let word = ((a / 2) & 0xFFFF) as u16;
                msg.push(LOAD_ADDRESS);
                msg.extend_from_slice(&word.to_le_bytes());
                msg.push(EOP);
                msg.push(READ_PAGE);
                msg.extend_from_slice(&(n as u16).to_be_bytes());
                msg.push(MEM_FLASH);
                msg.push(EOP);
            }
            self.send(stage, Some(blocks[i].0), &msg)?;
            for &(a, n) in &blocks[i..j] {
                self.expect_reply(stage, Some(a), LOAD_ADDRESS, &mut [])?;
                let off = (a - start) as usize;
                self.expect_reply(stage, Some(a), READ_PAGE, &mut data[off..off + n as usize])?;
            }
            i = j;
        }
        let skip = (address - start) as usize;
        buf.copy_from_slice(&data[skip..skip + buf.len()]);
        Ok(())
    }

    /// Reads EEPROM: `READ_PAGE 'E'` from even offsets (the sketch takes a word address),
    /// `UNIVERSAL A0` byte by byte from odd ones.
    fn read_eeprom(
        &mut self,
        stage: Stage,
        offset: u32,
        buf: &mut [u8],
    ) -> Result<(), TargetError> {
        if offset % 2 == 0 {
            let mut done = 0usize;
            while done < buf.len() {
                let at = offset + done as u32;
                let n = (buf.len() - done).min(READ_BLOCK as usize);
                let word = (at / 2) as u16;
                let mut msg = vec![LOAD_ADDRESS];
                msg.extend_from_slice(&word.to_le_bytes());
                msg.extend_from_slice(&[EOP, READ_PAGE]);
                msg.extend_from_slice(&(n as u16).to_be_bytes());
                msg.extend_from_slice(&[MEM_EEPROM, EOP]);
                self.send(stage, Some(at), &msg)?;
                self.expect_reply(stage, Some(at), LOAD_ADDRESS, &mut [])?;
                self.expect_reply(stage, Some(at), READ_PAGE, &mut buf[done..done + n])?;
                done += n;
            }
            return Ok(());
        }
        for (i, chunk) in buf.chunks_mut(8).enumerate() {
            let base = offset + (i * 8) as u32;
            let mut msg = Vec::with_capacity(6 * chunk.len());
            for k in 0..chunk.len() {
                let [hi, lo] = ((base + k as u32) as u16).to_be_bytes();
                msg.extend_from_slice(&[UNIVERSAL, 0xA0, hi, lo, 0x00, EOP]);
            }
            self.send(stage, Some(base), &msg)?;
            for (k, out) in chunk.iter_mut().enumerate() {
                let mut b = [0u8; 1];
                self.expect_reply(stage, Some(base + k as u32), UNIVERSAL, &mut b)?;
                *out = b[0];
            }
        }
        Ok(())
    }

    /// Writes EEPROM a page at a time: Load EEPROM Memory Page (`C1`) per byte and Write
    /// EEPROM Memory Page (`C2`), sent as one write, then tWD_EEPROM.
    fn write_eeprom(&mut self, stage: Stage, offset: u32, data: &[u8]) -> Result<(), TargetError> {
        let page = self.part.eeprom_page;
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u32;
            let n = ((page - at % page) as usize).min(data.len() - done);
            let mut msg = Zeroizing::new(Vec::with_capacity(6 * (n + 1)));
            for (k, &b) in data[done..done + n].iter().enumerate() {
                let within = ((at + k as u32) % page) as u8;
                msg.extend_from_slice(&[UNIVERSAL, 0xC1, 0x00, within, b, EOP]);
            }
            let [hi, lo] = ((at - at % page) as u16).to_be_bytes();
            msg.extend_from_slice(&[UNIVERSAL, 0xC2, hi, lo, 0x00, EOP]);
            self.send(stage, Some(at), &msg)?;
            for _ in 0..=n {
                self.expect_reply(stage, Some(at), UNIVERSAL, &mut [0u8; 1])?;
            }
            // The sketch answers after the page write has started, and the next SPI
            // instruction needs a whole command after that answer: those bytes' wire time
            // is part of tWD_EEPROM already.
            self.isp.wait(
                self.part.eeprom_write.saturating_sub(
                    self.wire_time(WRITE_PAGE_REPLY_LEN + SHORTEST_SPI_COMMAND_LEN),
                ),
            );
            done += n;
        }
        Ok(())
    }

    /// How long `bytes` take on the programmer's serial line (8N1).
    fn wire_time(&self, bytes: u64) -> Duration {
        Duration::from_nanos(bytes * 10 * 1_000_000_000 / u64::from(self.config.baud.max(1)))
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

    // ---- agent ----

    fn agent_exchange(&mut self, request: &Message) -> Result<Message, TargetError> {
        let stage = Stage::Challenge;
        let timeout = self.config.agent_timeout;
        let agent = self.agent.as_mut().ok_or(TargetError::Unsupported {
            stage,
            capability: Capability::AnswerChallenge,
        })?;
        let frame = request.encode().map_err(|e| TargetError::InvalidRequest {
            stage,
            detail: e.to_string(),
        })?;
        let link = |e: SerialError| match e {
            SerialError::Timeout(timeout) => TargetError::Timeout {
                stage,
                address: None,
                timeout,
            },
            other => TargetError::Protocol {
                stage,
                detail: format!("agent UART: {other}: check the agent cable"),
            },
        };
        agent.clear_input().map_err(link)?;
        agent.write_all(&frame).map_err(link)?;
        // Hunt for the start byte (bounded), then read header, payload and CRC.
        let mut bytes = Vec::new();
        let mut b = [0u8; 1];
        let mut skipped = 0usize;
        loop {
            agent.read_exact(&mut b, timeout).map_err(link)?;
            if b[0] == SOF {
                break;
            }
            skipped += 1;
            if skipped > flashgate_agent::MAX_FRAME {
                return Err(TargetError::Agent {
                    stage,
                    code: None,
                    detail: "the agent UART carries no frame start (0xA5), only noise: check the agent's baud rate and wiring".to_owned(),
                });
            }
        }
        bytes.push(SOF);
        let mut header = [0u8; HEADER_LEN - 1];
        agent.read_exact(&mut header, timeout).map_err(link)?;
        bytes.extend_from_slice(&header);
        let length = usize::from(u16::from_le_bytes([header[1], header[2]]));
        if length > MAX_PAYLOAD {
            return Err(TargetError::Agent {
                stage,
                code: None,
                detail: format!(
                    "the agent announced a {length}-byte payload, more than the protocol allows: the link is garbled; check the agent's baud rate"
                ),
            });
        }
        let mut rest = vec![0u8; length + flashgate_agent::CRC_LEN];
        agent.read_exact(&mut rest, timeout).map_err(link)?;
        bytes.extend_from_slice(&rest);
        let mut decoder = Decoder::new();
        decoder.feed(&bytes);
        match decoder.next_frame() {
            Some(Ok(f)) => Message::decode(&f).map_err(|e| e.at_stage(stage)),
            Some(Err(e)) => Err(e.at_stage(stage)),
            None => Err(TargetError::Agent {
                stage,
                code: None,
                detail: "the agent's reply was incomplete: retry the board".to_owned(),
            }),
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
            let (device_type, uid) = self
                .agent_exchange(&Message::Hello)?
                .into_hello_reply()
                .map_err(|e| e.at_stage(stage))?;
            if let Some(id) = &self.session.identity {
                if uid != id.uid {
                    return Err(TargetError::Protocol {
                        stage,
                        detail: format!(
                            "the agent ({device_type}) reports UID {} but the programming interface read {}: check that the agent UART goes to the same board",
                            hex(&uid),
                            hex(&id.uid)
                        ),
                    });
                }
            }
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

fn command_label(cmd: u8) -> String {
    format!(
        "{} (0x{cmd:02x})",
        command_name(cmd).to_ascii_uppercase().replace('-', "_")
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// ` at 0x0000abcd`, or nothing.
struct At(Option<u32>);

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => write!(f, " at 0x{a:08x}"),
            None => Ok(()),
        }
    }
}

//! The STK500v1 link to the programmer: one command and its answer, `UNIVERSAL` SPI
//! instructions, parameters and the sync.

use std::time::Duration;

use flashgate_serial::SerialError;
use flashgate_target::{Stage, TargetError};

use super::{hex, AvrIspTarget};
use crate::stk::*;

impl AvrIspTarget {
    fn timeout(&self) -> Duration {
        self.timeout_override.unwrap_or(self.config.command_timeout)
    }

    pub(super) fn link_error(
        &mut self,
        stage: Stage,
        address: Option<u32>,
        e: SerialError,
    ) -> TargetError {
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

    pub(super) fn protocol(&mut self, stage: Stage, detail: String) -> TargetError {
        self.session.connected = false;
        TargetError::Protocol { stage, detail }
    }

    pub(super) fn send(
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
    pub(super) fn expect_reply(
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

    pub(super) fn command(
        &mut self,
        stage: Stage,
        address: Option<u32>,
        bytes: &[u8],
        data: &mut [u8],
    ) -> Result<(), TargetError> {
        self.send(stage, address, bytes)?;
        self.expect_reply(stage, address, bytes[0], data)
    }

    pub(super) fn universal(
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

    pub(super) fn get_parameter(&mut self, parm: u8) -> Result<u8, TargetError> {
        let mut out = [0u8; 1];
        self.command(Stage::Connect, None, &[GET_PARAMETER, parm, EOP], &mut out)?;
        Ok(out[0])
    }

    pub(super) fn sync(&mut self) -> Result<(), TargetError> {
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
}

fn command_label(cmd: u8) -> String {
    format!(
        "{} (0x{cmd:02x})",
        command_name(cmd).to_ascii_uppercase().replace('-', "_")
    )
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

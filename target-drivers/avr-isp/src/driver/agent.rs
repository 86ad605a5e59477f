//! The provisioning agent on its own UART: one request frame, one reply.

use flashgate_agent::{Decoder, Message, HEADER_LEN, MAX_PAYLOAD, SOF};
use flashgate_serial::SerialError;
use flashgate_target::{Capability, Stage, TargetError};

use super::AvrIspTarget;

impl AvrIspTarget {
    pub(super) fn agent_exchange(&mut self, request: &Message) -> Result<Message, TargetError> {
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

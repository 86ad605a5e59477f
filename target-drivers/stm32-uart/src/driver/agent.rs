//! The provisioning agent after Go, on the same link: one request frame, one reply.

use flashgate_agent::{Decoder, Message, HEADER_LEN, MAX_PAYLOAD, SOF};
use flashgate_serial::Transport;
use flashgate_target::{Stage, TargetError};

use super::{Ctx, Stm32UartTarget};
use crate::protocol::*;

impl<T: Transport> Stm32UartTarget<T> {
    /// Frames to the agent and its one reply.
    pub(super) fn agent_exchange(
        &mut self,
        stage: Stage,
        request: &Message,
    ) -> Result<Message, TargetError> {
        let ctx = Ctx {
            stage,
            address: None,
            cmd: CMD_GO,
        };
        let frame = request.encode().map_err(|e| TargetError::InvalidRequest {
            stage,
            detail: e.to_string(),
        })?;
        self.send(ctx, &frame)?;
        let mut decoder = Decoder::new();
        // Hunt for the start byte (a little garbage from the reset is tolerated).
        let t = self.options.agent_timeout;
        let mut skipped = 0;
        loop {
            let b = self.recv(ctx, 1, t)?;
            if b[0] == SOF {
                decoder.feed(&b);
                break;
            }
            skipped += 1;
            if skipped > 64 {
                return Err(TargetError::Protocol {
                    stage,
                    detail: "the application sends bytes but no agent frame: check that the firmware runs the flashgate agent at 115200 8N1".to_owned(),
                });
            }
        }
        let head = self.recv(ctx, HEADER_LEN - 1, self.options.ack_timeout)?;
        decoder.feed(&head);
        let len = usize::from(u16::from_le_bytes([head[1], head[2]])).min(MAX_PAYLOAD);
        let rest = self.recv(ctx, len + 2, self.data_timeout(len + 2))?;
        decoder.feed(&rest);
        match decoder.next_frame() {
            Some(Ok(f)) => Message::decode(&f).map_err(|e| e.at_stage(stage)),
            Some(Err(e)) => Err(e.at_stage(stage)),
            None => Err(TargetError::Protocol {
                stage,
                detail: "the agent's reply frame is incomplete: check the UART wiring".to_owned(),
            }),
        }
    }
}

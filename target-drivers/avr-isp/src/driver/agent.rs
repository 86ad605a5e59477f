//! The provisioning agent on its own UART: one request frame, one reply.

use flashgate_agent::Message;
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
        flashgate_agent::uart::exchange(agent.as_mut(), request, timeout, stage)
    }
}

//! The agent on a UART of its own (beside an ISP programmer or a debug
//! probe): one request frame, one reply, with the host side's timeouts.

use std::time::Duration;

use flashgate_serial::{SerialError, Transport};
use flashgate_target::{Stage, TargetError};

use crate::{Decoder, Message, CRC_LEN, HEADER_LEN, MAX_FRAME, MAX_PAYLOAD, SOF};

/// Sends `request` on `link` and reads the one reply frame, each read
/// within `timeout`. Noise before the frame start is skipped, up to a frame's
/// length.
pub fn exchange<T: Transport + ?Sized>(
    link: &mut T,
    request: &Message,
    timeout: Duration,
    stage: Stage,
) -> Result<Message, TargetError> {
    let frame = request.encode().map_err(|e| TargetError::InvalidRequest {
        stage,
        detail: e.to_string(),
    })?;
    let failed = |e: SerialError| match e {
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
    link.clear_input().map_err(failed)?;
    link.write_all(&frame).map_err(failed)?;
    // Hunt for the start byte (bounded), then read header, payload and CRC.
    let mut bytes = Vec::new();
    let mut b = [0u8; 1];
    let mut skipped = 0usize;
    loop {
        link.read_exact(&mut b, timeout).map_err(failed)?;
        if b[0] == SOF {
            break;
        }
        skipped += 1;
        if skipped > MAX_FRAME {
            return Err(TargetError::Agent {
                stage,
                code: None,
                detail: "the agent UART carries no frame start (0xA5), only noise: check the agent's baud rate and wiring".to_owned(),
            });
        }
    }
    bytes.push(SOF);
    let mut header = [0u8; HEADER_LEN - 1];
    link.read_exact(&mut header, timeout).map_err(failed)?;
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
    let mut rest = vec![0u8; length + CRC_LEN];
    link.read_exact(&mut rest, timeout).map_err(failed)?;
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

/// Hello on `link`: the agent's device type, checked to report the UID
/// that the programming interface read (`expected_uid`), so that an agent
/// UART wired to another board is caught before any challenge.
pub fn hello<T: Transport + ?Sized>(
    link: &mut T,
    timeout: Duration,
    stage: Stage,
    expected_uid: Option<&[u8]>,
) -> Result<String, TargetError> {
    let (device_type, uid) = exchange(link, &Message::Hello, timeout, stage)?
        .into_hello_reply()
        .map_err(|e| e.at_stage(stage))?;
    if let Some(id) = expected_uid {
        if uid != id {
            return Err(TargetError::Protocol {
                stage,
                detail: format!(
                    "the agent ({device_type}) reports UID {} but the programming interface read {}: check that the agent UART goes to the same board",
                    hex(&uid),
                    hex(id)
                ),
            });
        }
    }
    Ok(device_type)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

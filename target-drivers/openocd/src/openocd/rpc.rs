//! OpenOCD's TCL RPC: a script ending in 0x1a, its result ending in 0x1a.
//! Every command is wrapped in `catch`, so that a failure comes back marked
//! as one instead of as text that looks like a result.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

const END: u8 = 0x1a;
/// A reply larger than this is refused (the largest the driver asks for is
/// a 4 KiB read as a Tcl list of numbers).
const MAX_REPLY: usize = 1 << 20;

pub(super) struct Rpc {
    stream: TcpStream,
}

impl Rpc {
    pub(super) fn connect(port: u16, timeout: Duration) -> std::io::Result<Self> {
        let stream =
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Self { stream })
    }

    /// `Ok(Ok(result))`, `Ok(Err(message))` when the command failed, or
    /// `Err` when the connection did.
    pub(super) fn run(&mut self, command: &str) -> Result<Result<String, String>, String> {
        if command.as_bytes().contains(&END) || !balanced(command) {
            return Ok(Err("the command is not a well-formed Tcl word".to_owned()));
        }
        let script = format!(
            "if {{[catch {{{command}}} fg_m]}} {{set fg_r \"ERR:$fg_m\"}} else {{set fg_r \"OK:$fg_m\"}}"
        );
        let mut bytes = script.into_bytes();
        bytes.push(END);
        self.stream.write_all(&bytes).map_err(|e| e.to_string())?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = self.stream.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("OpenOCD closed the connection".to_owned());
            }
            reply.extend_from_slice(&buf[..n]);
            if reply.last() == Some(&END) {
                reply.pop();
                break;
            }
            if reply.len() > MAX_REPLY {
                return Err(format!("the reply passed {MAX_REPLY} bytes"));
            }
        }
        let text = String::from_utf8_lossy(&reply).into_owned();
        if let Some(r) = text.strip_prefix("OK:") {
            Ok(Ok(r.to_owned()))
        } else if let Some(m) = text.strip_prefix("ERR:") {
            Ok(Err(m.to_owned()))
        } else {
            Err(format!("an unexpected reply: {text:?}"))
        }
    }
}

/// Braces balanced, so the command stays one word inside `catch {...}`.
fn balanced(s: &str) -> bool {
    let mut depth = 0i32;
    for c in s.chars() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => {}
        }
    }
    depth == 0
}

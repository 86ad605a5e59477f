//! One OpenOCD process per channel, started and owned by the driver: its
//! own config, `noinit` so that `init` runs over RPC where its failure can
//! be seen, its TCL RPC port on loopback only, GDB and telnet off. Dropped,
//! it is asked to shut down and then killed.

mod error;
mod rpc;

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use error::OpenOcdError;
use rpc::Rpc;

/// The oldest OpenOCD the driver speaks to (read_memory/write_memory).
pub const OLDEST_VERSION: (u32, u32) = (0, 12);

/// How to start OpenOCD.
#[derive(Debug, Clone)]
pub struct OpenOcdConfig {
    /// The program (`openocd`, or a path).
    pub program: PathBuf,
    /// `-f` config files in order (interface, then target), or `-c`
    /// commands, as OpenOCD takes them.
    pub scripts: Vec<Script>,
    /// `adapter speed`, in kHz, after the scripts.
    pub adapter_khz: Option<u32>,
    /// How long start-up may take until the TCL port answers.
    pub start_timeout: Duration,
    /// How long one command may take.
    pub command_timeout: Duration,
}

/// One start-up argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// `-f FILE` (a path, or a name under OpenOCD's scripts, e.g. `target/stm32f1x.cfg`).
    File(String),
    /// `-c COMMAND`.
    Command(String),
}

impl OpenOcdConfig {
    /// `openocd` from `PATH` with these scripts; 10 s to start, 60 s a command.
    #[must_use]
    pub fn new(scripts: Vec<Script>) -> Self {
        Self {
            program: PathBuf::from("openocd"),
            scripts,
            adapter_khz: None,
            start_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(60),
        }
    }
}

/// A running OpenOCD.
pub struct OpenOcd {
    child: Child,
    rpc: Rpc,
    log: Arc<Mutex<Log>>,
    version: String,
}

impl std::fmt::Debug for OpenOcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOcd")
            .field("pid", &self.child.id())
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// OpenOCD's log (its stderr): the `Error:` lines, counted, so that a
/// command's failure can be told by what it logged.
#[derive(Debug, Default)]
struct Log {
    errors: Vec<String>,
    tail: Vec<String>,
}

impl Log {
    const KEEP: usize = 64;

    fn push(&mut self, line: String) {
        if let Some(e) = line.strip_prefix("Error: ") {
            if self.errors.len() == Self::KEEP {
                self.errors.remove(0);
            }
            self.errors.push(e.trim().to_owned());
        }
        if self.tail.len() == Self::KEEP {
            self.tail.remove(0);
        }
        self.tail.push(line);
    }
}

/// Parses `Open On-Chip Debugger 0.12.0[+dev...]` into (major, minor, text).
fn parse_version(text: &str) -> Option<(u32, u32, String)> {
    let line = text
        .lines()
        .find(|l| l.starts_with("Open On-Chip Debugger"))?;
    let v = line.trim_start_matches("Open On-Chip Debugger").trim();
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor, v.to_owned()))
}

/// The version `program` reports, if it is new enough.
pub fn check_version(program: &std::path::Path) -> Result<String, OpenOcdError> {
    let out = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| OpenOcdError::Missing {
            program: program.display().to_string(),
            detail: e.to_string(),
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let Some((major, minor, found)) = parse_version(&text) else {
        return Err(OpenOcdError::Missing {
            program: program.display().to_string(),
            detail: "it does not say it is OpenOCD (`--version` printed no \"Open On-Chip Debugger\" line)".to_owned(),
        });
    };
    if (major, minor) < OLDEST_VERSION {
        return Err(OpenOcdError::TooOld {
            found,
            needed: "0.12.0",
        });
    }
    Ok(found)
}

fn free_port() -> Result<u16, OpenOcdError> {
    // OpenOCD takes a port number only; this one was free a moment ago, and
    // a start that loses the race is retried.
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| OpenOcdError::DidNotStart {
            detail: format!("no free loopback port: {e}"),
        })
}

impl OpenOcd {
    /// Starts OpenOCD (not yet `init`: see [`OpenOcd::init`]).
    pub fn start(config: &OpenOcdConfig) -> Result<Self, OpenOcdError> {
        let version = check_version(&config.program)?;
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once(config, &version) {
                Err(OpenOcdError::DidNotStart { detail })
                    if detail.contains("Address already in use") =>
                {
                    last = Some(OpenOcdError::DidNotStart { detail });
                }
                other => return other,
            }
        }
        Err(last.unwrap_or(OpenOcdError::DidNotStart {
            detail: "no free port".to_owned(),
        }))
    }

    fn start_once(config: &OpenOcdConfig, version: &str) -> Result<Self, OpenOcdError> {
        let port = free_port()?;
        let mut cmd = Command::new(&config.program);
        cmd.args(["-c", "bindto 127.0.0.1"])
            .args(["-c", "gdb_port disabled"])
            .args(["-c", "telnet_port disabled"])
            .args(["-c", &format!("tcl_port {port}")]);
        for s in &config.scripts {
            match s {
                Script::File(f) => cmd.args(["-f", f]),
                Script::Command(c) => cmd.args(["-c", c]),
            };
        }
        if let Some(khz) = config.adapter_khz {
            cmd.args(["-c", &format!("adapter speed {khz}")]);
        }
        cmd.args(["-c", "noinit"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| OpenOcdError::Missing {
            program: config.program.display().to_string(),
            detail: e.to_string(),
        })?;
        let log = Arc::new(Mutex::new(Log::default()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(line);
                }
            });
        }
        let deadline = Instant::now() + config.start_timeout;
        let rpc = loop {
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                let tail = log
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .tail
                    .join(" | ");
                return Err(classify_start(&format!("it exited ({status}): {tail}")));
            }
            match Rpc::connect(port, config.command_timeout) {
                Ok(r) => break r,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(25))
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(OpenOcdError::DidNotStart {
                        detail: format!(
                            "its TCL port {port} did not answer within {:?}: {e}",
                            config.start_timeout
                        ),
                    });
                }
            }
        };
        Ok(Self {
            child,
            rpc,
            log,
            version: version.to_owned(),
        })
    }

    /// The version OpenOCD reported.
    #[must_use]
    pub fn version(&self) -> &str {
        &self.version
    }

    fn errors_since(&self, mark: usize) -> Vec<String> {
        let log = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        log.errors.iter().skip(mark).cloned().collect()
    }

    fn error_mark(&self) -> usize {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .errors
            .len()
    }

    /// Runs one Tcl command; its result, or its error with what OpenOCD
    /// logged meanwhile.
    pub fn command(&mut self, command: &str) -> Result<String, OpenOcdError> {
        let mark = self.error_mark();
        match self.rpc.run(command) {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(message)) => {
                // The log line may trail the reply by a moment.
                std::thread::sleep(Duration::from_millis(20));
                let mut detail: Vec<String> = self.errors_since(mark);
                if !message.is_empty() && !detail.iter().any(|d| d.contains(&message)) {
                    detail.push(message);
                }
                Err(OpenOcdError::Command {
                    command: command.to_owned(),
                    detail: if detail.is_empty() {
                        "it gave no reason".to_owned()
                    } else {
                        detail.join("; ")
                    },
                })
            }
            Err(e) => Err(OpenOcdError::Connection {
                command: command.to_owned(),
                detail: e,
            }),
        }
    }

    /// `init`: probe and target examined; failures told apart.
    pub fn init(&mut self) -> Result<(), OpenOcdError> {
        match self.command("init") {
            Ok(_) => {
                // OpenOCD 0.12 goes on after a failed examination; its log says so.
                let errors = self.errors_since(0);
                match errors.iter().find(|e| is_target_silence(e)) {
                    Some(e) => Err(OpenOcdError::TargetNotResponding { detail: e.clone() }),
                    None => Ok(()),
                }
            }
            Err(OpenOcdError::Command { detail, .. }) => Err(classify_start(&detail)),
            Err(e) => Err(e),
        }
    }
}

/// OpenOCD's words for a target that does not answer.
fn is_target_silence(line: &str) -> bool {
    [
        "IR capture error",
        "JTAG scan chain interrogation failed",
        "Invalid ACK",
        "Examination failed",
        "JTAG-DP STICKY ERROR",
        "Error connecting DP",
        "target not examined",
        "all ones",
        "all zeroes",
    ]
    .iter()
    .any(|w| line.contains(w))
}

/// What a failed start or `init` means.
fn classify_start(detail: &str) -> OpenOcdError {
    let probe = [
        "open failed",
        "unable to find a matching CMSIS-DAP device",
        "unable to open ftdi device",
        "no J-Link device found",
        "Can't find a debug probe",
        "couldn't open",
        "connect failed",
        "Connection refused",
        "No such file or directory",
    ];
    if probe.iter().any(|w| detail.contains(w)) {
        OpenOcdError::ProbeNotFound {
            detail: detail.to_owned(),
        }
    } else if is_target_silence(detail) {
        OpenOcdError::TargetNotResponding {
            detail: detail.to_owned(),
        }
    } else {
        OpenOcdError::DidNotStart {
            detail: detail.to_owned(),
        }
    }
}

impl Drop for OpenOcd {
    fn drop(&mut self) {
        let _ = self.rpc.run("shutdown");
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_the_banner() {
        assert_eq!(
            parse_version("Open On-Chip Debugger 0.12.0\nLicensed under GNU GPL v2\n"),
            Some((0, 12, "0.12.0".to_owned()))
        );
        assert_eq!(
            parse_version("Open On-Chip Debugger 0.11.0+dev-00123-g1234 (2021-01-01)"),
            Some((0, 11, "0.11.0+dev-00123-g1234 (2021-01-01)".to_owned()))
        );
        assert_eq!(parse_version("something else"), None);
    }

    #[test]
    fn start_failures_are_told_apart() {
        assert!(matches!(
            classify_start("Error: open failed"),
            OpenOcdError::ProbeNotFound { .. }
        ));
        assert!(matches!(
            classify_start("stm32f1x.cpu: IR capture error; saw 0x0f not 0x01"),
            OpenOcdError::TargetNotResponding { .. }
        ));
        assert!(matches!(
            classify_start("something odd"),
            OpenOcdError::DidNotStart { .. }
        ));
    }
}

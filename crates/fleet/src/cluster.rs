//! A private PostgreSQL cluster for tests, benchmarks and the demo: its own
//! data directory, a Unix socket in a directory of its own and no TCP
//! listener. Made with Debian's `initdb` and `pg_ctl`; as root it runs as
//! the `postgres` user, because `initdb` refuses root. Stopped and removed
//! on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::FleetError;

/// A running private cluster.
#[derive(Debug)]
pub struct PrivateCluster {
    root: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    _dir: Option<tempfile::TempDir>,
}

/// Server settings for [`PrivateCluster::start`].
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Turn fsync off: for tests, where the server is never killed (the
    /// crash tests kill the client).
    pub no_fsync: bool,
    /// More `-c name=value` settings.
    pub settings: Vec<(String, String)>,
}

fn find_bin() -> Result<PathBuf, FleetError> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b).ok_or_else(|| {
        FleetError::Usage(
            "PostgreSQL's server programs are not installed (/usr/lib/postgresql/*/bin/pg_ctl); run scripts/setup.sh or apt-get install postgresql".to_owned(),
        )
    })
}

fn is_root() -> bool {
    // The uid of the process, without libc: /proc/self is owned by it.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

impl PrivateCluster {
    /// Creates and starts a cluster in a new temporary directory.
    pub fn start(options: &ClusterOptions) -> Result<Self, FleetError> {
        let dir = tempfile::Builder::new()
            .prefix("flashgate-pg-")
            .tempdir()
            .map_err(|e| FleetError::Write {
                path: std::env::temp_dir().display().to_string(),
                detail: e.to_string(),
            })?;
        let root = dir.path().to_owned();
        let mut c = Self::start_in(&root, options)?;
        c._dir = Some(dir);
        Ok(c)
    }

    /// Creates and starts a cluster in `root` (created; must not hold one).
    pub fn start_in(root: &Path, options: &ClusterOptions) -> Result<Self, FleetError> {
        let bin = find_bin()?;
        let as_postgres = is_root();
        let werr = |e: std::io::Error| FleetError::Write {
            path: root.display().to_string(),
            detail: e.to_string(),
        };
        std::fs::create_dir_all(root.join("socket")).map_err(werr)?;
        let c = Self {
            root: root.to_owned(),
            bin,
            as_postgres,
            _dir: None,
        };
        if as_postgres {
            // The server's user must own its directories.
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(root)
                .status()
                .map_err(werr)?;
            if !status.success() {
                return Err(FleetError::Usage(format!(
                    "cannot give {} to the postgres user",
                    root.display()
                )));
            }
        }
        c.run(
            "initdb",
            &[
                "-D",
                &c.data().display().to_string(),
                "-U",
                "flashgate",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ],
        )?;
        let mut server = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c max_connections=50",
            c.socket_dir().display()
        );
        if options.no_fsync {
            server.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        for (k, v) in &options.settings {
            server.push_str(&format!(" -c {k}={v}"));
        }
        c.run(
            "pg_ctl",
            &[
                "-D",
                &c.data().display().to_string(),
                "-l",
                &c.root.join("server.log").display().to_string(),
                "-o",
                &server,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        Ok(c)
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The directory of the server's Unix socket.
    #[must_use]
    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("socket")
    }

    /// A connection string for database `db`.
    #[must_use]
    pub fn url(&self, db: &str) -> String {
        format!(
            "host={} user=flashgate dbname={db}",
            self.socket_dir().display()
        )
    }

    /// Creates database `db`.
    pub fn create_db(&self, db: &str) -> Result<(), FleetError> {
        self.run(
            "createdb",
            &[
                "-h",
                &self.socket_dir().display().to_string(),
                "-U",
                "flashgate",
                db,
            ],
        )
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), FleetError> {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        // The server's user may not be able to enter the caller's directory.
        cmd.args(args).current_dir("/");
        let out = cmd
            .output()
            .map_err(|e| FleetError::Usage(format!("cannot run {}: {e}", exe.display())))?;
        if !out.status.success() {
            return Err(FleetError::Usage(format!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            )));
        }
        Ok(())
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

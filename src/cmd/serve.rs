//! `flashgate serve`: the station as a network service (crates/serve).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use flashgate::station::Access;
use flashgate_serve::{ClientTrust, ServeOptions, ServerCert, Service};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address and port to listen on (TLS 1.3, a client certificate required).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// A name clients reach the station by, for the server certificate the
    /// station CA issues at start-up (IP address or DNS name; repeat it).
    /// Default: the listen address and `localhost`.
    #[arg(long = "server-name")]
    pub server_names: Vec<String>,
    /// Use this server certificate chain (PEM) instead of one from the station CA.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PKCS#8 key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Trust client certificates of this CA (PEM; an enterprise CA) instead of
    /// the station CA's. The role is read from the subject's OU either way.
    #[arg(long)]
    pub client_ca: Option<PathBuf>,
    /// The largest request body in bytes (a job package upload).
    #[arg(long, default_value_t = 16 << 20)]
    pub max_body: usize,
    /// Seconds a client may take to send a request's headers.
    #[arg(long, default_value_t = 10)]
    pub header_timeout: u64,
}

/// Runs the service until SIGTERM or SIGINT; then every live run finishes
/// its units in flight, is recorded as stopped and checkpointed, and the
/// process exits 0.
pub fn run(config: &Path, args: &ServeArgs) -> Result<u8> {
    let mut options = ServeOptions::new(args.listen);
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        options.server_cert = ServerCert::Files {
            cert: cert.clone(),
            key: key.clone(),
        };
    } else if !args.server_names.is_empty() {
        options.server_cert = ServerCert::StationCa {
            names: args.server_names.clone(),
            days: 30,
        };
    }
    if let Some(ca) = &args.client_ca {
        options.client_trust = ClientTrust::File(ca.clone());
    }
    options.max_body = args.max_body;
    options.header_timeout = std::time::Duration::from_secs(args.header_timeout.max(1));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    // The service is the appliance's one writer for as long as it runs.
    let station = super::open(
        config,
        Access::Write {
            purpose: "the station service is running".to_owned(),
        },
    )?;
    // Serving threads yield to the runs, which start from the launcher.
    let (runtime, launcher) =
        flashgate_serve::priority::runtime().context("cannot start the service's runtime")?;
    options.launcher = Some(launcher);
    runtime.block_on(async move {
        let service = Service::bind(station, options).await?;
        if let Some(addr) = service.local_addr() {
            println!("listening on https://{addr}");
            let _ = std::io::stdout().flush();
        }
        let report = service.run(shutdown_signal()).await;
        eprintln!(
            "stopped: {} live run(s) finished their units in flight",
            report.runs_stopped
        );
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(0)
}

/// SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

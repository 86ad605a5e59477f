//! flashgate's fleet collector, on the OEM's side.
//!
//! Every appliance's audit bundles go through the offline verifier into one
//! PostgreSQL database ([`Fleet`]). There the fleet-wide questions that no
//! single bundle answers become queries: a UID provisioned at two CMs, a
//! serial or key issued twice, a product over-built across jobs, an
//! appliance gone silent, a log that forked. After a consistent ingest the
//! collector cosigns the appliance's checkpoint as a witness. A device that
//! turns up in the field is looked up by UID, serial or certificate, with
//! an inclusion proof that checks offline.
//!
//! - [`migrate`]: versioned schema migrations (`migrations/*.sql`).
//! - [`ingest`]: one bundle, in one transaction.
//! - [`tree_store`]: the Merkle tree kept as rows, and proofs from it.
//! - [`report`], [`device`], [`inventory`]: what the OEM reads.
//! - [`witness`]: the collector's cosignatures of consistent checkpoints.
//! - [`cluster`]: a private PostgreSQL cluster for tests and the demo.
//!
//! The schema and the outputs are specified in `docs/FLEET.md`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod bundle_values;
pub mod cluster;
pub mod device;
mod error;
pub mod ingest;
pub mod inventory;
pub mod migrate;
pub mod report;
pub mod tree_store;
pub mod witness;

pub use error::FleetError;

use tokio_postgres::{Client, NoTls};

/// A connection to a fleet database.
#[derive(Debug)]
pub struct Fleet {
    pub(crate) client: Client,
    task: tokio::task::JoinHandle<()>,
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A `u64` from the logs as a PostgreSQL `bigint`; values past `i64::MAX`
/// cannot come from a verified log (counters and sizes are far smaller).
pub(crate) fn to_i64(v: u64) -> Result<i64, FleetError> {
    i64::try_from(v).map_err(|_| FleetError::Inconsistent(format!("{v} does not fit a bigint")))
}

/// The default time after which an appliance that sent nothing is silent.
pub const DEFAULT_SILENT_AFTER_SECONDS: u64 = 24 * 3600;

impl Fleet {
    /// Connects to `url` (a libpq key=value string or a `postgresql://`
    /// URL). Does not check the schema.
    pub async fn connect(url: &str) -> Result<Self, FleetError> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| {
            FleetError::Usage(format!(
                "{url:?} is not a PostgreSQL connection string: {e}"
            ))
        })?;
        let (client, connection) = config.connect(NoTls).await?;
        let task = tokio::spawn(async move {
            // Errors surface on the client's next call.
            let _ = connection.await;
        });
        Ok(Self { client, task })
    }

    /// Connects and checks that the schema is this program's.
    pub async fn open(url: &str) -> Result<Self, FleetError> {
        let f = Self::connect(url).await?;
        migrate::check(&f.client).await?;
        Ok(f)
    }

    /// Creates or migrates the schema; returns (version before, after).
    pub async fn init(&mut self) -> Result<(i64, i64), FleetError> {
        migrate::run(&mut self.client).await
    }

    /// Trusts an OEM job-signing key (65-byte SEC1); false if already trusted.
    pub async fn add_oem_key(&self, public_key: &[u8; 65]) -> Result<bool, FleetError> {
        let kid = flashgate_cose::key_id(public_key);
        let n = self
            .client
            .execute(
                "INSERT INTO oem_keys (key_id, public_key, added_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&kid.as_slice(), &public_key.as_slice(), &now_ms()],
            )
            .await?;
        Ok(n == 1)
    }

    /// The trusted OEM keys.
    pub async fn oem_keys(&self) -> Result<Vec<[u8; 65]>, FleetError> {
        let rows = self
            .client
            .query("SELECT public_key FROM oem_keys ORDER BY added_ms", &[])
            .await?;
        rows.iter()
            .map(|r| {
                let b: &[u8] = r.get(0);
                b.try_into().map_err(|_| {
                    FleetError::Inconsistent("a stored OEM key is not 65 bytes".to_owned())
                })
            })
            .collect()
    }

    /// Sets how long an appliance may send nothing before the report calls
    /// it silent.
    pub async fn set_silent_after(&self, seconds: u64) -> Result<(), FleetError> {
        self.set_setting("silent_after_seconds", &seconds.to_string())
            .await
    }

    pub(crate) async fn set_setting(&self, name: &str, value: &str) -> Result<(), FleetError> {
        self.client
            .execute(
                "INSERT INTO fleet_settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                &[&name, &value],
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn silent_after(&self) -> Result<u64, FleetError> {
        let row = self
            .client
            .query_opt(
                "SELECT value FROM fleet_settings WHERE name = 'silent_after_seconds'",
                &[],
            )
            .await?;
        Ok(row
            .and_then(|r| r.get::<_, String>(0).parse().ok())
            .unwrap_or(DEFAULT_SILENT_AFTER_SECONDS))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

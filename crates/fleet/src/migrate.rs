//! Versioned schema migrations. Each `migrations/NNNN_name.sql` is applied
//! once, in order, in one transaction with its row in `fleet_schema`, under
//! an advisory lock so that two `fleet init` at once apply it once.

use tokio_postgres::Client;

use crate::error::FleetError;

/// The migrations, in order: (version, name, SQL).
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "fleet", include_str!("../migrations/0001_fleet.sql")),
    (
        2,
        "certificates_ingest",
        include_str!("../migrations/0002_certificates_ingest.sql"),
    ),
    (
        3,
        "unit_certificates",
        include_str!("../migrations/0003_unit_certificates.sql"),
    ),
    (
        4,
        "uid_ingest_index",
        include_str!("../migrations/0004_uid_ingest_index.sql"),
    ),
    (
        5,
        "value_ingest_indexes",
        include_str!("../migrations/0005_value_ingest_indexes.sql"),
    ),
];

/// The schema version this program writes.
#[must_use]
pub fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// An arbitrary key for `pg_advisory_xact_lock`: "flashgat" in ASCII.
const LOCK_KEY: i64 = 0x666c_6173_6867_6174;

async fn current(client: &Client) -> Result<Option<i64>, FleetError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('fleet_schema') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let v: Option<i64> = client
        .query_one("SELECT max(version) FROM fleet_schema", &[])
        .await?
        .get(0);
    Ok(Some(v.unwrap_or(0)))
}

/// Fails unless the schema is exactly [`latest`].
pub async fn check(client: &Client) -> Result<(), FleetError> {
    match current(client).await? {
        None => Err(FleetError::NotInitialised),
        Some(v) if v > latest() => Err(FleetError::SchemaTooNew {
            found: v,
            known: latest(),
        }),
        Some(v) if v < latest() => Err(FleetError::Usage(format!(
            "the fleet database has schema version {v}; run `flashgate fleet init --db URL` to migrate it to {}",
            latest()
        ))),
        Some(_) => Ok(()),
    }
}

/// Applies what is missing; returns (version before, version after).
pub async fn run(client: &mut Client) -> Result<(i64, i64), FleetError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS fleet_schema (version bigint PRIMARY KEY, name text NOT NULL, applied_ms bigint NOT NULL)",
    )
    .await?;
    let before: i64 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM fleet_schema", &[])
        .await?
        .get(0);
    if before > latest() {
        return Err(FleetError::SchemaTooNew {
            found: before,
            known: latest(),
        });
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > before) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO fleet_schema (version, name, applied_ms) VALUES ($1, $2, $3)",
            &[version, name, &crate::now_ms()],
        )
        .await?;
    }
    tx.commit().await?;
    Ok((before, latest()))
}

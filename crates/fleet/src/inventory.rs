//! The certificate inventory of a job or product, as CSV or JSON: the rows
//! a cloud IoT registry's bulk registration takes. Streamed from the
//! database, so memory does not grow with the number of devices.

use std::io::Write;

use base64::Engine as _;
use futures_util::{pin_mut, TryStreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use crate::error::FleetError;
use crate::Fleet;

/// What to export.
#[derive(Debug, Clone)]
pub enum Selection {
    /// One job (16 bytes).
    Job([u8; 16]),
    /// Every job of one product.
    Product(String),
}

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InventoryFormat {
    /// RFC 4180 CSV with a header line.
    Csv,
    /// One JSON array of objects.
    Json,
}

/// One device of the inventory.
#[derive(Debug, serde::Serialize)]
struct Row<'a> {
    serial: &'a str,
    uid: String,
    certificate_pem: String,
    job_id: String,
    appliance_id: &'a str,
}

fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

impl Fleet {
    /// Writes the passed units' certificates of `selection`, a few rows at
    /// a time as they come from the database; returns how many.
    pub async fn inventory(
        &self,
        selection: &Selection,
        format: InventoryFormat,
        sink: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<u64, FleetError> {
        /// Rows are formatted here, then written out past this size.
        const CHUNK: usize = 32 * 1024;
        let sql = "SELECT u.serial, u.uid, u.cert_der, u.job_id, u.appliance_id FROM units u \
                   WHERE u.result = 'passed' AND u.cert_der IS NOT NULL AND ";
        let (sql, param): (String, Box<dyn tokio_postgres::types::ToSql + Sync + Send>) =
            match selection {
                Selection::Job(j) => (
                    format!("{sql} u.job_id = $1 ORDER BY u.serial"),
                    Box::new(j.to_vec()),
                ),
                Selection::Product(p) => (
                    format!("{sql} u.product = $1 ORDER BY u.serial"),
                    Box::new(p.clone()),
                ),
            };
        let werr = |e: std::io::Error| FleetError::Write {
            path: "the inventory output".to_owned(),
            detail: e.to_string(),
        };
        let stream = self
            .client
            .query_raw(
                &sql,
                std::iter::once(param.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync)),
            )
            .await?;
        pin_mut!(stream);
        let mut n = 0u64;
        let mut chunk: Vec<u8> = Vec::with_capacity(2 * CHUNK);
        let out = &mut chunk;
        match format {
            InventoryFormat::Csv => {
                writeln!(out, "serial,uid,certificate_pem,job_id,appliance_id").map_err(werr)?;
            }
            InventoryFormat::Json => write!(out, "[").map_err(werr)?,
        }
        while let Some(r) = stream.try_next().await? {
            let serial: String = r.get(0);
            let uid: Vec<u8> = r.get(1);
            let der: Vec<u8> = r.get(2);
            let job: Vec<u8> = r.get(3);
            let appliance: String = r.get(4);
            let row = Row {
                serial: &serial,
                uid: hex::encode(uid),
                certificate_pem: pem(&der),
                job_id: hex::encode(job),
                appliance_id: &appliance,
            };
            match format {
                InventoryFormat::Csv => writeln!(
                    out,
                    "{},{},{},{},{}",
                    csv_field(row.serial),
                    csv_field(&row.uid),
                    csv_field(&row.certificate_pem),
                    csv_field(&row.job_id),
                    csv_field(row.appliance_id)
                )
                .map_err(werr)?,
                InventoryFormat::Json => {
                    if n > 0 {
                        write!(out, ",").map_err(werr)?;
                    }
                    writeln!(out).map_err(werr)?;
                    serde_json::to_writer(&mut *out, &row)
                        .map_err(|e| werr(std::io::Error::other(e)))?;
                }
            }
            n += 1;
            if out.len() >= CHUNK {
                sink.write_all(out).await.map_err(werr)?;
                out.clear();
            }
        }
        if format == InventoryFormat::Json {
            writeln!(out, "\n]").map_err(werr)?;
        }
        sink.write_all(out).await.map_err(werr)?;
        sink.flush().await.map_err(werr)?;
        Ok(n)
    }
}

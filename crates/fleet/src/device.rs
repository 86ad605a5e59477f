//! `flashgate fleet device`: "this device showed up with certificate X; is
//! it ours, and where and when was it made?"

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::error::FleetError;
use crate::{tree_store, Fleet};

/// What to look a device up by.
#[derive(Debug, Clone)]
pub enum DeviceQuery {
    /// Its UID as read from the chip.
    Uid(Vec<u8>),
    /// Its serial number.
    Serial(String),
    /// Its certificate (DER).
    Certificate(Vec<u8>),
    /// The SHA-256 of its certificate.
    CertificateHash([u8; 32]),
}

/// One record of the device in a stored log.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceRecord {
    /// The appliance that made it.
    pub appliance_id: String,
    /// The appliance's CM.
    pub cm: String,
    /// The job, hex.
    pub job_id: String,
    /// The product.
    pub product: String,
    /// Who started the run (the certificate subject on a station).
    pub operator: Option<String>,
    /// `passed`, `failed` or `aborted`.
    pub result: String,
    /// The failing stage.
    pub stage: Option<String>,
    /// When the record was written (Unix ms).
    pub time_ms: i64,
    /// The UID, hex.
    pub uid: Option<String>,
    /// The serial.
    pub serial: Option<String>,
    /// SHA-256 of the certificate, hex.
    pub cert_sha256: Option<String>,
    /// The quota counter value.
    pub counter: i64,
    /// The inclusion proof of the record against the stored signed
    /// checkpoint, as `flashgate audit check-proof` reads it.
    pub proof: flashgate_audit::InclusionProof,
    /// The appliance's enrollment record (for `check-proof --appliance`).
    #[serde(skip)]
    pub enrollment: Vec<u8>,
}

/// The answer.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum DeviceAnswer {
    /// In the logs: every record of it, newest first.
    Ours {
        /// The records.
        records: Vec<DeviceRecord>,
    },
    /// A certificate from no job CA this fleet knows.
    NotOurs {
        /// Why.
        reason: String,
    },
    /// A certificate signed by a known job CA that no log records: it was
    /// issued outside the audit log.
    IssuedOutsideLog {
        /// The job whose CA signed it, hex.
        job_id: String,
        /// Why this matters.
        reason: String,
    },
    /// A UID or serial in no stored log.
    Unknown {
        /// Why.
        reason: String,
    },
}

impl Fleet {
    /// Looks a device up.
    pub async fn device(&self, query: &DeviceQuery) -> Result<DeviceAnswer, FleetError> {
        let sql = "SELECT u.log_id, u.seq, u.appliance_id, a.cm, u.job_id, u.product, r.operator, u.result, u.stage, \
                     u.time_ms, u.uid, u.serial, u.cert_sha256, u.counter, u.record, a.enrollment \
                   FROM units u JOIN appliances a USING (appliance_id) LEFT JOIN runs r ON r.run_id = u.run_id \
                   WHERE ";
        let rows = match query {
            DeviceQuery::Uid(uid) => {
                self.client
                    .query(&format!("{sql} u.uid = $1 ORDER BY u.time_ms DESC"), &[uid])
                    .await?
            }
            DeviceQuery::Serial(s) => {
                self.client
                    .query(
                        &format!("{sql} u.serial = $1 ORDER BY u.time_ms DESC"),
                        &[s],
                    )
                    .await?
            }
            DeviceQuery::Certificate(der) => {
                let h: [u8; 32] = Sha256::digest(der).into();
                self.client
                    .query(
                        &format!("{sql} u.cert_sha256 = $1 ORDER BY u.time_ms DESC"),
                        &[&h.as_slice()],
                    )
                    .await?
            }
            DeviceQuery::CertificateHash(h) => {
                self.client
                    .query(
                        &format!("{sql} u.cert_sha256 = $1 ORDER BY u.time_ms DESC"),
                        &[&h.as_slice()],
                    )
                    .await?
            }
        };
        if rows.is_empty() {
            return match query {
                DeviceQuery::Certificate(der) => self.not_in_log(der).await,
                DeviceQuery::Uid(uid) => Ok(DeviceAnswer::Unknown {
                    reason: format!("no stored log records UID {}", hex::encode(uid)),
                }),
                DeviceQuery::Serial(s) => Ok(DeviceAnswer::Unknown {
                    reason: format!("no stored log records serial {s}"),
                }),
                DeviceQuery::CertificateHash(h) => Ok(DeviceAnswer::Unknown {
                    reason: format!(
                        "no stored log records a certificate with SHA-256 {}; give the certificate itself (--cert) to learn who issued it",
                        hex::encode(h)
                    ),
                }),
            };
        }
        let mut records = Vec::with_capacity(rows.len());
        for r in rows {
            let log_id: i32 = r.get(0);
            let seq: i64 = r.get(1);
            let seq = u64::try_from(seq)
                .map_err(|_| FleetError::Inconsistent("a negative record number".to_owned()))?;
            let log = self
                .client
                .query_one(
                    "SELECT size, checkpoint FROM logs WHERE log_id = $1",
                    &[&log_id],
                )
                .await?;
            let size: i64 = log.get(0);
            let size = u64::try_from(size).unwrap_or(0);
            let checkpoint: Option<Vec<u8>> = log.get(1);
            let checkpoint = checkpoint.ok_or_else(|| {
                FleetError::Inconsistent(format!("log {log_id} has records but no checkpoint"))
            })?;
            let hashes = tree_store::inclusion_proof(&self.client, log_id, seq, size).await?;
            let job: Vec<u8> = r.get(4);
            records.push(DeviceRecord {
                appliance_id: r.get(2),
                cm: r.get(3),
                job_id: hex::encode(job),
                product: r.get(5),
                operator: r.get(6),
                result: r.get(7),
                stage: r.get(8),
                time_ms: r.get(9),
                uid: r.get::<_, Option<Vec<u8>>>(10).map(hex::encode),
                serial: r.get(11),
                cert_sha256: r.get::<_, Option<Vec<u8>>>(12).map(hex::encode),
                counter: r.get(13),
                proof: flashgate_audit::InclusionProof {
                    format: flashgate_audit::prove::PROOF_FORMAT.to_owned(),
                    record: r.get(14),
                    index: seq,
                    tree_size: size,
                    hashes,
                    checkpoint,
                },
                enrollment: r.get(15),
            });
        }
        Ok(DeviceAnswer::Ours { records })
    }

    /// A certificate no record names: signed by a known job CA, or not.
    async fn not_in_log(&self, der: &[u8]) -> Result<DeviceAnswer, FleetError> {
        use x509_cert::der::{Decode, Encode};
        let cert = x509_cert::Certificate::from_der(der).map_err(|e| {
            FleetError::Usage(format!(
                "the certificate given is not an X.509 certificate in DER or PEM: {e}"
            ))
        })?;
        let issuer = cert.tbs_certificate().issuer().to_string();
        let tbs = cert
            .tbs_certificate()
            .to_der()
            .map_err(|e| FleetError::Usage(format!("the certificate does not re-encode: {e}")))?;
        let sig = cert.signature().raw_bytes();
        for r in self
            .client
            .query(
                "SELECT job_id, job_ca_cert FROM jobs WHERE job_ca_cert IS NOT NULL",
                &[],
            )
            .await?
        {
            let job: Vec<u8> = r.get(0);
            let ca_der: Vec<u8> = r.get(1);
            let Ok(ca) = x509_cert::Certificate::from_der(&ca_der) else {
                continue;
            };
            if ca.tbs_certificate().subject() != cert.tbs_certificate().issuer() {
                continue;
            }
            let Some(point) = ca
                .tbs_certificate()
                .subject_public_key_info()
                .subject_public_key
                .as_bytes()
            else {
                continue;
            };
            let Ok(key) = p256::ecdsa::VerifyingKey::from_sec1_bytes(point) else {
                continue;
            };
            let Ok(sig) = p256::ecdsa::DerSignature::from_bytes(sig) else {
                continue;
            };
            if p256::ecdsa::signature::Verifier::verify(&key, &tbs, &sig).is_ok() {
                return Ok(DeviceAnswer::IssuedOutsideLog {
                    job_id: hex::encode(&job),
                    reason: format!(
                        "the certificate was signed by the CA of job {}, but no stored log records it: it was issued outside the audit log (a copied job CA key, or an appliance that did not log the unit); treat the device as counterfeit and the job CA as compromised",
                        hex::encode(&job)
                    ),
                });
            }
        }
        Ok(DeviceAnswer::NotOurs {
            reason: format!(
                "the certificate's issuer ({issuer}) is not the CA of any job this fleet database knows; the device was not provisioned by an appliance that reports here"
            ),
        })
    }
}

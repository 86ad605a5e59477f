//! `flashgate fleet report`: per product, CM, appliance and job, from the
//! small tables ingest keeps (`jobs`, `unit_counts`, `logs`, `anomalies`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::FleetError;
use crate::{now_ms, Fleet};

/// One job's line.
#[derive(Debug, Clone, Serialize)]
pub struct JobLine {
    /// The product.
    pub product: String,
    /// The CM.
    pub cm: String,
    /// The appliance.
    pub appliance_id: String,
    /// The job, hex.
    pub job_id: String,
    /// The job's security version.
    pub security_version: i64,
    /// Units passed.
    pub passed: i64,
    /// Units failed, by failing stage.
    pub failed: BTreeMap<String, i64>,
    /// Counter values handed out whose unit never got a record.
    pub aborted: i64,
    /// Passed over passed and failed, in percent (`null` before any unit).
    pub yield_percent: Option<f64>,
    /// The job's quota.
    pub quota: i64,
    /// Counter values reserved (the quota used).
    pub quota_used: i64,
    /// What is left.
    pub quota_left: i64,
    /// Size of the appliance log's stored signed checkpoint.
    pub last_checkpoint_size: i64,
    /// Time of the last record it covers (Unix ms).
    pub last_checkpoint_ms: Option<i64>,
    /// Its age in seconds when the report was made.
    pub last_checkpoint_age_seconds: Option<i64>,
    /// Open anomalies about the job or its appliance.
    pub open_anomalies: i64,
}

/// Quota across the jobs of one product and security version.
#[derive(Debug, Clone, Serialize)]
pub struct QuotaLine {
    /// The product.
    pub product: String,
    /// The security version.
    pub security_version: i64,
    /// Jobs issued.
    pub jobs: i64,
    /// Sum of their quotas.
    pub quota: i64,
    /// Sum of the values they reserved.
    pub used: i64,
}

/// One open anomaly.
#[derive(Debug, Clone, Serialize)]
pub struct AnomalyLine {
    /// Its kind (docs/FLEET.md lists them).
    pub kind: String,
    /// What it is about.
    pub subject: String,
    /// A sentence.
    pub detail: String,
    /// When it was first found (Unix ms).
    pub found_ms: i64,
}

/// An appliance that has sent nothing for longer than the setting.
#[derive(Debug, Clone, Serialize)]
pub struct SilentLine {
    /// The appliance.
    pub appliance_id: String,
    /// Its CM.
    pub cm: String,
    /// Time of its newest stored record (Unix ms).
    pub last_record_ms: Option<i64>,
    /// Seconds since.
    pub silent_seconds: i64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    /// `flashgate-fleet-report/1`.
    pub format: &'static str,
    /// When it was made (Unix ms).
    pub generated_ms: i64,
    /// The silence threshold used.
    pub silent_after_seconds: u64,
    /// One line per job, by product, CM, appliance.
    pub jobs: Vec<JobLine>,
    /// Quota by product and security version.
    pub quotas: Vec<QuotaLine>,
    /// Silent appliances.
    pub silent: Vec<SilentLine>,
    /// Open anomalies (at most 1,000, newest first).
    pub anomalies: Vec<AnomalyLine>,
    /// Open anomalies in all.
    pub open_anomalies: i64,
}

impl Fleet {
    /// The report, optionally for one product.
    pub async fn report(&self, product: Option<&str>) -> Result<FleetReport, FleetError> {
        let now = now_ms();
        let silent_after = self.silent_after().await?;
        let mut counts: BTreeMap<Vec<u8>, (i64, BTreeMap<String, i64>, i64)> = BTreeMap::new();
        for r in self
            .client
            .query(
                "SELECT c.job_id, c.outcome, c.n FROM unit_counts c JOIN jobs j USING (job_id) WHERE $1::text IS NULL OR j.product = $1",
                &[&product],
            )
            .await?
        {
            let e = counts.entry(r.get(0)).or_default();
            let outcome: String = r.get(1);
            let n: i64 = r.get(2);
            match outcome.as_str() {
                "passed" => e.0 += n,
                "aborted" => e.2 += n,
                _ => *e.1.entry(outcome).or_default() += n,
            }
        }
        let rows = self
            .client
            .query(
                "SELECT j.product, a.cm, j.appliance_id, j.job_id, j.security_version, j.quota, j.reserved, \
                   coalesce(l.size, 0), l.checkpoint_ms, \
                   (SELECT count(*) FROM anomalies x WHERE x.open AND (x.job_id = j.job_id OR (x.job_id IS NULL AND x.appliance_id = j.appliance_id))) \
                 FROM jobs j JOIN appliances a USING (appliance_id) \
                 LEFT JOIN LATERAL (SELECT size, checkpoint_ms FROM logs WHERE appliance_id = j.appliance_id ORDER BY segment DESC LIMIT 1) l ON true \
                 WHERE $1::text IS NULL OR j.product = $1 \
                 ORDER BY j.product, a.cm, j.appliance_id, j.job_id",
                &[&product],
            )
            .await?;
        let mut jobs = Vec::with_capacity(rows.len());
        for r in rows {
            let job_id: Vec<u8> = r.get(3);
            let (passed, failed, aborted) = counts.remove(&job_id).unwrap_or_default();
            let failed_total: i64 = failed.values().sum();
            let quota: i64 = r.get(5);
            let used: i64 = r.get(6);
            let cp_ms: Option<i64> = r.get(8);
            #[allow(clippy::cast_precision_loss)]
            let yield_percent = (passed + failed_total > 0)
                .then(|| passed as f64 * 100.0 / (passed + failed_total) as f64);
            jobs.push(JobLine {
                product: r.get(0),
                cm: r.get(1),
                appliance_id: r.get(2),
                job_id: hex::encode(&job_id),
                security_version: r.get(4),
                passed,
                failed,
                aborted,
                yield_percent,
                quota,
                quota_used: used,
                quota_left: (quota - used).max(0),
                last_checkpoint_size: r.get(7),
                last_checkpoint_ms: cp_ms,
                last_checkpoint_age_seconds: cp_ms.map(|t| (now - t) / 1000),
                open_anomalies: r.get(9),
            });
        }
        let quotas = self
            .client
            .query(
                "SELECT product, security_version, count(*), sum(quota)::bigint, sum(reserved)::bigint FROM jobs \
                 WHERE $1::text IS NULL OR product = $1 GROUP BY 1, 2 ORDER BY 1, 2",
                &[&product],
            )
            .await?
            .iter()
            .map(|r| QuotaLine {
                product: r.get(0),
                security_version: r.get(1),
                jobs: r.get(2),
                quota: r.get(3),
                used: r.get(4),
            })
            .collect();
        let threshold = i64::try_from(silent_after.saturating_mul(1000)).unwrap_or(i64::MAX);
        let silent = self
            .client
            .query(
                "SELECT a.appliance_id, a.cm, max(l.checkpoint_ms), $1::bigint - coalesce(max(l.checkpoint_ms), a.first_seen_ms) \
                 FROM appliances a LEFT JOIN logs l USING (appliance_id) GROUP BY a.appliance_id, a.cm, a.first_seen_ms \
                 HAVING $1::bigint - coalesce(max(l.checkpoint_ms), a.first_seen_ms) > $2 ORDER BY 1",
                &[&now, &threshold],
            )
            .await?
            .iter()
            .map(|r| SilentLine {
                appliance_id: r.get(0),
                cm: r.get(1),
                last_record_ms: r.get(2),
                silent_seconds: r.get::<_, i64>(3) / 1000,
            })
            .collect();
        let anomalies = self
            .client
            .query(
                "SELECT kind, subject, detail, found_ms FROM anomalies WHERE open AND ($1::text IS NULL OR product = $1 OR product IS NULL) \
                 ORDER BY found_ms DESC, anomaly_id DESC LIMIT 1000",
                &[&product],
            )
            .await?
            .iter()
            .map(|r| AnomalyLine {
                kind: r.get(0),
                subject: r.get(1),
                detail: r.get(2),
                found_ms: r.get(3),
            })
            .collect();
        let open_anomalies: i64 = self
            .client
            .query_one("SELECT count(*) FROM anomalies WHERE open", &[])
            .await?
            .get(0);
        Ok(FleetReport {
            format: "flashgate-fleet-report/1",
            generated_ms: now,
            silent_after_seconds: silent_after,
            jobs,
            quotas,
            silent,
            anomalies,
            open_anomalies,
        })
    }
}

impl std::fmt::Display for FleetReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<14} {:<10} {:<18} {:<10} {:>7} {:>7} {:>7} {:>9} {:>9} {:>8} {:>9}",
            "product",
            "cm",
            "appliance",
            "job",
            "passed",
            "failed",
            "yield",
            "used",
            "left",
            "ckpt",
            "ckpt age"
        )?;
        for j in &self.jobs {
            let failed: i64 = j.failed.values().sum();
            writeln!(
                f,
                "{:<14} {:<10} {:<18} {:<10} {:>7} {:>7} {:>7} {:>9} {:>9} {:>8} {:>9}",
                j.product,
                j.cm,
                short(&j.appliance_id, 18),
                short(&j.job_id, 10),
                j.passed,
                failed,
                j.yield_percent
                    .map_or("-".to_owned(), |y| format!("{y:.1}%")),
                j.quota_used,
                j.quota_left,
                j.last_checkpoint_size,
                j.last_checkpoint_age_seconds
                    .map_or("-".to_owned(), |s| format!("{s}s")),
            )?;
            for (stage, n) in &j.failed {
                writeln!(f, "{:<14}   failed at {stage}: {n}", "")?;
            }
        }
        for q in &self.quotas {
            writeln!(
                f,
                "quota {} security version {}: {} used of {} in {} job(s)",
                q.product, q.security_version, q.used, q.quota, q.jobs
            )?;
        }
        for s in &self.silent {
            writeln!(
                f,
                "silent: appliance {} (CM {}) has sent nothing for {} s",
                s.appliance_id, s.cm, s.silent_seconds
            )?;
        }
        writeln!(f, "open anomalies: {}", self.open_anomalies)?;
        for a in &self.anomalies {
            writeln!(f, "  {}: {}", a.kind, a.detail)?;
        }
        Ok(())
    }
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

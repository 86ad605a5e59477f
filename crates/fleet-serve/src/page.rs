//! The report as one HTML page, rendered on the server: no script, every
//! value escaped (products, CM names and anomaly texts come from bundles).

use std::fmt::Write as _;

use flashgate_fleet::report::FleetReport;

use crate::FleetCaller;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn age(seconds: Option<i64>) -> String {
    match seconds {
        None => "-".to_owned(),
        Some(s) if s < 120 => format!("{s} s"),
        Some(s) if s < 7200 => format!("{} min", s / 60),
        Some(s) if s < 172_800 => format!("{} h", s / 3600),
        Some(s) => format!("{} d", s / 86_400),
    }
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#1d2430}\
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{padding:.3em .7em;border-bottom:1px solid #d8dde6;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.bad{color:#a11}h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}\
code{font-size:12px}";

/// The page for `caller`.
pub(crate) fn render(r: &FleetReport, caller: &FleetCaller) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>flashgate fleet</title><style>{STYLE}</style></head><body>\
         <h1>flashgate fleet</h1><p>Signed in as {} ({}). {} open anomalies. JSON: <code>/api/v1/report</code>.</p>",
        esc(&caller.common_name),
        caller.role.as_str(),
        r.open_anomalies
    );
    h.push_str("<h2>Jobs</h2><table data-testid=\"jobs\"><tr><th>product</th><th>CM</th><th>appliance</th><th>job</th><th>passed</th><th>failed</th><th>yield</th><th>quota used / left</th><th>last checkpoint</th><th>anomalies</th></tr>");
    for j in &r.jobs {
        let failed: i64 = j.failed.values().sum();
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{} / {}</td><td>{} records, {} ago</td><td class=\"n{}\">{}</td></tr>",
            esc(&j.product),
            esc(&j.cm),
            esc(&j.appliance_id),
            esc(&j.job_id),
            j.passed,
            failed,
            j.yield_percent.map_or_else(|| "-".to_owned(), |y| format!("{y:.1} %")),
            j.quota_used,
            j.quota_left,
            j.last_checkpoint_size,
            age(j.last_checkpoint_age_seconds),
            if j.open_anomalies > 0 { " bad" } else { "" },
            j.open_anomalies
        );
    }
    h.push_str("</table><h2>Quota by product and security version</h2><table><tr><th>product</th><th>security version</th><th>jobs</th><th>quota</th><th>used</th></tr>");
    for q in &r.quotas {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n{}\">{}</td></tr>",
            esc(&q.product),
            q.security_version,
            q.jobs,
            q.quota,
            if q.used > q.quota { " bad" } else { "" },
            q.used
        );
    }
    h.push_str("</table>");
    if !r.silent.is_empty() {
        h.push_str("<h2>Silent appliances</h2><table><tr><th>appliance</th><th>CM</th><th>silent for</th></tr>");
        for s in &r.silent {
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td>{}</td><td class=\"bad\">{}</td></tr>",
                esc(&s.appliance_id),
                esc(&s.cm),
                age(Some(s.silent_seconds))
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Open anomalies</h2><table data-testid=\"anomalies\"><tr><th>kind</th><th>about</th><th>what</th></tr>");
    for a in &r.anomalies {
        let _ = write!(
            h,
            "<tr><td class=\"bad\">{}</td><td><code>{}</code></td><td>{}</td></tr>",
            esc(&a.kind),
            esc(&a.subject),
            esc(&a.detail)
        );
    }
    h.push_str("</table></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn markup_from_a_bundle_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}

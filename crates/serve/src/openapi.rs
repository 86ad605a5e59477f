//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "flashgate station API",
        description = "The station service: jobs, fixtures, runs and their live events, units, audit. Every connection is TLS 1.3 with a client certificate; what a caller may do follows from its role (docs/API.md).",
    ),
    paths(
        crate::console::index,
        crate::console::script,
        crate::console::style,
        crate::api::openapi,
        crate::api::metrics,
        crate::api::station::whoami,
        crate::api::station::status,
        crate::api::station::revoke,
        crate::api::jobs::list,
        crate::api::jobs::upload,
        crate::api::jobs::inspect,
        crate::api::jobs::remove,
        crate::api::fixtures::list,
        crate::api::fixtures::define,
        crate::api::fixtures::remove,
        crate::api::runs::list,
        crate::api::runs::start,
        crate::api::runs::status,
        crate::api::runs::stop,
        crate::api::runs::summary,
        crate::api::events::stream,
        crate::api::units::lookup,
        crate::api::audit::checkpoints,
        crate::api::audit::bundle,
        crate::api::audit::reset,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail)),
    tags(
        (name = "station", description = "Who is asking; the station's state; metrics"),
        (name = "jobs", description = "Protected jobs imported into the HSM"),
        (name = "fixtures", description = "Named sets of programmer channels"),
        (name = "runs", description = "Production runs and their live events"),
        (name = "units", description = "Units as the audit log records them"),
        (name = "audit", description = "Checkpoints, bundles, recovery"),
        (name = "console", description = "The operator console (HTML, script, style)"),
    )
)]
struct ApiDoc;

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document and the role table name the same endpoints: an
    /// endpoint added to one and not the other fails here.
    #[test]
    fn every_documented_endpoint_has_a_role_row_and_back() {
        let doc = document();
        let mut documented = Vec::new();
        for (path, item) in &doc.paths.paths {
            for (method, op) in [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PUT", &item.put),
                ("DELETE", &item.delete),
                ("PATCH", &item.patch),
            ] {
                if op.is_some() {
                    documented.push(format!("{method} {path}"));
                }
            }
        }
        documented.sort();
        let mut table: Vec<String> = crate::endpoints::ENDPOINTS
            .iter()
            .map(|e| format!("{} {}", e.method, e.path))
            .collect();
        table.sort();
        assert_eq!(documented, table);
        assert!(serde_json::to_string(&doc)
            .unwrap_or_default()
            .contains("\"openapi\":\"3.1.0\""));
    }
}

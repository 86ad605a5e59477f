//! The operator console: one page, its script and its style, compiled into
//! the binary (nothing is fetched from anywhere else at run time).

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// Nothing on the page may come from elsewhere, nor run inline.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console page.
#[utoipa::path(get, path = "/", tag = "console",
    responses((status = 200, description = "The console page", content_type = "text/html")))]
pub(crate) async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
}

/// The console's script.
#[utoipa::path(get, path = "/console.js", tag = "console",
    responses((status = 200, description = "The console script", content_type = "text/javascript")))]
pub(crate) async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
}

/// The console's style.
#[utoipa::path(get, path = "/console.css", tag = "console",
    responses((status = 200, description = "The console style", content_type = "text/css")))]
pub(crate) async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLE,
    )
}

//! The page: plain HTML, CSS and ES modules under `assets/web/`, embedded in the binary so that
//! `chargpt serve` works from any directory with no network and no build step. uPlot (MIT, its
//! licence beside it in `assets/web/vendor/`) draws the curves.

use super::error::ApiError;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// (path, content type, contents) of every file the page is made of.
const FILES: &[(&str, &str, &str)] = &[
    ("/", HTML, include_str!("../../assets/web/index.html")),
    (
        "/style.css",
        CSS,
        include_str!("../../assets/web/style.css"),
    ),
    ("/app.js", JS, include_str!("../../assets/web/app.js")),
    ("/api.js", JS, include_str!("../../assets/web/api.js")),
    ("/charts.js", JS, include_str!("../../assets/web/charts.js")),
    (
        "/views/util.js",
        JS,
        include_str!("../../assets/web/views/util.js"),
    ),
    (
        "/views/runs.js",
        JS,
        include_str!("../../assets/web/views/runs.js"),
    ),
    (
        "/views/training.js",
        JS,
        include_str!("../../assets/web/views/training.js"),
    ),
    (
        "/views/compare.js",
        JS,
        include_str!("../../assets/web/views/compare.js"),
    ),
    (
        "/views/sample.js",
        JS,
        include_str!("../../assets/web/views/sample.js"),
    ),
    (
        "/vendor/uPlot.esm.js",
        JS,
        include_str!("../../assets/web/vendor/uPlot.esm.js"),
    ),
    (
        "/vendor/uPlot.min.css",
        CSS,
        include_str!("../../assets/web/vendor/uPlot.min.css"),
    ),
    (
        "/vendor/uPlot-LICENSE",
        TEXT,
        include_str!("../../assets/web/vendor/uPlot-LICENSE"),
    ),
];

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Only this server's own files run in the page, and no other site may frame it.
const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'";

/// Serves the page's files (the router's fallback: every path that is not an API route).
pub async fn serve(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    let Some((_, kind, body)) = FILES.iter().find(|(p, _, _)| *p == path) else {
        return ApiError::not_found(format!(
            "no such page or API route: {path}; the API is under /api (see the README's table)"
        ))
        .into_response();
    };
    if method != Method::GET && method != Method::HEAD {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "the page's files are read with GET",
        )
        .into_response();
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, *kind),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        *body,
    )
        .into_response()
}

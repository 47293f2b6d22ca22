//! The page: plain HTML, CSS and ES modules under `assets/web/`, embedded in the binary so that
//! `chargpt serve` works from any directory with no network and no build step. uPlot (MIT, its
//! licence beside it in `assets/web/vendor/`) draws the curves. A few of the project's own files
//! (the README, the reference and fast functions the views link to) are embedded too, so that
//! a learner can read them from the page.

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
    (
        "/api-error.js",
        JS,
        include_str!("../../assets/web/api-error.js"),
    ),
    ("/server.js", JS, include_str!("../../assets/web/server.js")),
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
        "/views/look.js",
        JS,
        include_str!("../../assets/web/views/look.js"),
    ),
    (
        "/views/next.js",
        JS,
        include_str!("../../assets/web/views/next.js"),
    ),
    (
        "/views/attention.js",
        JS,
        include_str!("../../assets/web/views/attention.js"),
    ),
    (
        "/views/surprise.js",
        JS,
        include_str!("../../assets/web/views/surprise.js"),
    ),
    (
        "/views/embeddings.js",
        JS,
        include_str!("../../assets/web/views/embeddings.js"),
    ),
    (
        "/views/head.js",
        JS,
        include_str!("../../assets/web/views/head.js"),
    ),
    (
        "/views/model.js",
        JS,
        include_str!("../../assets/web/views/model.js"),
    ),
    (
        "/views/replay.js",
        JS,
        include_str!("../../assets/web/views/replay.js"),
    ),
    (
        "/read.html",
        HTML,
        include_str!("../../assets/web/read.html"),
    ),
    ("/read.js", JS, include_str!("../../assets/web/read.js")),
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

/// The files of the project the page links to (the README, the paragraphs of docs/ that explain
/// each step of the head view, the functions that compute it), served under `/source/` for
/// `read.html` to show.
const SOURCES: &[(&str, &str)] = &[
    ("README.md", include_str!("../../README.md")),
    (
        "docs/beyond-the-lecture.md",
        include_str!("../../docs/beyond-the-lecture.md"),
    ),
    (
        "docs/how-it-works.md",
        include_str!("../../docs/how-it-works.md"),
    ),
    ("src/config.rs", include_str!("../config.rs")),
    ("src/inspect/mod.rs", include_str!("../inspect/mod.rs")),
    (
        "src/kernels/attention/mod.rs",
        include_str!("../kernels/attention/mod.rs"),
    ),
    (
        "src/kernels/layernorm.rs",
        include_str!("../kernels/layernorm.rs"),
    ),
    (
        "src/kernels/matmul.rs",
        include_str!("../kernels/matmul.rs"),
    ),
    ("src/kernels/mod.rs", include_str!("../kernels/mod.rs")),
    (
        "src/kernels/rmsnorm.rs",
        include_str!("../kernels/rmsnorm.rs"),
    ),
    ("src/kernels/rope.rs", include_str!("../kernels/rope.rs")),
    ("src/model/forward.rs", include_str!("../model/forward.rs")),
    (
        "src/reference/layers.rs",
        include_str!("../reference/layers.rs"),
    ),
    (
        "src/reference/model.rs",
        include_str!("../reference/model.rs"),
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
    let source = path
        .strip_prefix("/source/")
        .and_then(|file| SOURCES.iter().find(|(f, _)| *f == file))
        .map(|(_, text)| (TEXT, *text));
    let found = FILES
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, kind, body)| (*kind, *body))
        .or(source);
    let Some((kind, body)) = found else {
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
            (header::CONTENT_TYPE, kind),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `link('FILE', 'FIND', ...)` of the head view names a file the server embeds, and
    /// text that file contains (read.html opens the file there), so that no link goes dead when
    /// a function is renamed.
    #[test]
    fn every_link_of_the_head_view_finds_its_text() {
        let head = include_str!("../../assets/web/views/head.js");
        let mut links = 0;
        for call in head.split("link('").skip(1) {
            let mut parts = call.splitn(3, "', '");
            let (Some(file), Some(find)) = (parts.next(), parts.next()) else {
                continue;
            };
            if file.contains('$') || file.contains('(') {
                continue; // the definition of link() itself
            }
            let text = SOURCES
                .iter()
                .find(|(f, _)| *f == file)
                .unwrap_or_else(|| panic!("{file} is not among the files served under /source/"))
                .1;
            let find = find.replace("\\'", "'");
            assert!(text.contains(&find), "{file} lacks {find:?}");
            links += 1;
        }
        assert!(links >= 30, "{links} links found");
    }
}

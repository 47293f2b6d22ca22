//! What guards the server, as Jupyter's does: the page can start work and write files, so a
//! request must prove it comes from someone who saw the token `chargpt serve` printed, and from
//! this page rather than another site's.
//!
//! In order, for every request:
//! 1. **Host**: the `Host` header must be `localhost` or an IP address, with this server's port.
//!    A DNS-rebinding attack reaches the server under the attacker's own domain name, so it fails
//!    here.
//! 2. **Token**: `?token=...`, `Authorization: Bearer ...`, or the cookie the page gets when it is
//!    opened with `?token=` (HttpOnly, SameSite=Strict); else 401.
//! 3. **Origin**: a POST (the only requests that change anything) must carry the `Origin` of this
//!    server, as browsers send it; a request with no Origin is accepted only when the token came
//!    in the URL or the header (a script or `curl`, not a browser's cookie). This defeats other
//!    pages the user has open, which could make the browser send the cookie.

use super::error::ApiError;
use super::AppState;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The cookie the page keeps the token in (one per port, so two servers do not clash).
pub fn cookie_name(port: u16) -> String {
    format!("chargpt-token-{port}")
}

/// How a request carried the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carried {
    Query,
    Header,
    Cookie,
}

/// Equal strings in a time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether `host` (a Host header) names this server: `localhost` or an IP literal, with `port`.
pub fn host_names_us(host: &str, port: u16) -> bool {
    let (name, given_port) = match host.rsplit_once(':') {
        // `[::1]:8765`, `127.0.0.1:8765`, `localhost:8765`; a bare `::1` has colons but no port.
        Some((name, p)) if !name.is_empty() && (!name.contains(':') || name.ends_with(']')) => {
            (name, p.parse::<u16>().ok())
        }
        _ => (host, Some(80)),
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let is_ip = name.parse::<std::net::IpAddr>().is_ok();
    given_port == Some(port) && (is_ip || name.eq_ignore_ascii_case("localhost"))
}

fn query_token(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let value = pair.strip_prefix("token=")?;
        Some(value.to_string())
    })
}

fn cookie_token(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.to_string())
        })
}

fn bearer_token(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(|t| t.trim().to_string())
}

/// The middleware that runs the three checks above before any handler.
pub async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !host_names_us(host, state.port) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "the Host header {host:?} does not name this server; open http://127.0.0.1:{}/ with the token",
                state.port
            ),
        )
        .into_response();
    }
    let cookie = cookie_name(state.port);
    let offered = [
        (Carried::Query, query_token(request.uri().query())),
        (Carried::Header, bearer_token(headers)),
        (Carried::Cookie, cookie_token(headers, &cookie)),
    ];
    let carried = offered.iter().find_map(|(how, token)| {
        token
            .as_deref()
            .is_some_and(|t| same_secret(t, &state.token))
            .then_some(*how)
    });
    let Some(carried) = carried else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token; open the URL that `chargpt serve` printed (it ends in ?token=...), or send the header Authorization: Bearer TOKEN",
        )
        .into_response();
    };
    if request.method() == Method::POST {
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        let ours = format!("http://{host}");
        let allowed = match origin {
            Some(o) => o == ours,
            None => carried != Carried::Cookie,
        };
        if !allowed {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "cross-origin request refused: Origin {} is not {ours}; only this server's own page may change runs",
                    origin.unwrap_or("(none)")
                ),
            )
            .into_response();
        }
    }
    // Opening the page with ?token= stores the token in a cookie and takes it out of the
    // address bar (and so out of the history and of links copied from it).
    if carried == Carried::Query && request.method() == Method::GET && request.uri().path() == "/" {
        let set = format!(
            "{cookie}={}; HttpOnly; SameSite=Strict; Path=/",
            state.token
        );
        return (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, "/".to_string()),
                (header::SET_COOKIE, set),
            ],
        )
            .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_names_and_ip_literals_with_our_port_pass() {
        for ok in [
            "127.0.0.1:8765",
            "localhost:8765",
            "LOCALHOST:8765",
            "[::1]:8765",
            "192.168.1.5:8765",
        ] {
            assert!(host_names_us(ok, 8765), "{ok}");
        }
        for bad in [
            "evil.example:8765",
            "127.0.0.1:8766",
            "127.0.0.1",
            "",
            "localhost.evil.example:8765",
            "[::1]",
        ] {
            assert!(!host_names_us(bad, 8765), "{bad}");
        }
        assert!(host_names_us("localhost", 80));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
    }
}

//! Who may reach the API, from where, and how slowly: a middleware in front
//! of every route.
//!
//! - **`Host`** must name a loopback host (`localhost`, `127.0.0.1`, `[::1]`),
//!   the listen address, or one of `server.allowed_hosts`, whenever the daemon
//!   listens on loopback or that list is set: a web page that rebinds its own
//!   DNS name to 127.0.0.1 still sends its own name, so it cannot read the
//!   tokenless loopback daemon's jobs. 421 otherwise.
//! - **`Origin`** (sent by browsers on cross-origin requests) must be one of
//!   `server.allowed_origins`, or the daemon's own origin; 403 otherwise.
//!   Allowed origins get CORS headers, preflights included.
//! - **JSON bodies** must say `Content-Type: application/json`: an HTML form
//!   can post `text/plain` across sites without a preflight. 415 otherwise.
//! - **Bodies** must arrive within `server.body_read_timeout` (408), and fit
//!   `server.max_body_bytes` (413). (Headers have their own timeout in
//!   [`super::serve`].)
//!
//! The decisions are pure functions ([`host_allowed`], [`origin_allowed`],
//! [`is_json`]), unit-tested below.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::config::AccessConfig;

/// What the middleware checks against.
#[derive(Debug, Clone)]
pub struct Guard {
    pub access: AccessConfig,
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
}

impl Guard {
    /// Host checks apply on a loopback listener, or once hosts are configured.
    fn checks_host(&self) -> bool {
        self.listen.ip().is_loopback() || !self.access.allowed_hosts.is_empty()
    }
}

/// The host part of a `Host` header value (no port; IPv6 keeps its brackets), lowercase.
pub fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { host })
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether a request naming `host` may be served.
pub fn host_allowed(host: &str, listen: &SocketAddr, allowed: &[String]) -> bool {
    let name = host_name(host);
    let listen_name = match listen.ip() {
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    matches!(name.as_str(), "localhost" | "[::1]")
        || name.ends_with(".localhost")
        || name.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        || name == listen_name
        || allowed.iter().any(|a| a == "*" || *a == name)
}

/// Whether a browser on `origin` may call a daemon reached as `host`: its own
/// origin, or a configured one.
pub fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let same = host.is_some_and(|h| origin == format!("http://{}", h.trim().to_ascii_lowercase()));
    same || allowed.iter().any(|a| a == "*" || *a == origin)
}

/// `application/json`, or a `+json` type, with any parameters.
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The middleware. See the module documentation.
pub async fn guard(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if g.checks_host() {
        if let Some(h) = &host {
            if !host_allowed(h, &g.listen, &g.access.allowed_hosts) {
                return ApiError::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    "host_not_allowed",
                    format!("Host {h:?} is not served here; add its name to server.allowed_hosts"),
                )
                .into_response();
            }
        }
    }
    let origin = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(o) = &origin {
        if !origin_allowed(o, host.as_deref(), &g.access.allowed_origins) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!("requests from the web origin {o:?} are refused; add it to server.allowed_origins"),
            )
            .into_response();
        }
        if req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            cors(&mut resp, o);
            let h = resp.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, DELETE"));
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type, idempotency-key"),
            );
            h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
            return resp;
        }
    }
    let req = match read_body(&g, req).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let mut resp = next.run(req).await;
    if let Some(o) = &origin {
        cors(&mut resp, o);
    }
    resp
}

fn cors(resp: &mut Response, origin: &str) {
    if let Ok(v) = HeaderValue::from_str(origin) {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// Reads a request's body within the timeout and the size limit, checking
/// that a non-empty one is JSON; gives the request back with it buffered.
async fn read_body(g: &Guard, req: Request) -> Result<Request, ApiError> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    let limit = g.max_body_bytes;
    let bytes = match tokio::time::timeout(g.access.body_read_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request body did not arrive within {}", human(g.access.body_read_timeout)),
            ))
        }
        Ok(Err(e)) if is_length_limit(&e) => return Err(ApiError::too_large(limit)),
        Ok(Err(e)) => return Err(ApiError::bad_json(format!("cannot read the request body: {e}"))),
        Ok(Ok(b)) => b,
    };
    if !bytes.is_empty() {
        let ct = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !is_json(ct) {
            let said = if ct.is_empty() { "no Content-Type".to_string() } else { format!("Content-Type {ct:?}") };
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("request bodies must be JSON with Content-Type: application/json (got {said})"),
            ));
        }
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        src = s.source();
    }
    false
}

fn human(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lo() -> SocketAddr {
        "127.0.0.1:7878".parse().unwrap()
    }

    #[test]
    fn loopback_names_and_configured_hosts_pass_others_do_not() {
        for h in ["localhost:7878", "127.0.0.1:7878", "127.0.0.1", "[::1]:7878", "LOCALHOST", "127.1.2.3:80", "app.localhost:7878"] {
            assert!(host_allowed(h, &lo(), &[]), "{h}");
        }
        for h in ["evil.example:7878", "127.0.0.1.evil.example", "localhost.evil.example", "10.0.0.5:7878", "[::2]:7878"] {
            assert!(!host_allowed(h, &lo(), &[]), "{h}");
        }
        assert!(host_allowed("sprout.internal:7878", &lo(), &["sprout.internal".into()]));
        assert!(host_allowed("anything:1", &lo(), &["*".into()]));
        let wide: SocketAddr = "10.0.0.5:7878".parse().unwrap();
        assert!(host_allowed("10.0.0.5:7878", &wide, &[]));
        let v6: SocketAddr = "[fd00::5]:7878".parse().unwrap();
        assert!(host_allowed("[fd00::5]:7878", &v6, &[]));
    }

    #[test]
    fn host_names_lose_their_port_only() {
        assert_eq!(host_name("Example.COM:80"), "example.com");
        assert_eq!(host_name("[::1]:7878"), "[::1]");
        assert_eq!(host_name("localhost."), "localhost");
        assert_eq!(host_name("a:b"), "a:b");
    }

    #[test]
    fn only_the_daemons_own_or_configured_origins_pass() {
        assert!(origin_allowed("http://127.0.0.1:7878", Some("127.0.0.1:7878"), &[]));
        assert!(!origin_allowed("https://evil.example", Some("127.0.0.1:7878"), &[]));
        assert!(!origin_allowed("null", Some("127.0.0.1:7878"), &[]));
        assert!(origin_allowed("http://localhost:3000/", Some("127.0.0.1:7878"), &["http://localhost:3000".into()]));
        assert!(origin_allowed("https://x", None, &["*".into()]));
    }

    #[test]
    fn json_content_types() {
        for ct in ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/merge-patch+json"] {
            assert!(is_json(ct), "{ct}");
        }
        for ct in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", "json"] {
            assert!(!is_json(ct), "{ct}");
        }
    }
}

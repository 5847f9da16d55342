//! Bearer-token authentication for every route but `/healthz`.


use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Compares in time that depends only on the length of `given` (which its
/// sender knows): both sides are reduced to keyed 128-bit digests (two
/// SipHash keys drawn at start-up), which are compared without an early
/// exit, so neither where the strings differ nor the token's length shows.
fn same(given: &[u8], token: &[u8]) -> bool {
    use std::hash::BuildHasher;
    static KEYS: std::sync::OnceLock<[std::collections::hash_map::RandomState; 2]> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(Default::default);
    let digest = |b: &[u8]| [keys[0].hash_one(b), keys[1].hash_one(b)];
    let (g, t) = (digest(given), digest(token));
    ((g[0] ^ t[0]) | (g[1] ^ t[1])) == 0
}

/// The credentials of an `Authorization: Bearer <token>` header; the scheme
/// is matched case-insensitively (RFC 7235).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// The token is the service's current one (a reload may change it).
pub async fn require_token(State(svc): State<super::AppState>, req: Request, next: Next) -> Response {
    let Some(token) = svc.token() else { return next.run(req).await };
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer);
    match given {
        Some(g) if same(g.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", "the API token is not valid").into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
            "this sproutd requires an API token: send \"Authorization: Bearer <token>\" (sproutctl reads SPROUT_TOKEN)",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn comparison() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd"));
        assert!(!super::same(b"abc", b"abcd"));
        assert!(!super::same(b"", b"abc"));
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        for v in ["Bearer tok", "bearer tok", "BEARER tok", "BeArEr   tok  "] {
            assert_eq!(super::bearer(v), Some("tok"), "{v}");
        }
        for v in ["Basic tok", "Bearertok", "tok", ""] {
            assert_eq!(super::bearer(v), None, "{v}");
        }
    }
}

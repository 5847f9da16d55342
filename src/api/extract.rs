//! Axum's `Query` and `Path` extractors with their rejections in the OpenAI
//! error shape (axum answers them in plain text): a bad query string
//! (`?wait=abc`, `?limit=-1`, `?since=`, a repeated parameter) or a path
//! segment that is not UTF-8 (`/v1/jobs/%ff`) gets a 400 like every other
//! bad input.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The query string, deserialized.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(r) => Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", r.body_text())),
        }
    }
}

/// The path's parameters, deserialized.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(r) if r.status().is_client_error() => {
                Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", r.body_text()))
            }
            Err(r) => {
                tracing::error!(error = %r.body_text(), "path extraction");
                Err(ApiError::internal())
            }
        }
    }
}

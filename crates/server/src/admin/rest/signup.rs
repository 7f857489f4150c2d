//! `GET /api/v1/mobius/signup/verify?token=...`: the link in the sign-up
//! email. Following it opens the tenant for sign-in.

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use mobius_core::Store;
use serde::{Deserialize, Serialize};

use crate::http::errors::{ApiError, ErrorCode};

pub fn router<S: Clone + Send + Sync + 'static>(store: Store) -> Router<S> {
    Router::new()
        .route("/api/v1/mobius/signup/verify", get(verify))
        .with_state(store)
}

#[derive(Deserialize)]
struct VerifyParams {
    token: Option<String>,
}

#[derive(Serialize)]
struct Verified {
    verified: bool,
    tenant: String,
    message: String,
}

async fn verify(
    State(store): State<Store>,
    Query(params): Query<VerifyParams>,
) -> Result<Json<Verified>, ApiError> {
    let token = params
        .token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError {
            field: Some("token".into()),
            ..ApiError::new(ErrorCode::BadUserInput, "the link has no token")
        })?;
    let tenant = store.verify_sign_up(&token).await.map_err(|e| match e {
        mobius_core::StoreError::NotFound { .. } => ApiError::new(
            ErrorCode::NotFound,
            "this verification link is unknown, already used or expired",
        ),
        other => other.into(),
    })?;
    Ok(Json(Verified {
        verified: true,
        message: format!(
            "the sign-up of {} is confirmed: sign in with the email and password you chose",
            tenant.name
        ),
        tenant: tenant.slug,
    }))
}

//! The OpenAI-compatible HTTP edge (`--http-listen`), so existing OpenAI
//! SDKs can call aios unchanged. Errors use OpenAI's JSON error shape,
//! which those SDKs parse.
//!
//! `/v1/models` lists the models this node serves (none until models are
//! loaded from config); completions and embeddings go through the same
//! pipeline as `AgentService` once it lands, and answer 501 until then.

use axum::{
    Json, Router,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;

/// The HTTP router.
pub fn router() -> Router {
    Router::new()
        .route("/v1/models", get(list_models))
        .route(
            "/v1/chat/completions",
            post(|| async { not_served("chat completions") }),
        )
        .route(
            "/v1/embeddings",
            post(|| async { not_served("embeddings") }),
        )
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "unknown_url",
                "no such endpoint on this node",
            )
        })
}

async fn list_models() -> Json<serde_json::Value> {
    Json(json!({ "object": "list", "data": [] }))
}

fn not_served(what: &str) -> Response {
    error(
        StatusCode::NOT_IMPLEMENTED,
        "server_error",
        "not_implemented",
        &format!("{what} are not served by this node yet"),
    )
}

/// An error in OpenAI's JSON shape.
pub fn error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    let body =
        json!({ "error": { "message": message, "type": kind, "param": null, "code": code } });
    (status, Json(body)).into_response()
}

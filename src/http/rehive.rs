//! (Being built.)

use axum::Router;

use super::State;

/// The routes of this part of the HTTP API.
pub fn routes() -> Router<State> {
    Router::new()
}

//! (Being built.)

use axum::Router;

use super::{Settings, State};

/// The forward-auth route.
pub fn routes(_settings: &Settings) -> Router<State> {
    Router::new()
}

//! portcullis: an authentication microservice with a gRPC API.
//!
//! Layers, outermost first: [`server`] (the listener) → [`request`] (the
//! layers every call passes, gRPC and HTTP alike) → [`grpc`] (tonic
//! services) beside [`http`] (the JSON dialects, forward auth), both reading
//! one error table ([`errors`]) → [`domain`] (the rules, and the seam
//! `domain::ports` that says what they need of persistence) → [`store`]
//! (sea-orm, implementing the seam). [`app`] wires them, runs the server and
//! owns its background tasks; [`cli`] is the command line `main` runs.

pub mod app;
pub mod captcha;
pub mod cli;
pub mod config;
pub mod domain;
pub mod errors;
pub mod gateway;
pub mod grpc;
pub mod health;
pub mod http;
pub mod mail;
pub mod metrics;
pub mod request;
pub mod server;
pub mod store;
pub mod telemetry;

/// Code generated from `proto/` by `build.rs`.
pub mod proto {
    /// The `portcullis.v1` package.
    #[allow(clippy::pedantic, clippy::nursery, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("portcullis.v1");
    }

    /// The encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("portcullis_descriptor");
}

//! portcullis-bench: measures portcullis from outside, the way its callers
//! load it.
//!
//! - [`load`]: the open-loop engine (and a closed loop to find capacity):
//!   `HdrHistogram` latencies from each call's intended start, outcomes by
//!   gRPC code, achieved rate against offered.
//! - [`workload`]: one call per mode: health, `ValidateToken`, `Login`,
//!   Envoy `Check`.
//! - [`client`]: HTTP/2 connections for tonic's generated clients.
//! - [`stats`]: recording and the report rows.
//! - [`procfs`]: the server process's CPU time and RSS.
//! - [`seed`]: users and sessions in a database, tokens in a file.
//!
//! The `portcullis-bench` binary is the CLI over these; `bare-health` is the
//! baseline server (tonic with only `grpc.health.v1`). `scripts/bench`
//! drives both against a release build of portcullis and prints one table.

pub mod client;
pub mod load;
pub mod procfs;
pub mod seed;
pub mod stats;
pub mod workload;

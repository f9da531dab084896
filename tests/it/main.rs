//! The integration suite: every test starts the real server on
//! `127.0.0.1:0` and talks to it with the generated gRPC client, on SQLite
//! and (when `PORTCULLIS_TEST_DATABASE_URL` is set) on PostgreSQL, each test
//! in its own database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::missing_panics_doc)]

mod support;

mod abuse;
mod audit;
mod authz;
mod bad_input;
mod captcha;
mod chart;
mod chart_run;
mod cli;
mod envoy;
mod forward_auth;
mod grpcurl;
mod http;
mod http_api;
mod http_browser;
mod http_errors;
mod keys;
mod layers;
mod login;
mod mfa;
mod observability;
mod operations;
mod properties;
mod readme;
mod serving;
mod sessions;
mod smtp;
mod store;
mod tls;

//! Logging and traces: a `tracing` subscriber writing text or JSON lines to
//! stderr (from a writer thread: a call formats its line and queues it, and
//! the thread writes what has queued in one `write` — no system call per
//! line on the request path; should 128,000 lines queue, newer ones are
//! dropped rather than stall authentication) and, when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, exporting spans over OTLP/gRPC
//! with `service.name=portcullis`.
//!
//! Request ids and the per-call server span are made by
//! [`crate::request::stack`]; this module only decides where spans and
//! log lines go. Only portcullis's own spans are exported (not those of
//! hyper, h2 or tonic, whose exporter would otherwise trace itself), and no
//! span of ours carries a token, password, code or key.
//!
//! The exporter follows the standard variables: `OTEL_EXPORTER_OTLP_[TRACES_]`
//! `ENDPOINT`, `HEADERS`, `TIMEOUT`, `COMPRESSION`, `CERTIFICATE`,
//! `CLIENT_CERTIFICATE`, `CLIENT_KEY`; `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES`; `OTEL_TRACES_SAMPLER[_ARG]`; `OTEL_BSP_*`;
//! `OTEL_SDK_DISABLED=true` and `OTEL_TRACES_EXPORTER=none` turn it off.

use std::{env, time::Duration};

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tracing_subscriber::{
    EnvFilter, Layer as _, filter, fmt, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

use crate::config::{Config, LogFormat};

/// `service.name` of exported spans unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE_NAME: &str = "portcullis";

/// Keeps the trace exporter and the log writer running; dropping it sends
/// the spans still queued, writes the lines still queued and stops both.
/// Hold it for the life of the process.
#[must_use = "dropping the guard stops the trace exporter and the log writer"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Dropped after `provider` (fields drop in order, after `Drop::drop`).
    _log_writer: Option<tracing_appender::non_blocking::WorkerGuard>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("exporting", &self.provider.is_some()).finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Whether spans are exported over OTLP.
    #[must_use]
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            eprintln!("portcullis: flushing traces at exit failed: {err}");
        }
    }
}

/// Installs the global subscriber: `log_filter` (`RUST_LOG` overrides it),
/// `log_format`, and the OTLP exporter when the environment asks for one.
/// Does nothing when a subscriber is installed already (tests). Call it
/// inside the tokio runtime: the exporter's channel lives there.
///
/// # Errors
/// The OTLP settings in the environment cannot be used (an unreadable
/// certificate file, a malformed endpoint).
pub fn init(config: &Config) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, log_writer) = tracing_appender::non_blocking(std::io::BufWriter::new(std::io::stderr()));
    let log_layer = match config.log_format {
        LogFormat::Text => fmt::layer().with_ansi(ansi).fmt_fields(TextFields).with_writer(writer).boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(writer).boxed(),
    };
    let provider = if otlp_requested() { Some(tracer_provider()?) } else { None };
    let trace_layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(SERVICE_NAME))
            // Thread ids and names say nothing useful about a request.
            .with_threads(false)
            .with_filter(filter::filter_fn(|metadata| metadata.target().starts_with("portcullis")))
    });
    let installed = tracing_subscriber::registry().with(filter).with(log_layer).with(trace_layer).try_init();
    if installed.is_err() {
        // Someone (a test) installed a subscriber first; it stays.
        if let Some(provider) = provider {
            let _ = provider.shutdown();
        }
        return Ok(Telemetry { provider: None, _log_writer: None });
    }
    if provider.is_some() {
        tracing::info!(endpoint = %otlp_endpoint().unwrap_or_default(), "exporting traces over OTLP/gRPC");
    }
    Ok(Telemetry { provider, _log_writer: Some(log_writer) })
}

/// The fields of spans and events in the text log, as tracing-subscriber
/// writes them by default, without the call span's `otel.*` and `rpc.*`
/// fields: they are for the trace exporter, and formatting them for every
/// call would cost more than the rest of its span. A call's lines still
/// name their request id (`rpc{request_id=…}`), and its "rpc finished"
/// line the method and code.
struct TextFields;

impl<'writer> fmt::FormatFields<'writer> for TextFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: fmt::format::Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = SkipCallFields(fmt::format::DefaultVisitor::new(writer, true));
        fields.record(&mut visitor);
        tracing_subscriber::field::VisitOutput::finish(visitor.0)
    }

    fn add_fields(
        &self,
        current: &'writer mut fmt::FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let empty = current.fields.is_empty();
        let mut visitor = SkipCallFields(fmt::format::DefaultVisitor::new(current.as_writer(), empty));
        fields.record(&mut visitor);
        tracing_subscriber::field::VisitOutput::finish(visitor.0)
    }
}

/// Passes every field but `otel.*` and `rpc.*` on to the default visitor.
struct SkipCallFields<'writer>(fmt::format::DefaultVisitor<'writer>);

fn skipped(field: &tracing::field::Field) -> bool {
    let name = field.name();
    name.starts_with("otel.") || name.starts_with("rpc.")
}

impl tracing::field::Visit for SkipCallFields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if !skipped(field) {
            self.0.record_debug(field, value);
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if !skipped(field) {
            self.0.record_str(field, value);
        }
    }

    fn record_error(&mut self, field: &tracing::field::Field, value: &(dyn std::error::Error + 'static)) {
        if !skipped(field) {
            self.0.record_error(field, value);
        }
    }
}

/// A non-empty environment variable.
fn var(name: &str) -> Option<String> {
    env::var(name).ok().filter(|value| !value.trim().is_empty())
}

/// The first of the traces-specific and the general variable that is set.
fn otlp_var(suffix: &str) -> Option<String> {
    var(&format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}"))
        .or_else(|| var(&format!("OTEL_EXPORTER_OTLP_{suffix}")))
}

fn otlp_endpoint() -> Option<String> {
    otlp_var("ENDPOINT")
}

/// Whether the environment asks for OTLP trace export.
fn otlp_requested() -> bool {
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let exporter_off = var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    otlp_endpoint().is_some() && !disabled && !exporter_off
}

/// The tracer provider exporting to the OTLP endpoint in the environment.
fn tracer_provider() -> anyhow::Result<SdkTracerProvider> {
    if let Some(protocol) = otlp_var("PROTOCOL")
        && protocol != "grpc"
    {
        eprintln!("portcullis: OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported; exporting over grpc");
    }
    let endpoint = otlp_endpoint().unwrap_or_default();
    let mut builder =
        opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint.clone());
    if endpoint.starts_with("https://") {
        builder = builder.with_tls_config(client_tls()?);
    }
    let exporter = builder.build().context("OTEL_EXPORTER_OTLP_ENDPOINT: building the OTLP exporter")?;
    let mut resource = Resource::builder();
    if var("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(SERVICE_NAME);
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// TLS towards an `https://` collector: the system's roots, plus
/// `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`, and a client certificate from
/// `…CLIENT_CERTIFICATE` and `…CLIENT_KEY` when both are set.
fn client_tls() -> anyhow::Result<ClientTlsConfig> {
    let read = |name: &str, path: &str| {
        std::fs::read(path).with_context(|| format!("OTEL_EXPORTER_OTLP_{name} {path}: cannot read"))
    };
    let mut tls = ClientTlsConfig::new().with_native_roots();
    if let Some(path) = otlp_var("CERTIFICATE") {
        tls = tls.ca_certificate(Certificate::from_pem(read("CERTIFICATE", &path)?));
    }
    match (otlp_var("CLIENT_CERTIFICATE"), otlp_var("CLIENT_KEY")) {
        (Some(cert), Some(key)) => {
            tls = tls
                .identity(Identity::from_pem(read("CLIENT_CERTIFICATE", &cert)?, read("CLIENT_KEY", &key)?));
        }
        (None, None) => {}
        _ => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY go together"
        ),
    }
    Ok(tls)
}

//! Traces (contract §8, `telemetry.otlp_endpoint`): the spans jobsync opens — a `cycle` span per
//! run with `run_id` and `trigger`, and under it `pull`, each `listing`, `push` and each
//! `bulk_call` — exported over OTLP/HTTP with the JSON encoding to the collector's `/v1/traces`,
//! in batches from a thread of their own. Off unless the endpoint is set. The same spans give
//! every JSON log line its run (`span`/`spans` fields) whether or not traces are exported.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Flushes and stops the export when dropped (the end of a command): a `--once` run's spans are
/// sent before the process exits.
pub struct TraceGuard(Option<SdkTracerProvider>);

impl Drop for TraceGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: the last traces could not be exported: {e}");
        }
    }
}

/// The tracer provider exporting to `endpoint` (the collector's base URL, e.g.
/// `http://otel-collector:4318`; `/v1/traces` is appended unless the URL already ends so).
/// Needs a tokio runtime: the export requests run on it.
pub fn provider(endpoint: &str) -> Result<(SdkTracerProvider, TraceGuard), String> {
    let endpoint = endpoint.trim().trim_end_matches('/');
    let url = if endpoint.ends_with("/v1/traces") {
        endpoint.to_string()
    } else {
        format!("{endpoint}/v1/traces")
    };
    let client = OnRuntime {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?,
        runtime: tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(url)
        .with_http_client(client)
        .build()
        .map_err(|e| e.to_string())?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("jobsync")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    Ok((provider.clone(), TraceGuard(Some(provider))))
}

/// The tracing layer that turns spans into OpenTelemetry spans of `provider`.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("jobsync"))
}

/// The exporter's HTTP client: the stack's reqwest, its requests run on the process's tokio
/// runtime (the batch processor calls from a thread of its own, outside the runtime).
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl HttpClient for OnRuntime {
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let answer = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let status = answer.status();
            let headers = answer.headers().clone();
            let body = answer.bytes().await?;
            let mut response = Response::new(body);
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            Ok::<_, reqwest::Error>(response)
        });
        Box::pin(async move {
            match sent.await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(e)) => Err(Box::new(e) as HttpError),
                Err(e) => Err(Box::new(e) as HttpError),
            }
        })
    }
}

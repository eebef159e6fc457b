use super::service::Trace;
use crate::Keyed;
use tower_layer::Layer;

/// Makes the span of a request.
///
/// Implemented for every `Fn(&Req) -> tracing::Span` and for [`KeyedSpan`].
pub trait MakeSpan<Req> {
    /// The span for `request`.
    fn make_span(&self, request: &Req) -> tracing::Span;
}

impl<Req, F> MakeSpan<Req> for F
where
    F: Fn(&Req) -> tracing::Span,
{
    fn make_span(&self, request: &Req) -> tracing::Span {
        self(request)
    }
}

/// Makes an `info` span named `request` for a [`Keyed`] request, with fields `otel.name` (the name given to
/// [`TraceLayer::keyed`]) and `key` (the request's key, `Debug`-formatted).
///
/// Tracing span names must be static string literals, so the name goes in `otel.name`, which
/// `tracing-opentelemetry` uses as the exported span's name (Jaeger shows it); other subscribers show it as a field.
#[derive(Debug, Clone, Copy)]
pub struct KeyedSpan {
    name: &'static str,
}

impl<Req: Keyed> MakeSpan<Req> for KeyedSpan {
    fn make_span(&self, request: &Req) -> tracing::Span {
        tracing::info_span!("request", otel.name = self.name, key = ?request.key())
    }
}

/// Applies [`Trace`] to a service.
#[derive(Debug, Clone)]
pub struct TraceLayer<M> {
    make_span: M,
}

impl<M> TraceLayer<M> {
    /// A layer making each request's span with `make_span`, typically a closure
    /// `|req: &Req| tracing::info_span!("...", ...)`.
    pub fn new(make_span: M) -> Self {
        Self { make_span }
    }
}

impl TraceLayer<KeyedSpan> {
    /// A layer giving each [`Keyed`] request a span carrying its key; see [`KeyedSpan`] for the span's shape.
    pub fn keyed(name: &'static str) -> Self {
        Self {
            make_span: KeyedSpan { name },
        }
    }
}

impl<S, M: Clone> Layer<S> for TraceLayer<M> {
    type Service = Trace<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace::new(inner, self.make_span.clone())
    }
}

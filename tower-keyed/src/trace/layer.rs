use super::service::Trace;
use crate::{ExtractKey, KeyFromRequest};
use std::fmt;
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

/// Makes an `info` span named `request` with fields `otel.name` (the name given to [`TraceLayer::keyed`]) and `key`
/// (the request's key as found by `X`, `Debug`-formatted).
///
/// `X` is [`KeyFromRequest`] (the default) for [`Keyed`](crate::Keyed) requests, or any closure given to
/// [`TraceLayer::with_key`].
///
/// Tracing span names must be static string literals, so the name goes in `otel.name`, which
/// `tracing-opentelemetry` uses as the exported span's name (Jaeger shows it); other subscribers show it as a field.
#[derive(Clone, Copy)]
pub struct KeyedSpan<X = KeyFromRequest> {
    name: &'static str,
    extract: X,
}

impl<Req, X: ExtractKey<Req>> MakeSpan<Req> for KeyedSpan<X> {
    fn make_span(&self, request: &Req) -> tracing::Span {
        let key = self.extract.extract_key(request);
        tracing::info_span!("request", otel.name = self.name, key = ?key)
    }
}

impl<X> fmt::Debug for KeyedSpan<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedSpan")
            .field("name", &self.name)
            .finish_non_exhaustive()
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
    /// A layer giving each [`Keyed`](crate::Keyed) request a span carrying its key; see [`KeyedSpan`] for the span's
    /// shape, and [`with_key`](Self::with_key) for requests that do not implement `Keyed`.
    pub fn keyed(name: &'static str) -> Self {
        Self {
            make_span: KeyedSpan {
                name,
                extract: KeyFromRequest,
            },
        }
    }
}

impl<X> TraceLayer<KeyedSpan<X>> {
    /// The same keyed span, finding each request's key with `extract` instead, typically a closure `|req: &Req| key`
    /// (see [`ExtractKey`]).
    pub fn with_key<Y>(self, extract: Y) -> TraceLayer<KeyedSpan<Y>> {
        TraceLayer {
            make_span: KeyedSpan {
                name: self.make_span.name,
                extract,
            },
        }
    }
}

impl<S, M: Clone> Layer<S> for TraceLayer<M> {
    type Service = Trace<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace::new(inner, self.make_span.clone())
    }
}

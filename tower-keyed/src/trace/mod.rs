//! Give every request a span.
//!
//! [`Trace`] makes a [`tracing::Span`] for each request, enters it while calling the inner service (so spans and
//! events made there nest under it), and instruments the response future with it. When the response is there it
//! emits a `debug` event in the span with `outcome = "ok"` or `"error"` and `elapsed_ms`, measured on Tokio's clock
//! from the call.
//!
//! The span comes from a [`MakeSpan`]: any `Fn(&Req) -> Span` closure ([`TraceLayer::new`]), or [`KeyedSpan`]
//! ([`TraceLayer::keyed`]) for [`Keyed`](crate::Keyed) requests or, with [`TraceLayer::with_key`], for any request
//! whose key a closure can extract.
//!
//! Trace adds no errors of its own, so it passes the inner service's error type through unchanged (it only needs to
//! be `Display`, for the outcome event); it does not box.

pub mod future;
mod layer;
mod service;

pub use self::{
    layer::{KeyedSpan, MakeSpan, TraceLayer},
    service::Trace,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BoxError, Keyed};
    use std::{
        collections::HashMap,
        fmt,
        sync::{Arc, Mutex},
        time::Duration,
    };
    use tower::{Layer, Service, ServiceExt, service_fn};
    use tracing::{
        Subscriber,
        field::{Field, Visit},
        span,
    };
    use tracing_subscriber::{layer::Context, prelude::*, registry::LookupSpan};

    #[derive(Debug)]
    struct Req(&'static str);

    impl Keyed for Req {
        type Key = &'static str;
        fn key(&self) -> &'static str {
            self.0
        }
    }

    /// Field name → value as text (strings unquoted, everything else `Debug`).
    #[derive(Debug, Default, Clone)]
    struct Fields(HashMap<String, String>);

    impl Visit for Fields {
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }
    }

    impl Fields {
        fn get(&self, name: &str) -> Option<&str> {
            self.0.get(name).map(String::as_str)
        }
    }

    #[derive(Default)]
    struct Captured {
        /// span id → (name, fields)
        spans: HashMap<u64, (&'static str, Fields)>,
        /// (id of the span the event happened in, fields)
        events: Vec<(Option<u64>, Fields)>,
    }

    /// A subscriber layer recording spans and events for assertions.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Captured>>);

    impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
        fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, _ctx: Context<'_, S>) {
            let mut fields = Fields::default();
            attrs.record(&mut fields);
            self.0
                .lock()
                .unwrap()
                .spans
                .insert(id.into_u64(), (attrs.metadata().name(), fields));
        }
        fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
            let mut fields = Fields::default();
            event.record(&mut fields);
            let span = ctx.event_span(event).map(|span| span.id().into_u64());
            self.0.lock().unwrap().events.push((span, fields));
        }
    }

    /// The id of the span current when the inner service is called, and a service recording it.
    fn recording_service(
        outcome: Result<(), &'static str>,
    ) -> (
        Arc<Mutex<Option<u64>>>,
        impl Service<Req, Response = (), Error = BoxError, Future: Send> + Clone,
    ) {
        let seen = Arc::new(Mutex::new(None));
        let service = {
            let seen = seen.clone();
            service_fn(move |_req: Req| {
                *seen.lock().unwrap() = tracing::Span::current().id().map(|id| id.into_u64());
                async move {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    outcome.map_err(BoxError::from)
                }
            })
        };
        (seen, service)
    }

    #[tokio::test(start_paused = true)]
    async fn keyed_span_is_entered_around_the_call_and_records_the_outcome() {
        let capture = Capture::default();
        let _subscriber =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
        let (seen, inner) = recording_service(Ok(()));
        let mut svc = TraceLayer::keyed("tenant-request").layer(inner);

        svc.ready()
            .await
            .unwrap()
            .call(Req("tenant-a"))
            .await
            .unwrap();

        let span_id = seen
            .lock()
            .unwrap()
            .expect("the inner service was called outside any span");
        let captured = capture.0.lock().unwrap();
        let (name, fields) = &captured.spans[&span_id];
        assert_eq!(*name, "request");
        assert_eq!(fields.get("key"), Some("\"tenant-a\""));
        assert_eq!(fields.get("otel.name"), Some("tenant-request"));
        let (_, event) = captured
            .events
            .iter()
            .find(|(span, _)| *span == Some(span_id))
            .expect("an event in the request's span when it finished");
        assert_eq!(event.get("outcome"), Some("ok"));
        assert_eq!(event.get("elapsed_ms"), Some("250"));
    }

    /// The error type is the inner service's, not a box: the caller gets the inner error value back as it was.
    #[tokio::test(start_paused = true)]
    async fn inner_errors_pass_through_with_their_own_type() {
        #[derive(Debug, PartialEq)]
        struct Refused(u16);
        impl fmt::Display for Refused {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "refused with {}", self.0)
            }
        }
        let inner = service_fn(|_req: Req| async { Err::<(), _>(Refused(429)) });
        let mut svc = TraceLayer::keyed("typed").layer(inner);
        // Naming the type pins it: this would not compile if Trace boxed the error.
        let error: Refused = svc
            .ready()
            .await
            .unwrap()
            .call(Req("tenant-c"))
            .await
            .unwrap_err();
        assert_eq!(error, Refused(429));
    }

    /// A request type that is not `Keyed` (a (tenant, n) tuple) gets its key from a closure.
    #[tokio::test(start_paused = true)]
    async fn keyed_span_with_a_closure_extractor() {
        let capture = Capture::default();
        let _subscriber =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
        let seen = Arc::new(Mutex::new(None));
        let inner = {
            let seen = seen.clone();
            service_fn(move |_req: (String, u32)| {
                *seen.lock().unwrap() = tracing::Span::current().id().map(|id| id.into_u64());
                async { Ok::<_, BoxError>(()) }
            })
        };
        let mut svc = TraceLayer::keyed("tuple-request")
            .with_key(|req: &(String, u32)| req.0.clone())
            .layer(inner);

        svc.ready()
            .await
            .unwrap()
            .call(("tenant-d".to_owned(), 7))
            .await
            .unwrap();

        let span_id = seen
            .lock()
            .unwrap()
            .expect("the inner service was called outside any span");
        let captured = capture.0.lock().unwrap();
        let (_, fields) = &captured.spans[&span_id];
        assert_eq!(fields.get("key"), Some("\"tenant-d\""));
        assert_eq!(fields.get("otel.name"), Some("tuple-request"));
    }

    #[tokio::test(start_paused = true)]
    async fn custom_span_and_error_outcome() {
        let capture = Capture::default();
        let _subscriber =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
        let (seen, inner) = recording_service(Err("boom"));
        let mut svc =
            TraceLayer::new(|req: &Req| tracing::info_span!("upload", tenant = req.0)).layer(inner);

        let error = svc
            .ready()
            .await
            .unwrap()
            .call(Req("tenant-b"))
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "boom");

        let span_id = seen
            .lock()
            .unwrap()
            .expect("the inner service was called outside any span");
        let captured = capture.0.lock().unwrap();
        let (name, fields) = &captured.spans[&span_id];
        assert_eq!((*name, fields.get("tenant")), ("upload", Some("tenant-b")));
        let (_, event) = captured
            .events
            .iter()
            .find(|(span, _)| *span == Some(span_id))
            .expect("outcome event");
        assert_eq!(event.get("outcome"), Some("error"));
        assert_eq!(event.get("error"), Some("boom"));
        assert_eq!(event.get("elapsed_ms"), Some("250"));
    }
}

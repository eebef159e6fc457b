//! How a layer learns a request's key.
//!
//! Every layer takes an [`ExtractKey`]: any closure `Fn(&Req) -> K`, or [`KeyFromRequest`] (the default) for request
//! types that implement [`Keyed`]. A closure is what makes the layers usable on request types of other crates, such as
//! `http::Request<B>`, which cannot implement a trait of this crate (the orphan rule forbids it).

use std::{fmt::Debug, hash::Hash};

/// A request that names the key it is limited and scheduled by, for example the user or tenant that sent it.
///
/// Implement it for request types of your own; for foreign types, give the layer a closure instead (see
/// [`ExtractKey`]).
pub trait Keyed {
    /// The key: cheap to clone, hashable, and debug-printable for spans.
    type Key: Clone + Eq + Hash + Debug + Send + Sync + 'static;

    /// The key of this request. Called once per layer per request.
    fn key(&self) -> Self::Key;
}

/// Extracts the key of a request of type `Req`.
///
/// Implemented for every `Fn(&Req) -> K` whose key type is suitable, and for [`KeyFromRequest`], which asks a
/// [`Keyed`] request for its key. Called once per layer per request, so it should be cheap.
///
/// ```
/// use tower_keyed::ExtractKey;
///
/// // A request type we do not own: a (tenant, payload size) pair.
/// let by_tenant = |req: &(String, u32)| req.0.clone();
/// assert_eq!(by_tenant.extract_key(&("acme".to_owned(), 42)), "acme");
/// ```
pub trait ExtractKey<Req> {
    /// The key: cheap to clone, hashable, and debug-printable for spans.
    type Key: Clone + Eq + Hash + Debug + Send + Sync + 'static;

    /// The key of `request`.
    fn extract_key(&self, request: &Req) -> Self::Key;
}

impl<Req, K, F> ExtractKey<Req> for F
where
    F: Fn(&Req) -> K,
    K: Clone + Eq + Hash + Debug + Send + Sync + 'static,
{
    type Key = K;

    fn extract_key(&self, request: &Req) -> K {
        self(request)
    }
}

/// The default key extractor: the request's own [`Keyed::key`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyFromRequest;

impl<Req: Keyed> ExtractKey<Req> for KeyFromRequest {
    type Key = Req::Key;

    fn extract_key(&self, request: &Req) -> Req::Key {
        request.key()
    }
}

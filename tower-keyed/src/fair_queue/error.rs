//! Error types.

use std::{error::Error, fmt, sync::Arc};

/// The fair queue's worker is gone, so the request was not (and will not be) dispatched.
///
/// When the worker stopped because the inner service failed `poll_ready`, that error is the
/// [`source`](Error::source).
#[derive(Clone)]
pub struct QueueClosed {
    source: Option<Arc<dyn Error + Send + Sync>>,
}

impl QueueClosed {
    pub(crate) fn new(source: Option<Arc<dyn Error + Send + Sync>>) -> Self {
        Self { source }
    }
}

impl fmt::Debug for QueueClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueClosed")
            .field("source", &self.source.as_ref().map(ToString::to_string))
            .finish()
    }
}

impl fmt::Display for QueueClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source {
            Some(_) => f.write_str("fair queue closed: the inner service failed"),
            None => f.write_str("fair queue closed: its worker is gone"),
        }
    }
}

impl Error for QueueClosed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

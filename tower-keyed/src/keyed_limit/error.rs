//! Error types.

use std::{error::Error, fmt};

/// A request was refused because its key already has as many requests waiting as allowed.
///
/// The key is deliberately not part of the error: keys are often user ids and error texts reach logs. The caller
/// still has the request and knows its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyQueueFull {
    max_active: usize,
    max_waiting: usize,
}

impl KeyQueueFull {
    pub(crate) fn new(max_active: usize, max_waiting: usize) -> Self {
        Self {
            max_active,
            max_waiting,
        }
    }

    /// How many requests of one key may wait for a slot.
    pub fn max_waiting(&self) -> usize {
        self.max_waiting
    }

    /// How many requests of one key may be in flight at once.
    pub fn max_active(&self) -> usize {
        self.max_active
    }
}

impl fmt::Display for KeyQueueFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "too many requests waiting for this key (limit {})",
            self.max_waiting
        )
    }
}

impl Error for KeyQueueFull {}

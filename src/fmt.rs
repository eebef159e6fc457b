//! Formatting for messages people read (job and attempt errors, logs). A leaf, so the poller and the attempts can
//! both use it without importing each other.

use std::error::Error;
use std::time::Duration;

/// "90 s", "30 min", "1 h 30 min".
pub fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 if secs.is_multiple_of(60) => format!("{} min", secs / 60),
        120..7200 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, (secs % 3600) / 60),
    }
}

/// An error with its causes, outermost first: "could not upload: connection refused". A cause whose text the message
/// already ends with (an error that prints its source itself) is not repeated.
pub fn chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{chain, humanize};

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("could not upload")]
        Upload(#[source] std::io::Error),
        #[error("could not read: {0}")]
        Read(#[source] std::io::Error),
    }

    #[test]
    fn an_error_reads_with_its_causes_once() {
        let io = || std::io::Error::other("connection refused");
        assert_eq!(
            chain(&Outer::Upload(io())),
            "could not upload: connection refused"
        );
        assert_eq!(
            chain(&Outer::Read(io())),
            "could not read: connection refused"
        );
        let boxed: tower::BoxError = Box::new(Outer::Upload(io()));
        assert_eq!(
            chain(boxed.as_ref()),
            "could not upload: connection refused"
        );
    }

    #[test]
    fn durations_read_in_the_largest_sensible_unit() {
        assert_eq!(humanize(Duration::from_secs(90)), "90 s");
        assert_eq!(humanize(Duration::from_secs(1800)), "30 min");
        assert_eq!(humanize(Duration::from_secs(150)), "2 min 30 s");
        assert_eq!(humanize(Duration::from_secs(5400)), "90 min");
        assert_eq!(humanize(Duration::from_secs(9000)), "2 h 30 min");
    }
}

//! Formatting for messages people read (job and attempt errors, logs). A leaf, so the poller and the attempts can
//! both use it without importing each other.

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::humanize;

    #[test]
    fn durations_read_in_the_largest_sensible_unit() {
        assert_eq!(humanize(Duration::from_secs(90)), "90 s");
        assert_eq!(humanize(Duration::from_secs(1800)), "30 min");
        assert_eq!(humanize(Duration::from_secs(150)), "2 min 30 s");
        assert_eq!(humanize(Duration::from_secs(5400)), "90 min");
        assert_eq!(humanize(Duration::from_secs(9000)), "2 h 30 min");
    }
}

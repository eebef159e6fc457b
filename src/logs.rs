//! Log lines: the `tracing` layer that writes them, as text or one JSON object per line.
//!
//! The daemon writes info and debug lines to stdout and warnings and errors to stderr, so pm2 (or systemd, or a shell
//! redirect) files problems apart from routine lines. Commands whose stdout is their answer (`run`'s results table,
//! `status`) keep every log line on stderr. Colours only go to a stream that is a terminal (and not with
//! `NO_COLOR`): a log file never holds escape codes. JSON lines carry the fields of their enclosing spans (`job`,
//! `attempt`) so every line about a job can be found by its id.

use std::io::IsTerminal;

use tracing::{Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat};

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streams {
    /// Info and more verbose on stdout, warnings and errors on stderr (the daemon).
    Split,
    /// Everything on stderr (commands that print their answer on stdout).
    Stderr,
}

/// A boxed layer of a subscriber `S`.
pub type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync>;

/// The log layer: `LOG_LEVEL` (or `default_level` when given) filters, `LOG_FORMAT` chooses text or JSON, `streams`
/// where lines go.
pub fn layer<S>(config: &Config, default_level: Option<&str>, streams: Streams) -> BoxedLayer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let level = default_level.unwrap_or(&config.log_level);
    let filter = || EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let format = config.log_format;
    let errors = formatted(
        format,
        std::io::stderr.with_max_level(Level::WARN),
        colours(std::io::stderr().is_terminal()),
    );
    match streams {
        Streams::Stderr => formatted(
            format,
            std::io::stderr,
            colours(std::io::stderr().is_terminal()),
        )
        .with_filter(filter())
        .boxed(),
        Streams::Split => formatted(
            format,
            std::io::stdout.with_min_level(Level::INFO),
            colours(std::io::stdout().is_terminal()),
        )
        .with_filter(filter())
        .and_then(errors.with_filter(filter()))
        .boxed(),
    }
}

/// Colour for a stream that is a terminal, unless `NO_COLOR` asks for none (<https://no-color.org>).
fn colours(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn formatted<S, W>(format: LogFormat, writer: W, ansi: bool) -> BoxedLayer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => layer.boxed(),
        // `message` and the event's fields at the top level; `spans` lists the enclosing spans with their fields
        // (the job's `job`, the attempt's `job` and `attempt`), outermost first.
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .boxed(),
    }
}

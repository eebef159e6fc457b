//! Terminus 2 and model-call settings (`TERMINUS_*`, `MODEL_*`), read whether or not a key is set so a typo is
//! reported at once.

use std::time::Duration;

use super::Reader;

/// How Terminus 2 runs and calls the model (read whether or not a key is set, so a typo is reported at once).
#[derive(Debug, Clone, PartialEq)]
pub struct TerminusConfig {
    /// `TERMINUS_TEMPERATURE` (0.7; models that reject a temperature get none).
    pub temperature: f32,
    /// `TERMINUS_MAX_TURNS` (100): turns before the agent is stopped (the verifier still runs).
    pub max_turns: u32,
    /// `TERMINUS_REASONING_EFFORT` (`low`, `medium` or `high`; unset): sent to model families that take it.
    pub reasoning_effort: Option<String>,
    /// `TERMINUS_CONTEXT_TOKENS` (128000): the model's context window; older turns are condensed near it.
    pub context_tokens: u32,
    /// `MODEL_CONCURRENCY_INITIAL` / `_MIN` / `_MAX` (8 / 1 / 64): the process-wide adaptive limit on model calls.
    pub concurrency: (usize, usize, usize),
    /// `MODEL_MAX_RETRIES` (6): retries of one model call (429, 5xx, timeouts) before the attempt fails.
    pub max_retries: u32,
    /// `MODEL_REQUEST_TIMEOUT_MS` (600000): one model call.
    pub request_timeout: Duration,
    /// `TERMINUS_SETUP_TIMEOUT_MS` (180000): installing and starting tmux in the attempt's container.
    pub setup_timeout: Duration,
    /// `MODEL_INPUT_USD_PER_MTOK` and `MODEL_OUTPUT_USD_PER_MTOK` (unset): prices per million prompt and completion
    /// tokens, so attempts record what their model calls cost. Both or neither.
    pub prices: Option<(f64, f64)>,
}

/// Read the Terminus 2 settings, adding a line to `r`'s problems for each malformed one.
pub(super) fn read(r: &mut Reader<'_>) -> TerminusConfig {
    let temperature = r.parsed(
        "TERMINUS_TEMPERATURE",
        0.7f32,
        "a number between 0 and 2",
        |v| (0.0..=2.0).contains(v),
    );
    let max_turns = r.parsed(
        "TERMINUS_MAX_TURNS",
        100u32,
        "a whole number of at least 1",
        |v| *v >= 1,
    );
    let reasoning_effort = r.string("TERMINUS_REASONING_EFFORT");
    if let Some(effort) = &reasoning_effort
        && !["minimal", "low", "medium", "high"].contains(&effort.as_str())
    {
        r.problems.push(format!(
            "TERMINUS_REASONING_EFFORT must be minimal, low, medium or high, got {effort:?}"
        ));
    }
    let context_tokens = r.parsed(
        "TERMINUS_CONTEXT_TOKENS",
        128_000u32,
        "a whole number of tokens (at least 4000)",
        |v| *v >= 4000,
    );
    let initial = r.count("MODEL_CONCURRENCY_INITIAL", 8);
    let min = r.count("MODEL_CONCURRENCY_MIN", 1);
    let max = r.count("MODEL_CONCURRENCY_MAX", 64);
    if !(min <= initial && initial <= max) {
        r.problems.push(format!(
            "MODEL_CONCURRENCY_MIN <= MODEL_CONCURRENCY_INITIAL <= MODEL_CONCURRENCY_MAX must hold, got {min}, {initial}, {max}"
        ));
    }
    let max_retries = r.parsed(
        "MODEL_MAX_RETRIES",
        6u32,
        "a whole number (0 or more)",
        |_| true,
    );
    let request_ms: u64 = r.parsed(
        "MODEL_REQUEST_TIMEOUT_MS",
        600_000,
        "a whole number of milliseconds (at least 1000)",
        |v| *v >= 1000,
    );
    let setup_ms: u64 = r.parsed(
        "TERMINUS_SETUP_TIMEOUT_MS",
        180_000,
        "a whole number of milliseconds (at least 1000)",
        |v| *v >= 1000,
    );
    let price = |r: &mut Reader<'_>, name: &str| {
        r.string(name).map(|_| {
            r.parsed(
                name,
                0.0f64,
                "a price in US dollars per million tokens",
                |v| v.is_finite() && *v >= 0.0,
            )
        })
    };
    let prices = match (
        price(r, "MODEL_INPUT_USD_PER_MTOK"),
        price(r, "MODEL_OUTPUT_USD_PER_MTOK"),
    ) {
        (Some(input), Some(output)) => Some((input, output)),
        (None, None) => None,
        _ => {
            r.problems.push(
                "MODEL_INPUT_USD_PER_MTOK and MODEL_OUTPUT_USD_PER_MTOK must be set together"
                    .into(),
            );
            None
        }
    };
    TerminusConfig {
        prices,
        temperature,
        max_turns,
        reasoning_effort,
        context_tokens,
        concurrency: (initial, min, max),
        max_retries,
        request_timeout: Duration::from_millis(request_ms),
        setup_timeout: Duration::from_millis(setup_ms),
    }
}

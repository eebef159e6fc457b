//! The model's answer: a JSON object with an analysis, a plan, keystrokes to type and whether the task is done,
//! alone or inside prose or a code fence.

use std::time::Duration;

use serde_json::Value;

use super::MAX_COMMAND_WAIT;

/// How long the loop waits after a command that gives no `duration`.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(1);

/// One command: keystrokes and how long to wait for them.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Typed verbatim (`\n` presses Enter), or a special key such as `C-c` as the whole string.
    pub keystrokes: String,
    /// Seconds to wait, within `[0, 60]`.
    pub duration: Duration,
}

/// A reply that parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// What the model sees.
    pub analysis: String,
    /// What it means to do.
    pub plan: String,
    /// What to type, in order.
    pub commands: Vec<Command>,
    /// The model says the task is done.
    pub task_complete: bool,
}

/// Parse a reply; the error is a sentence to quote back to the model.
pub fn parse(text: &str) -> Result<Reply, String> {
    let object = find_object(text)?;
    let string = |name: &str| match object.get(name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("`{name}` must be a string, not {}", kind(other))),
    };
    let analysis = string("analysis")?;
    let plan = string("plan")?;
    let task_complete = match object.get("task_complete") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
        Some(other) => {
            return Err(format!(
                "`task_complete` must be true or false, not {}",
                kind(other)
            ));
        }
    };
    let commands = match object.get("commands") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| command(i, item))
            .collect::<Result<Vec<_>, _>>()?,
        None | Some(Value::Null) if task_complete => Vec::new(),
        None => return Err("the JSON object has no `commands` list (use [] for none)".into()),
        Some(other) => return Err(format!("`commands` must be a list, not {}", kind(other))),
    };
    Ok(Reply {
        analysis,
        plan,
        commands,
        task_complete,
    })
}

fn command(index: usize, item: &Value) -> Result<Command, String> {
    let Value::Object(fields) = item else {
        return Err(format!(
            "commands[{index}] must be an object with `keystrokes`, not {}",
            kind(item)
        ));
    };
    let keystrokes = match fields.get("keystrokes") {
        Some(Value::String(s)) => s.clone(),
        None => return Err(format!("commands[{index}] has no `keystrokes`")),
        Some(other) => {
            return Err(format!(
                "commands[{index}].keystrokes must be a string, not {}",
                kind(other)
            ));
        }
    };
    let seconds = match fields.get("duration") {
        None | Some(Value::Null) => DEFAULT_DURATION.as_secs_f64(),
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        Some(Value::String(s)) => s.trim().parse::<f64>().map_err(|_| {
            format!("commands[{index}].duration must be a number of seconds, not \"{s}\"")
        })?,
        Some(other) => {
            return Err(format!(
                "commands[{index}].duration must be a number of seconds, not {}",
                kind(other)
            ));
        }
    };
    let seconds = if seconds.is_finite() {
        seconds.clamp(0.0, MAX_COMMAND_WAIT.as_secs_f64())
    } else {
        0.0
    };
    Ok(Command {
        keystrokes,
        duration: Duration::from_secs_f64(seconds),
    })
}

/// The fields of a reply; an object with none of them is not one.
const FIELDS: [&str; 4] = ["analysis", "plan", "commands", "task_complete"];

/// The widest `{…}` that parses as a JSON object with a reply's field: the whole reply, else from each `{` (earliest first) to each
/// `}` (latest first), so a JSON object wrapped in prose or a code fence is found and braces inside the prose
/// before or after it do not confuse the search.
fn find_object(text: &str) -> Result<serde_json::Map<String, Value>, String> {
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text.trim()) {
        return Ok(map);
    }
    let opens: Vec<usize> = text.match_indices('{').map(|(i, _)| i).collect();
    let closes: Vec<usize> = text.match_indices('}').map(|(i, _)| i).collect();
    if opens.is_empty() {
        return Err(
            "the reply holds no JSON object; answer with one JSON object as described".into(),
        );
    }
    let mut first_error = None;
    // Bounded: a pathological reply with thousands of braces is not searched exhaustively.
    for &open in opens.iter().take(64) {
        for &close in closes.iter().rev().take(64).filter(|&&c| c > open) {
            match serde_json::from_str::<Value>(&text[open..=close]) {
                // An inner object (one command) of a broken reply is not the reply.
                Ok(Value::Object(map)) if FIELDS.iter().any(|f| map.contains_key(*f)) => {
                    return Ok(map);
                }
                Ok(_) => {}
                Err(e) => {
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
    }
    Err(match first_error {
        Some(e) => format!("the JSON object in the reply does not parse: {e}"),
        None => "the reply's braces do not enclose a JSON object".into(),
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"analysis": "empty dir", "plan": "list it", "commands": [{"keystrokes": "ls -la\n", "duration": 0.5}], "task_complete": false}"#;

    #[test]
    fn a_bare_object_parses() {
        let r = parse(GOOD).unwrap();
        assert_eq!(r.analysis, "empty dir");
        assert_eq!(r.plan, "list it");
        assert_eq!(
            r.commands,
            vec![Command {
                keystrokes: "ls -la\n".into(),
                duration: Duration::from_millis(500)
            }]
        );
        assert!(!r.task_complete);
    }

    #[test]
    fn fenced_and_prosey_replies_parse() {
        let fenced = format!("Here you go:\n```json\n{GOOD}\n```\n");
        assert_eq!(parse(&fenced).unwrap(), parse(GOOD).unwrap());
        let prose = format!("I think {{this}} is it. {GOOD} Let me know {{if}} that works.");
        assert_eq!(parse(&prose).unwrap().plan, "list it");
    }

    #[test]
    fn durations_default_and_are_clamped() {
        let r = parse(r#"{"commands": [{"keystrokes": "a"}, {"keystrokes": "b", "duration": 500}, {"keystrokes": "c", "duration": -3}, {"keystrokes": "d", "duration": "2"}]}"#).unwrap();
        let d: Vec<_> = r.commands.iter().map(|c| c.duration).collect();
        assert_eq!(
            d,
            [
                DEFAULT_DURATION,
                MAX_COMMAND_WAIT,
                Duration::ZERO,
                Duration::from_secs(2)
            ]
        );
    }

    #[test]
    fn completion_needs_no_commands() {
        let r = parse(r#"{"analysis": "done", "plan": "", "task_complete": true}"#).unwrap();
        assert!(r.task_complete && r.commands.is_empty());
    }

    #[test]
    fn broken_replies_say_what_is_wrong() {
        let e = parse("I will now run ls").unwrap_err();
        assert!(e.contains("no JSON object"), "{e}");
        let e = parse(r#"{"analysis": "x", "commands": [{"keystrokes": "ls"}"#).unwrap_err();
        assert!(e.contains("does not parse"), "{e}");
        let e = parse(r#"{"analysis": "x", "plan": "y"}"#).unwrap_err();
        assert!(e.contains("no `commands`"), "{e}");
    }

    #[test]
    fn wrong_types_are_named() {
        let e = parse(r#"{"commands": "ls"}"#).unwrap_err();
        assert!(e.contains("`commands` must be a list, not a string"), "{e}");
        let e = parse(r#"{"commands": [{"keystrokes": 5}]}"#).unwrap_err();
        assert!(
            e.contains("commands[0].keystrokes must be a string, not a number"),
            "{e}"
        );
        let e = parse(r#"{"commands": [], "task_complete": "maybe"}"#).unwrap_err();
        assert!(e.contains("`task_complete` must be true or false"), "{e}");
        let e = parse(r#"{"analysis": 3, "commands": []}"#).unwrap_err();
        assert!(e.contains("`analysis` must be a string"), "{e}");
    }
}

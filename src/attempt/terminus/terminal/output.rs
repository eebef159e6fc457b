//! Turning tmux captures into what the model reads: lines without trailing blanks, the part of the history that is
//! new since the previous capture, and a head-and-tail cut of long output.

/// The lines of a capture, each without trailing whitespace, with trailing blank lines dropped (the empty rows below
/// the cursor are not output).
pub fn capture_lines(capture: &str) -> Vec<String> {
    let mut lines: Vec<String> = capture
        .lines()
        .map(|line| line.trim_end().to_string())
        .collect();
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    lines
}

/// What `current` adds to `previous`, both from [`capture_lines`] of the whole history. Every line of `previous`
/// but its last is finished (history and the rows above the cursor), so `current` must start with them; the last
/// line is where the cursor was (usually the prompt) and is returned again, now with what was typed on it. `None`
/// when `current` does not continue `previous` (the screen was cleared, the history was trimmed, a full-screen
/// program drew over it): the caller then shows the visible screen instead.
pub fn new_output(previous: &[String], current: &[String]) -> Option<String> {
    let finished = previous.len().saturating_sub(1);
    if current.len() < finished || current[..finished] != previous[..finished] {
        return None;
    }
    Some(current[finished..].join("\n"))
}

/// `text` cut to at most `max` bytes: its head and its tail around a line saying how many bytes were left out,
/// never splitting a UTF-8 character. Text that fits is returned unchanged.
pub fn truncate_output(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let marker = |omitted: usize| format!("\n[... {omitted} bytes of output omitted ...]\n");
    // The marker is sized for the most that could be omitted, so the real one (never longer) fits too.
    let Some(room) = max.checked_sub(marker(text.len()).len()) else {
        return text[..text.floor_char_boundary(max)].to_string();
    };
    let head = text.floor_char_boundary(room / 2);
    let tail = text.ceil_char_boundary(text.len() - (room - head));
    format!("{}{}{}", &text[..head], marker(tail - head), &text[tail..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        capture_lines(text)
    }

    #[test]
    fn captures_lose_trailing_blanks() {
        assert_eq!(lines("a  \n\nb \n\n   \n"), ["a", "", "b"]);
        assert!(lines("\n\n").is_empty());
    }

    #[test]
    fn only_what_follows_the_previous_capture_is_new() {
        let before = lines("$ echo one\none\n$ ");
        let after = lines("$ echo one\none\n$ echo two\ntwo\n$ ");
        assert_eq!(
            new_output(&before, &after).as_deref(),
            Some("$ echo two\ntwo\n$")
        );
        // Nothing typed, nothing printed: the prompt line again.
        assert_eq!(new_output(&before, &before).as_deref(), Some("$"));
        // The first capture of a session shows everything.
        assert_eq!(
            new_output(&[], &after).as_deref(),
            Some(after.join("\n").as_str())
        );
    }

    #[test]
    fn a_rewritten_history_is_not_diffed() {
        let before = lines("$ echo one\none\n$ ");
        assert_eq!(new_output(&before, &lines("$ vim\n~\n~")), None);
        assert_eq!(new_output(&before, &lines("$")), None);
    }

    #[test]
    fn long_output_keeps_head_and_tail() {
        let text: String = (1..=20_000).map(|n| format!("{n}\n")).collect();
        let cut = truncate_output(&text, 10_000);
        assert!(cut.len() <= 10_000, "{}", cut.len());
        assert!(cut.starts_with("1\n2\n3\n"));
        assert!(cut.ends_with("19999\n20000\n"));
        let (_, after) = cut.split_once("\n[... ").expect("a marker");
        let (number, _) = after.split_once(' ').expect("a count");
        let omitted: usize = number.parse().expect("a number");
        let marker = format!("\n[... {omitted} bytes of output omitted ...]\n");
        assert!(cut.contains(&marker));
        assert_eq!(cut.len() - marker.len() + omitted, text.len());
        assert_eq!(truncate_output("short", 10), "short");
    }

    #[test]
    fn cuts_never_split_a_character() {
        let text = "日本語".repeat(5_000);
        for max in [0, 1, 5, 10, 60, 61, 62, 100, 1_001, 10_000] {
            let cut = truncate_output(&text, max);
            assert!(cut.len() <= max, "max {max}: {}", cut.len());
        }
        let cut = truncate_output(&text, 10_000);
        assert!(cut.starts_with("日本語") && cut.ends_with("日本語"));
    }
}

//! What the model's keystrokes mean to tmux: a whole string that names a key is pressed as that key, anything else
//! is text to type, sent in pieces small enough for one tmux call each.

/// Keys tmux knows by name (see "KEY BINDINGS" in tmux(1)); any of them may carry `C-`, `M-` and `S-` modifiers.
const NAMED_KEYS: &[&str] = &[
    "Enter", "Escape", "Tab", "BTab", "BSpace", "Space", "Up", "Down", "Left", "Right", "Home",
    "End", "PageUp", "PgUp", "PPage", "PageDown", "PgDn", "NPage", "Insert", "IC", "Delete", "DC",
    "F1", "F2", "F3", "F4", "F5", "F6", "F7", "F8", "F9", "F10", "F11", "F12",
];

/// True when the whole of `keystrokes` names one key: a named key (`Enter`, `Escape`, `Up`, `F5`, …) with or
/// without modifiers (`C-Up`, `S-Tab`), or a modifier followed by one printable ASCII character (`C-c`, `M-x`,
/// `C-M-a`). A bare character is not a key name: it is typed as text, which comes to the same thing.
///
/// `;` is left out on purpose: tmux reads an argument that ends in `;` as a command separator.
pub fn is_key_name(keystrokes: &str) -> bool {
    let mut rest = keystrokes;
    let mut modifiers = 0;
    while let Some(after) = ["C-", "M-", "S-"]
        .iter()
        .find_map(|m| rest.strip_prefix(m))
        .filter(|after| !after.is_empty())
    {
        rest = after;
        modifiers += 1;
    }
    if NAMED_KEYS.contains(&rest) {
        return true;
    }
    let mut chars = rest.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => modifiers > 0 && c.is_ascii_graphic() && c != ';',
        _ => false,
    }
}

/// Text to type, as tmux will receive it: a Windows line end is one Enter, not two.
pub(super) fn literal_text(keystrokes: &str) -> String {
    keystrokes.replace("\r\n", "\n")
}

/// `text` cut into pieces of at most `max` bytes (at least one character each), never inside a UTF-8 character,
/// preferring to end a piece just after a line end so a command line and its Enter travel together.
pub(super) fn pieces(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if rest.len() <= max {
            out.push(rest);
            break;
        }
        let mut end = rest.floor_char_boundary(max);
        if end == 0 {
            end = rest.ceil_char_boundary(1);
        } else if let Some(newline) = rest[..end].rfind('\n') {
            end = newline + 1;
        }
        let (piece, tail) = rest.split_at(end);
        out.push(piece);
        rest = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_are_recognised_only_as_whole_strings() {
        for key in [
            "C-c", "C-d", "C-z", "C-l", "Enter", "Escape", "Tab", "BSpace", "Up", "Down", "Left",
            "Right", "Home", "End", "PageUp", "PageDown", "M-x", "C-M-a", "S-Tab", "C-Up", "F5",
            "C-[",
        ] {
            assert!(is_key_name(key), "{key} should be a key name");
        }
        for text in [
            "", "c", "C-", "C-cc", "Enter\n", " Enter", "echo hi", "C-;", "M-é", "ls -la\n", "Upp",
            "C-c C-c",
        ] {
            assert!(!is_key_name(text), "{text:?} should be typed as text");
        }
    }

    #[test]
    fn crlf_is_one_enter() {
        assert_eq!(literal_text("a\r\nb\n"), "a\nb\n");
    }

    #[test]
    fn pieces_join_back_and_respect_the_limit() {
        let text = format!(
            "{}\n{}é日本{}",
            "a".repeat(10),
            "b".repeat(25),
            "c".repeat(7)
        );
        for max in [1, 2, 3, 4, 8, 16, 100] {
            let parts = pieces(&text, max);
            assert_eq!(parts.concat(), text, "max {max}");
            // A piece exceeds `max` only when one character is longer than `max`.
            assert!(
                parts.iter().all(|p| p.len() <= max.max(3)),
                "max {max}: {parts:?}"
            );
        }
        assert_eq!(pieces("ab\ncd\nef", 7), ["ab\ncd\n", "ef"]);
        assert!(pieces("", 4).is_empty());
    }
}

//! The conversation sent to the model, and its condensation when it nears the context window: the first prompt
//! and the last few turns stay, the turns between are replaced by one message listing the commands they ran.

use super::model::ChatMessage;
use super::prompt;

/// Most commands a summary lists (the latest ones); older ones are counted.
const SUMMARY_COMMANDS: usize = 100;
/// Longest command quoted in a summary.
const SUMMARY_COMMAND_CHARS: usize = 200;

#[derive(Debug, Clone)]
struct Entry {
    message: ChatMessage,
    // The keystrokes an assistant message led to (for a summary: all the commands it stands for).
    ran: Vec<String>,
    // Turns a summary stands for (0 for other messages).
    turns: usize,
}

/// The messages of one run: a first user prompt, then assistant and user messages in turn.
#[derive(Debug, Clone, Default)]
pub struct History {
    entries: Vec<Entry>,
    // The API's prompt token count of the last call and the characters the history held then.
    calibration: Option<(u64, usize)>,
    condensations: u32,
}

impl History {
    /// Add a user message.
    pub fn push_user(&mut self, content: String) {
        self.entries.push(Entry {
            message: ChatMessage::user(content),
            ran: Vec::new(),
            turns: 0,
        });
    }

    /// Add the model's answer and the keystrokes it led to.
    pub fn push_assistant(&mut self, content: String, ran: Vec<String>) {
        self.entries.push(Entry {
            message: ChatMessage::assistant(content),
            ran,
            turns: 0,
        });
    }

    /// Set the keystrokes of the last assistant message (known after they ran).
    pub fn set_last_ran(&mut self, ran: Vec<String>) {
        if let Some(entry) = self
            .entries
            .iter_mut()
            .rev()
            .find(|e| e.message.role == "assistant")
        {
            entry.ran = ran;
        }
    }

    /// The messages to send.
    pub fn messages(&self) -> Vec<ChatMessage> {
        self.entries.iter().map(|e| e.message.clone()).collect()
    }

    /// How often the history was condensed.
    pub fn condensations(&self) -> u32 {
        self.condensations
    }

    fn chars(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.message.content.len() + 16)
            .sum()
    }

    /// Remember what the API counted for the history as it was sent.
    pub fn calibrate(&mut self, prompt_tokens: u64, sent_chars: usize) {
        if prompt_tokens > 0 {
            self.calibration = Some((prompt_tokens, sent_chars));
        }
    }

    /// Characters of the history now (to pass to [`History::calibrate`] after the call).
    pub fn size_chars(&self) -> usize {
        self.chars()
    }

    /// Estimated prompt tokens: four characters a token, or the API's last count plus the growth since, whichever
    /// is larger.
    pub fn estimated_tokens(&self) -> u64 {
        let chars = self.chars();
        let rough = (chars / 4) as u64;
        match self.calibration {
            Some((tokens, at)) => rough.max(tokens + (chars.saturating_sub(at) / 4) as u64),
            None => rough,
        }
    }

    /// Replace all but the first prompt and the last `keep_turns` turns by a summary. False when there was
    /// nothing left to condense.
    pub fn condense(&mut self, keep_turns: usize) -> bool {
        let keep = (2 * keep_turns.max(1)).saturating_sub(1);
        let body = self.entries.len().saturating_sub(1);
        if body <= keep {
            return false;
        }
        let removed: Vec<Entry> = self.entries.drain(1..1 + body - keep).collect();
        if removed.len() == 1 && removed[0].turns > 0 {
            // Only the previous summary would go: put it back.
            self.entries.insert(
                1,
                removed.into_iter().next().unwrap_or_else(|| unreachable!()),
            );
            return false;
        }
        let turns: usize = removed
            .iter()
            .map(|e| {
                if e.turns > 0 {
                    e.turns
                } else {
                    usize::from(e.message.role == "assistant")
                }
            })
            .sum();
        let ran: Vec<String> = removed.into_iter().flat_map(|e| e.ran).collect();
        let shown: Vec<String> = ran
            .iter()
            .skip(ran.len().saturating_sub(SUMMARY_COMMANDS))
            .map(|c| {
                crate::attempt::outcome::truncate_chars(&format!("{c:?}"), SUMMARY_COMMAND_CHARS)
            })
            .collect();
        let mut text = prompt::summary(turns, &shown);
        if ran.len() > shown.len() {
            text.push_str(&format!(
                "\n[{} older commands are not listed.]",
                ran.len() - shown.len()
            ));
        }
        self.entries.insert(
            1,
            Entry {
                message: ChatMessage::assistant(text),
                ran,
                turns,
            },
        );
        self.calibration = None;
        self.condensations += 1;
        tracing::info!(
            turns,
            "condensed the conversation to fit the context window"
        );
        true
    }

    /// Cut the last message to about `max_chars`, keeping its head and tail: the last resort when one output
    /// alone is too long for the window.
    pub fn cut_last(&mut self, max_chars: usize) {
        if let Some(last) = self.entries.last_mut() {
            let text = &last.message.content;
            if text.len() > max_chars {
                let head = floor(text, max_chars / 2);
                let tail = ceil(text, text.len() - max_chars / 2);
                last.message.content = format!(
                    "{}\n[… {} characters cut …]\n{}",
                    &text[..head],
                    tail - head,
                    &text[tail..]
                );
                self.calibration = None;
            }
        }
    }
}

fn floor(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(turns: usize) -> History {
        let mut h = History::default();
        h.push_user("first".into());
        for t in 0..turns {
            h.push_assistant(format!("answer {t}"), vec![format!("cmd{t}\n")]);
            h.push_user(format!("output {t}"));
        }
        h
    }

    #[test]
    fn condensing_keeps_the_first_prompt_and_the_last_turns() {
        let mut h = history(6);
        assert!(h.condense(2));
        let m = h.messages();
        let roles: Vec<_> = m.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "user", "assistant", "user"]);
        assert_eq!(m[0].content, "first");
        assert!(m[1].content.contains("5 earlier turns"), "{}", m[1].content);
        assert!(m[1].content.contains("cmd0") && m[1].content.contains("cmd4"));
        assert_eq!(m[2].content, "output 4");
        assert_eq!(m[4].content, "output 5");
        // A second condensation folds the first summary in.
        h.push_assistant("answer 6".into(), vec!["cmd6\n".into()]);
        h.push_user("output 6".into());
        assert!(h.condense(1));
        let m = h.messages();
        assert_eq!(m.len(), 3);
        assert!(
            m[1].content.contains("7 earlier turns") && m[1].content.contains("cmd0"),
            "{}",
            m[1].content
        );
        assert!(!h.condense(1), "nothing left to condense");
    }

    #[test]
    fn cutting_keeps_head_and_tail() {
        let mut h = History::default();
        h.push_user(format!("{}{}", "a".repeat(1000), "z".repeat(1000)));
        h.cut_last(100);
        let m = &h.messages()[0].content;
        assert!(
            m.starts_with("aaaa") && m.ends_with("zzzz") && m.len() < 200,
            "{m}"
        );
    }
}

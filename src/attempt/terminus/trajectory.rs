//! The run as an ATIF trajectory (Agent Trajectory Interchange Format, as Harbor writes `trajectory.json`): a
//! step per message, the agent's steps with their keystrokes as `bash_command` tool calls, what the terminal
//! printed as their observations, and token counts per step and in total.

use serde_json::{Value, json};

use super::TERMINUS_2;

/// The ATIF version written.
pub const SCHEMA_VERSION: &str = "ATIF-v1.4";

/// One keystrokes-and-output pair of an agent step.
#[derive(Debug, Clone)]
pub struct ToolRun {
    /// What was typed.
    pub keystrokes: String,
    /// Seconds waited.
    pub duration: f64,
    /// What the terminal returned.
    pub output: String,
}

/// Collects steps as the loop runs.
#[derive(Debug, Clone)]
pub struct Trajectory {
    session_id: String,
    model: String,
    steps: Vec<Value>,
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl Trajectory {
    /// An empty trajectory of a run of `model`.
    pub fn new(model: &str) -> Self {
        Self {
            session_id: uuid::Uuid::new_v4().to_string(),
            model: model.to_string(),
            steps: Vec::new(),
            prompt_tokens: 0,
            completion_tokens: 0,
        }
    }

    fn push(&mut self, mut step: Value) {
        step["step_id"] = json!(self.steps.len() + 1);
        step["timestamp"] = json!(chrono::Utc::now().to_rfc3339());
        self.steps.push(step);
    }

    /// A message the loop sent the model.
    pub fn user(&mut self, message: &str) {
        self.push(json!({ "source": "user", "message": message }));
    }

    /// Something the loop did on its own (condensing the history).
    pub fn system(&mut self, message: &str) {
        self.push(json!({ "source": "system", "message": message }));
    }

    /// One answer of the model and what its keystrokes printed.
    pub fn agent(
        &mut self,
        message: &str,
        runs: &[ToolRun],
        prompt_tokens: u64,
        completion_tokens: u64,
    ) {
        let step = self.steps.len() + 1;
        let id = |i: usize| format!("call_{step}_{}", i + 1);
        let tool_calls: Vec<Value> = runs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                json!({
                    "tool_call_id": id(i),
                    "function_name": "bash_command",
                    "arguments": { "keystrokes": r.keystrokes, "duration": r.duration },
                })
            })
            .collect();
        let results: Vec<Value> = runs
            .iter()
            .enumerate()
            .map(|(i, r)| json!({ "source_call_id": id(i), "content": r.output }))
            .collect();
        self.prompt_tokens += prompt_tokens;
        self.completion_tokens += completion_tokens;
        self.push(json!({
            "source": "agent",
            "model_name": self.model,
            "message": message,
            "tool_calls": tool_calls,
            "observation": { "results": results },
            "metrics": { "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens },
        }));
    }

    /// The trajectory as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "schema_version": SCHEMA_VERSION,
            "session_id": self.session_id,
            "agent": { "name": TERMINUS_2, "version": env!("CARGO_PKG_VERSION"), "model_name": self.model },
            "steps": self.steps,
            "final_metrics": {
                "total_prompt_tokens": self.prompt_tokens,
                "total_completion_tokens": self.completion_tokens,
                "total_steps": self.steps.len(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_numbered_and_tokens_summed() {
        let mut t = Trajectory::new("gpt-test");
        t.user("do it");
        let run = ToolRun {
            keystrokes: "ls\n".into(),
            duration: 0.5,
            output: "a b".into(),
        };
        t.agent("{...}", &[run], 10, 3);
        t.agent("{...}", &[], 12, 4);
        let j = t.to_json();
        assert_eq!(j["schema_version"], SCHEMA_VERSION);
        assert_eq!(j["agent"]["name"], "terminus-2");
        assert_eq!(j["steps"][1]["step_id"], 2);
        assert_eq!(
            j["steps"][1]["tool_calls"][0]["arguments"]["keystrokes"],
            "ls\n"
        );
        assert_eq!(
            j["steps"][1]["observation"]["results"][0]["source_call_id"],
            "call_2_1"
        );
        assert_eq!(j["steps"][1]["observation"]["results"][0]["content"], "a b");
        assert_eq!(j["final_metrics"]["total_prompt_tokens"], 22);
        assert_eq!(j["final_metrics"]["total_completion_tokens"], 7);
        assert_eq!(j["final_metrics"]["total_steps"], 3);
    }
}

//! Which agent runs a job's attempts, and with which model: the job's `metadata.agent` / `metadata.model` when the
//! platform sets them, otherwise Terminus 2 when the worker has a model API key, else the oracle.

use serde_json::Value;

use super::agent::ORACLE;
use super::terminus::TERMINUS_2;
use crate::config::OpenAiConfig;

/// The agent of a job's attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentChoice {
    /// The task's own solution (`solution/solve.sh`).
    Oracle,
    /// The Terminus 2 LLM agent with this model.
    Terminus2 {
        /// The model name sent to the API.
        model: String,
    },
}

/// Why a job's agent cannot run here; the text becomes the job's `error_message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentChoiceError {
    /// `metadata.agent` names an agent this worker does not have.
    #[error(
        "the job asks for the agent {0:?}, but this worker runs only \"oracle\" and \"terminus-2\""
    )]
    Unknown(String),
    /// Terminus 2 was asked for, but no model API key is configured.
    #[error(
        "the job asks for the Terminus 2 agent, but this worker has no OPENAI_API_KEY configured, so it cannot call a model"
    )]
    NoApiKey,
}

impl AgentChoice {
    /// The choice for a job with this `metadata`, on a worker with (or without) a model API.
    pub fn for_job(
        metadata: Option<&Value>,
        openai: Option<&OpenAiConfig>,
    ) -> Result<AgentChoice, AgentChoiceError> {
        let asked = |key: &str| {
            metadata
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        let terminus = match asked("agent") {
            None => openai.is_some(),
            Some(name) => match name.to_ascii_lowercase().replace('_', "-").as_str() {
                "oracle" => false,
                "terminus-2" | "terminus2" | "terminus" => true,
                _ => return Err(AgentChoiceError::Unknown(name.to_string())),
            },
        };
        if !terminus {
            return Ok(AgentChoice::Oracle);
        }
        let openai = openai.ok_or(AgentChoiceError::NoApiKey)?;
        let model = asked("model").map_or_else(|| openai.model.clone(), str::to_string);
        Ok(AgentChoice::Terminus2 { model })
    }

    /// The name recorded in `metadata.agent` and `result.json`.
    pub fn name(&self) -> &'static str {
        match self {
            AgentChoice::Oracle => ORACLE,
            AgentChoice::Terminus2 { .. } => TERMINUS_2,
        }
    }

    /// The model, for agents that call one.
    pub fn model(&self) -> Option<&str> {
        match self {
            AgentChoice::Oracle => None,
            AgentChoice::Terminus2 { model } => Some(model),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use serde_json::json;

    fn api() -> OpenAiConfig {
        OpenAiConfig {
            api_key: Secret::new("sk-test".to_string()),
            base_url: None,
            model: "gpt-default".into(),
        }
    }

    #[test]
    fn metadata_decides_then_the_key() {
        let key = api();
        let choose = |m: Value, k: Option<&OpenAiConfig>| AgentChoice::for_job(Some(&m), k);
        assert_eq!(choose(json!({}), None), Ok(AgentChoice::Oracle));
        assert_eq!(
            choose(json!({}), Some(&key)),
            Ok(AgentChoice::Terminus2 {
                model: "gpt-default".into()
            })
        );
        assert_eq!(
            choose(json!({"agent": "oracle"}), Some(&key)),
            Ok(AgentChoice::Oracle)
        );
        assert_eq!(
            choose(json!({"agent": "terminus-2", "model": "gpt-x"}), Some(&key)),
            Ok(AgentChoice::Terminus2 {
                model: "gpt-x".into()
            })
        );
        assert_eq!(
            choose(json!({"agent": "Terminus_2"}), None),
            Err(AgentChoiceError::NoApiKey)
        );
        assert_eq!(
            choose(json!({"agent": "claude-code"}), Some(&key)),
            Err(AgentChoiceError::Unknown("claude-code".into()))
        );
        assert_eq!(AgentChoice::for_job(None, None), Ok(AgentChoice::Oracle));
        assert!(
            AgentChoiceError::NoApiKey
                .to_string()
                .contains("OPENAI_API_KEY")
        );
    }
}

//! `task.toml` as written, read with serde: the sections that differ from [`TaskSpec`](super::TaskSpec) (two spellings
//! of one setting, a renamed key), and the `deserialize_with` helpers that check each value.
//!
//! Every helper's error starts with "must …" and names no key: the key is found from the error's position in the
//! file ([`super::TaskSpec::parse`]), so one helper serves every key of its kind.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::value::MapAccessDeserializer;
use serde::de::{Error, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::{Table, Value};

use super::{AgentConfig, EnvironmentConfig, TaskSpec, VerifierConfig};

/// The whole file.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct TaskToml {
    #[serde(deserialize_with = "string")]
    version: Option<String>,
    /// Newer files' name for `version`; only read when `version` is absent.
    schema_version: Option<Value>,
    #[serde(deserialize_with = "table")]
    metadata: Table,
    #[serde(deserialize_with = "table")]
    agent: AgentConfig,
    #[serde(deserialize_with = "table")]
    verifier: VerifierConfig,
    #[serde(deserialize_with = "table")]
    environment: EnvironmentToml,
}

impl TryFrom<TaskToml> for TaskSpec {
    type Error = String;

    fn try_from(file: TaskToml) -> Result<Self, String> {
        let version = match (file.version, file.schema_version) {
            (Some(version), _) => Some(version),
            (None, Some(Value::String(version))) => Some(version),
            (None, Some(other)) => {
                return Err(format!(
                    "schema_version must be a string, not {}",
                    describe(&other)
                ));
            }
            (None, None) => None,
        };
        Ok(TaskSpec {
            version,
            metadata: file.metadata,
            agent: file.agent,
            verifier: file.verifier,
            environment: file.environment.into(),
        })
    }
}

/// `[environment]`: memory and storage each have two spellings.
#[derive(Deserialize)]
#[serde(default)]
pub(super) struct EnvironmentToml {
    #[serde(deserialize_with = "positive_seconds")]
    build_timeout_sec: f64,
    #[serde(deserialize_with = "non_empty_string")]
    docker_image: Option<String>,
    #[serde(deserialize_with = "cpu_count")]
    cpus: Option<f64>,
    #[serde(deserialize_with = "memory_whole_mib")]
    memory_mb: Option<u64>,
    #[serde(deserialize_with = "memory_size_mib")]
    memory: Option<u64>,
    #[serde(deserialize_with = "whole_mib")]
    storage_mb: Option<u64>,
    #[serde(deserialize_with = "size_mib")]
    storage: Option<u64>,
    #[serde(deserialize_with = "non_empty_string")]
    workdir: Option<String>,
    #[serde(deserialize_with = "string_map")]
    env: BTreeMap<String, String>,
    #[serde(deserialize_with = "boolean")]
    allow_internet: bool,
}

impl Default for EnvironmentToml {
    fn default() -> Self {
        let defaults = EnvironmentConfig::default();
        Self {
            build_timeout_sec: defaults.build_timeout_sec,
            docker_image: None,
            cpus: None,
            memory_mb: None,
            memory: None,
            storage_mb: None,
            storage: None,
            workdir: None,
            env: BTreeMap::new(),
            allow_internet: defaults.allow_internet,
        }
    }
}

impl From<EnvironmentToml> for EnvironmentConfig {
    fn from(file: EnvironmentToml) -> Self {
        Self {
            build_timeout_sec: file.build_timeout_sec,
            docker_image: file.docker_image,
            cpus: file.cpus,
            // Like Harbor, the older spelling wins when both are present.
            memory_mb: file.memory.or(file.memory_mb),
            storage_mb: file.storage.or(file.storage_mb),
            workdir: file.workdir,
            env: file.env,
            allow_internet: file.allow_internet,
        }
    }
}

/// A section: a table read as `T`; anything else is refused.
pub(super) fn table<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(TableVisitor::<T>::new("a table"))
}

/// A string.
pub(super) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::String(text) => Ok(Some(text)),
        other => Err(must("a string", &other)),
    }
}

/// `true` or `false`.
pub(super) fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Value::deserialize(d)? {
        Value::Boolean(value) => Ok(value),
        other => Err(must("true or false", &other)),
    }
}

/// A string with something in it.
pub(super) fn non_empty_string<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    match string(d)? {
        Some(text) if text.trim().is_empty() => Err(D::Error::custom("must not be empty")),
        checked => Ok(checked),
    }
}

/// A table of strings (environment variables).
pub(super) fn string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let map: BTreeMap<String, TomlString> =
        d.deserialize_any(TableVisitor::new("a table of strings"))?;
    Ok(map
        .into_iter()
        .map(|(name, value)| (name, value.0))
        .collect())
}

/// One value of a [`string_map`]; its own type so an error points at the entry, not the table.
struct TomlString(String);

impl<'de> Deserialize<'de> for TomlString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(text) => Ok(Self(text)),
            other => Err(must("a string", &other)),
        }
    }
}

/// A number of seconds a [`Duration`] can hold, above zero once rounded to nanoseconds (a zero timeout is
/// refused rather than read as "no time at all" or "no limit").
pub(super) fn positive_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = number(d)?;
    if value.is_finite()
        && value > 0.0
        && Duration::try_from_secs_f64(value).is_ok_and(|limit| !limit.is_zero())
    {
        Ok(value)
    } else {
        Err(D::Error::custom(format!(
            "must be a positive number of seconds, not {value}"
        )))
    }
}

/// [`positive_seconds`], for keys that may be left out.
pub(super) fn optional_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    positive_seconds(d).map(Some)
}

/// The fewest CPUs a container may be limited to: Docker refuses less, and a limit that rounds to zero
/// nanoCPUs would read as "no limit".
pub const MIN_CPUS: f64 = 0.01;

/// The least memory a container may be limited to, in MiB: Docker refuses less than 6 MiB.
pub const MIN_MEMORY_MIB: u64 = 6;

/// `cpus`: a finite number of at least [`MIN_CPUS`] (fractions allowed).
pub(super) fn cpu_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let value = number(d)?;
    if !(value.is_finite() && value > 0.0) {
        return Err(D::Error::custom(format!(
            "must be a positive number, not {value}"
        )));
    }
    if value < MIN_CPUS {
        return Err(D::Error::custom(format!(
            "must be at least {MIN_CPUS} (Docker's smallest CPU limit; less would mean no limit), not {value}"
        )));
    }
    Ok(Some(value))
}

/// `memory_mb`: [`whole_mib`], at least [`MIN_MEMORY_MIB`].
pub(super) fn memory_whole_mib<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    at_least_min_memory(whole_mib(d)?)
}

/// `memory`: [`size_mib`], at least [`MIN_MEMORY_MIB`].
pub(super) fn memory_size_mib<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    at_least_min_memory(size_mib(d)?)
}

fn at_least_min_memory<E: Error>(value: Option<u64>) -> Result<Option<u64>, E> {
    match value {
        Some(mib) if mib < MIN_MEMORY_MIB => Err(E::custom(format!(
            "must be at least {MIN_MEMORY_MIB} MiB (Docker's smallest memory limit), not {mib} MiB"
        ))),
        checked => Ok(checked),
    }
}

fn number<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    match Value::deserialize(d)? {
        Value::Float(value) => Ok(value),
        // i64 to f64 rounds beyond 2^53, which no timeout or CPU count reaches.
        Value::Integer(value) => Ok(value as f64),
        other => Err(must("a number", &other)),
    }
}

/// `memory_mb`, `storage_mb`: a whole number of MiB (`2048.0` is accepted, as Harbor accepts it).
pub(super) fn whole_mib<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Integer(value) => positive_mib(value as f64).map(Some),
        Value::Float(value) if value.fract() == 0.0 => positive_mib(value).map(Some),
        other => Err(must("a whole number of MiB", &other)),
    }
}

/// `memory`, `storage`: the older spelling, a size like `"2G"`, `"512M"` or `"1024"` (MiB), or a whole number of MiB.
pub(super) fn size_mib<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Value::deserialize(d)? {
        Value::String(text) => parse_size_mib(&text).map(Some).ok_or_else(|| {
            D::Error::custom(format!(
                "must be a size like \"2G\", \"512M\" or \"1024\" (MiB), not {text:?}"
            ))
        }),
        Value::Integer(value) => positive_mib(value as f64).map(Some),
        other => Err(must("a size like \"2G\"", &other)),
    }
}

fn positive_mib<E: Error>(value: f64) -> Result<u64, E> {
    mib_from_f64(value).ok_or_else(|| {
        E::custom(format!(
            "must be a positive whole number of MiB, not {value}"
        ))
    })
}

/// Reads `"2G"`, `"1.5G"`, `"512M"`, `"512MiB"`, `"1024"` (MiB when no unit) as MiB, rounding down like Harbor.
/// `None` for anything else, and for sizes under 1 MiB.
fn parse_size_mib(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit.trim().to_ascii_uppercase().as_str() {
        "K" | "KB" | "KI" | "KIB" => 1.0 / 1024.0,
        "" | "M" | "MB" | "MI" | "MIB" => 1.0,
        "G" | "GB" | "GI" | "GIB" => 1024.0,
        "T" | "TB" | "TI" | "TIB" => 1024.0 * 1024.0,
        _ => return None,
    };
    mib_from_f64((number * factor).floor())
}

fn mib_from_f64(value: f64) -> Option<u64> {
    // 2^63 MiB is far beyond any machine; the bound keeps the cast exact.
    (1.0..9.2e18).contains(&value).then_some(value as u64)
}

/// "must be {what}, not {the value}".
fn must<E: Error>(what: &str, value: &Value) -> E {
    E::custom(format!("must be {what}, not {}", describe(value)))
}

/// How a value reads in an error message: its type, and the value itself when short.
pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::Table(_) => "a table".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        _ => format!("the {} {value}", value.type_str()),
    }
}

/// Reads a table as `T`, and refuses anything else as "must be {what}, not …".
struct TableVisitor<T> {
    what: &'static str,
    target: PhantomData<T>,
}

impl<T> TableVisitor<T> {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            target: PhantomData,
        }
    }

    fn refuse<E: Error>(&self, value: Value) -> E {
        must(self.what, &value)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for TableVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map))
    }

    fn visit_bool<E: Error>(self, v: bool) -> Result<T, E> {
        Err(self.refuse(Value::Boolean(v)))
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<T, E> {
        Err(self.refuse(Value::Integer(v)))
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<T, E> {
        Err(self.refuse(Value::Integer(i64::try_from(v).unwrap_or(i64::MAX))))
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<T, E> {
        Err(self.refuse(Value::Float(v)))
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<T, E> {
        Err(self.refuse(Value::String(v.to_owned())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<T, A::Error> {
        Err(self.refuse(Value::Array(Vec::new())))
    }
}

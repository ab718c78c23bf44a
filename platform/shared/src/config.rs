//! Reading configuration from the environment with errors that name the
//! variable, never a panic.

use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
#[error("environment variable {name} is malformed ({value:?}): {reason}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

/// `Ok(None)` when `name` is unset or empty, the parsed value when set.
pub fn env_var<T>(name: &str) -> Result<Option<T>, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => v.trim().parse().map(Some).map_err(|e: T::Err| ConfigError {
            name: name.to_owned(),
            value: v,
            reason: e.to_string(),
        }),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError {
            name: name.to_owned(),
            value: String::new(),
            reason: "not valid UTF-8".into(),
        }),
    }
}

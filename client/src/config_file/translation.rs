//! What a configuration file says, as flags: the settings it stands for and its warnings.

use std::ffi::OsString;

use serde_json::Value;

/// One flag the file stands for: its long name and its values (none for a switch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub flag: String,
    pub values: Vec<String>,
}

impl Setting {
    pub(super) fn switch(flag: &str) -> Self {
        Self {
            flag: flag.to_owned(),
            values: Vec::new(),
        }
    }

    pub(super) fn value(flag: &str, value: impl Into<String>) -> Self {
        Self {
            flag: flag.to_owned(),
            values: vec![value.into()],
        }
    }

    pub(super) fn values(flag: &str, values: Vec<String>) -> Self {
        Self {
            flag: flag.to_owned(),
            values,
        }
    }

    /// The command-line tokens: `--flag` for a switch, `--flag=VALUE` per value (with `=`, so a
    /// value that starts with `-` stays a value).
    pub(super) fn tokens(&self) -> Vec<OsString> {
        if self.values.is_empty() {
            return vec![format!("--{}", self.flag).into()];
        }
        self.values
            .iter()
            .map(|value| format!("--{}={value}", self.flag).into())
            .collect()
    }
}

/// What a file says: the flags, in the file's order, and one warning per key that counts for
/// nothing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Translation {
    pub settings: Vec<Setting>,
    pub warnings: Vec<String>,
}

/// A string, number or boolean as the flag's text.
pub(super) fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

//! Typed configuration, layered: defaults (in each service) → an optional
//! file named by `SHORTFLEET_CONFIG_FILE` (lines of `KEY=value`) → the process
//! environment. Services read every key through a [`ConfigReader`], which
//! records each invalid key instead of stopping at the first, so an operator
//! sees every mistake in one start attempt.
//!
//! Tests build a [`ConfigSource`] from a map and never touch process-global
//! environment variables.

use std::{collections::HashMap, fmt, path::Path, str::FromStr, time::Duration};

/// Exit code for an invalid configuration (`EX_CONFIG` from sysexits.h).
pub const EXIT_CONFIG: i32 = 78;

/// A value that must never reach a log line; `Debug` prints a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The merged key/value pairs a service reads its configuration from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    values: HashMap<String, String>,
}

impl ConfigSource {
    /// Builds the source from the process environment, layering the file named
    /// by `SHORTFLEET_CONFIG_FILE` (if any) underneath it.
    pub fn from_process_env() -> Result<Self, ConfigError> {
        Self::layered(std::env::vars())
    }

    /// Like [`Self::from_process_env`] but from any set of pairs.
    pub fn layered(env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("SHORTFLEET_"))
            .collect();
        let mut values = HashMap::new();
        if let Some(file) = env.get("SHORTFLEET_CONFIG_FILE") {
            values.extend(read_env_file(Path::new(file))?);
        }
        values.extend(env);
        Ok(Self { values })
    }

    /// A source holding exactly these pairs (tests, tools).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            values: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// Returns a copy with `key` set, overriding any earlier layer.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.values.insert(key.into(), value.into());
        self
    }

    pub fn reader(&self) -> ConfigReader<'_> {
        ConfigReader {
            source: self,
            errors: Vec::new(),
        }
    }
}

fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        problems: vec![format!(
            "SHORTFLEET_CONFIG_FILE: cannot read {}: {e}",
            path.display()
        )],
    })?;
    let mut pairs = Vec::new();
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) => pairs.push((k.trim().to_owned(), v.trim().to_owned())),
            None => problems.push(format!(
                "SHORTFLEET_CONFIG_FILE: line {} of {} is not KEY=value",
                n + 1,
                path.display()
            )),
        }
    }
    if problems.is_empty() {
        Ok(pairs)
    } else {
        Err(ConfigError { problems })
    }
}

/// Every invalid key found while reading a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.problems.join("; "))
    }
}

impl std::error::Error for ConfigError {}

/// Reads typed values, remembering every problem until [`Self::finish`].
pub struct ConfigReader<'a> {
    source: &'a ConfigSource,
    errors: Vec<String>,
}

impl ConfigReader<'_> {
    /// The raw value of `key`, if set and not empty.
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.source
            .values
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Parses `key`, falling back to `default` when unset.
    pub fn get<T>(&mut self, key: &str, default: T) -> T
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.raw(key) {
            None => default,
            Some(raw) => match raw.parse() {
                Ok(v) => v,
                Err(e) => {
                    self.errors.push(format!("{key}={raw:?}: {e}"));
                    default
                }
            },
        }
    }

    /// A string value with a default.
    pub fn string(&mut self, key: &str, default: &str) -> String {
        self.raw(key).unwrap_or(default).to_owned()
    }

    /// A duration written in milliseconds.
    pub fn millis(&mut self, key: &str, default_ms: u64) -> Duration {
        Duration::from_millis(self.get(key, default_ms))
    }

    /// A comma-separated list.
    pub fn list(&mut self, key: &str, default: &[&str]) -> Vec<String> {
        match self.raw(key) {
            None => default.iter().map(|s| (*s).to_owned()).collect(),
            Some(raw) => raw
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }

    /// Records a problem found by the caller's own checks.
    pub fn invalid(&mut self, key: &str, why: impl fmt::Display) {
        self.errors.push(format!("{key}: {why}"));
    }

    /// Ends reading: `Ok(value)` when every key was valid.
    pub fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError {
                problems: self.errors,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_invalid_key_at_once() {
        let source = ConfigSource::from_pairs([("A", "x"), ("B", "-1"), ("C", "7")]);
        let mut r = source.reader();
        let a: u16 = r.get("A", 1);
        let b: u32 = r.get("B", 2);
        let c: u32 = r.get("C", 3);
        assert_eq!((a, b, c), (1, 2, 7));
        let err = r.finish(()).unwrap_err();
        assert_eq!(err.problems.len(), 2);
        assert!(err.problems[0].starts_with("A="));
        assert!(err.problems[1].starts_with("B="));
    }

    #[test]
    fn environment_overrides_the_file_layer() {
        let dir = std::env::temp_dir().join(format!("sf-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("svc.env");
        std::fs::write(&file, "# comment\nSHORTFLEET_X=file\nSHORTFLEET_Y=file\n").unwrap();
        let source = ConfigSource::layered([
            (
                "SHORTFLEET_CONFIG_FILE".to_owned(),
                file.display().to_string(),
            ),
            ("SHORTFLEET_Y".to_owned(), "env".to_owned()),
            ("UNRELATED".to_owned(), "ignored".to_owned()),
        ])
        .unwrap();
        let mut r = source.reader();
        assert_eq!(r.string("SHORTFLEET_X", "d"), "file");
        assert_eq!(r.string("SHORTFLEET_Y", "d"), "env");
        assert_eq!(r.string("UNRELATED", "d"), "d");
    }

    #[test]
    fn lists_split_on_commas_and_skip_blanks() {
        let source = ConfigSource::from_pairs([("L", "a, b,,c")]);
        let mut r = source.reader();
        assert_eq!(r.list("L", &[]), vec!["a", "b", "c"]);
        assert_eq!(r.list("M", &["d"]), vec!["d"]);
    }
}

//! Loading a daemon's TOML config file.
//!
//! Files are bounded (1 MiB), must say `version = 1`, and unknown keys are errors (every config
//! struct is `deny_unknown_fields`). Semantic checks return every problem at once as
//! [`ConfigError`]s naming the key path, so an operator fixes a file in one pass.

use std::{fmt, path::Path};

use serde::de::DeserializeOwned;

/// Largest config file accepted.
pub const MAX_CONFIG_LEN: u64 = 1 << 20;

/// The config file format version this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// One problem with a config, naming the key (`storage.gc.high_watermark`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, or the file path for file-level errors.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Reads and parses a TOML config file.
///
/// # Errors
/// The file is unreadable, over [`MAX_CONFIG_LEN`], not valid TOML for `T` (unknown keys
/// included), or its `version` is not [`CONFIG_VERSION`].
pub fn load_file<T: DeserializeOwned>(path: &Path) -> Result<T, Vec<ConfigError>> {
    let file_err = |m: String| vec![ConfigError::new(path.display().to_string(), m)];
    let meta = std::fs::metadata(path).map_err(|e| file_err(e.to_string()))?;
    if meta.len() > MAX_CONFIG_LEN {
        return Err(file_err(format!(
            "{} bytes; config files are limited to {MAX_CONFIG_LEN}",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    parse(&text).map_err(|mut errs| {
        for e in &mut errs {
            if e.key.is_empty() {
                e.key = path.display().to_string();
            }
        }
        errs
    })
}

/// The config at `path`, or the defaults when no file is given.
///
/// # Errors
/// As [`load_file`].
pub fn load_or_default<T: DeserializeOwned + Default>(
    path: Option<&Path>,
) -> Result<T, Vec<ConfigError>> {
    path.map_or_else(|| Ok(T::default()), load_file)
}

/// Prints every config error to stderr, for a binary about to exit with
/// [`EXIT_CONFIG`].
pub fn print_errors(errs: &[ConfigError]) {
    for e in errs {
        eprintln!("config error: {e}");
    }
}

/// Exit status of a binary refusing its config (`EX_CONFIG`-like, as sysexits' 64).
pub const EXIT_CONFIG: u8 = 64;

/// Sets `slot` to the value of a command-line flag that was given.
pub fn set<T>(slot: &mut T, flag: Option<T>) {
    if let Some(v) = flag {
        *slot = v;
    }
}

/// Parses TOML text into `T`, checking the `version` key first.
///
/// # Errors
/// As [`load_file`].
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, Vec<ConfigError>> {
    let value: toml::Table =
        toml::from_str(text).map_err(|e| vec![ConfigError::new("", e.to_string())])?;
    match value.get("version").and_then(toml::Value::as_integer) {
        Some(v) if v == i64::from(CONFIG_VERSION) => {}
        Some(v) => {
            return Err(vec![ConfigError::new(
                "version",
                format!("is {v}; this build reads version {CONFIG_VERSION}"),
            )]);
        }
        None => {
            return Err(vec![ConfigError::new(
                "version",
                format!("missing; add `version = {CONFIG_VERSION}`"),
            )]);
        }
    }
    toml::from_str(text).map_err(|e| vec![ConfigError::new("", e.to_string().trim().to_owned())])
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        version: u32,
        name: String,
    }

    impl Default for Sample {
        fn default() -> Self {
            Self {
                version: CONFIG_VERSION,
                name: "x".into(),
            }
        }
    }

    #[test]
    fn reads_known_keys_and_defaults() {
        let s: Sample = parse("version = 1\n").unwrap();
        assert_eq!(s, Sample::default());
        let s: Sample = parse("version = 1\nname = \"y\"\n").unwrap();
        assert_eq!(s.name, "y");
    }

    #[test]
    fn unknown_key_is_an_error() {
        let errs = parse::<Sample>("version = 1\nnmae = \"y\"\n").unwrap_err();
        assert!(errs[0].message.contains("nmae"), "{errs:?}");
    }

    #[test]
    fn version_is_required_and_checked() {
        assert_eq!(
            parse::<Sample>("name = \"y\"\n").unwrap_err()[0].key,
            "version"
        );
        assert_eq!(
            parse::<Sample>("version = 2\n").unwrap_err()[0].key,
            "version"
        );
    }

    #[test]
    fn oversize_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("dfcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.toml");
        std::fs::write(&path, vec![b'#'; (MAX_CONFIG_LEN + 1) as usize]).unwrap();
        let errs = load_file::<Sample>(&path).unwrap_err();
        assert!(errs[0].message.contains("limited"), "{errs:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

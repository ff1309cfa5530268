//! Static configuration helpers: typed listen addresses, config files with
//! unknown keys rejected, and one-line errors.
//!
//! Each binary owns one typed config struct and merges, lowest first:
//! built-in defaults, the optional file (`--config`/`AIOS_CONFIG`), then the
//! environment and flags (clap reads `AIOS_*` and flags itself).

use std::{
    fmt,
    net::{SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::{Deserialize, Deserializer, de::DeserializeOwned};

/// A configuration problem, reported to the operator as one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// File named by `--config`.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid YAML/JSON for this binary.
    #[error("invalid config file {path}: {reason}")]
    ParseFile {
        /// File named by `--config`.
        path: PathBuf,
        /// Parser message with line and column.
        reason: String,
    },
    /// A setting has a value that cannot work.
    #[error("invalid {setting} '{value}': {reason}")]
    Invalid {
        /// Flag name, e.g. `--listen`.
        setting: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {setting} {addr}: {source}")]
    Bind {
        /// Flag name, e.g. `--admin-listen`.
        setting: &'static str,
        /// Address that failed.
        addr: SocketAddr,
        /// Underlying I/O error.
        source: std::io::Error,
    },
}

impl ConfigError {
    /// Shorthand for [`ConfigError::Invalid`].
    pub fn invalid(
        setting: &'static str,
        value: impl fmt::Display,
        reason: impl fmt::Display,
    ) -> Self {
        Self::Invalid {
            setting,
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }

    /// The error as a single line, whatever the underlying messages contain.
    pub fn one_line(&self) -> String {
        one_line(&self.to_string())
    }
}

/// Collapses whitespace runs (newlines included) into single spaces.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Reads a YAML (or JSON, which is YAML) config file into `T`.
///
/// `T` should carry `#[serde(deny_unknown_fields)]` so that a misspelt key
/// is an error rather than a silently ignored setting.
pub fn load_file<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    if text.trim().is_empty() {
        // An empty file means "no settings", not a parse error.
        return serde_yaml::from_str("{}").map_err(|e| parse_error(path, &e));
    }
    serde_yaml::from_str(&text).map_err(|e| parse_error(path, &e))
}

fn parse_error(path: &Path, e: &serde_yaml::Error) -> ConfigError {
    ConfigError::ParseFile {
        path: path.to_path_buf(),
        reason: one_line(&e.to_string()),
    }
}

// === ListenAddr ===

/// A socket address to listen on: `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT`
/// (resolved once, at start). Port 0 picks a free port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self(addr));
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err("expected HOST:PORT, e.g. 127.0.0.1:7070".into());
        };
        if host.is_empty() {
            return Err("missing host: use 0.0.0.0:PORT to listen on every interface".into());
        }
        port.parse::<u16>()
            .map_err(|_| format!("invalid port '{port}': expected 0-65535"))?;
        let mut addrs = s
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve host '{host}': {e}"))?;
        addrs
            .next()
            .map(Self)
            .ok_or_else(|| format!("host '{host}' has no address"))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|reason| {
            serde::de::Error::custom(format!("invalid address '{text}': {reason}"))
        })
    }
}

/// Parses a duration such as `500ms`, `10s`, `2m`, `1h` or `90d`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration '{s}': expected a number and a unit, e.g. 10s"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => {
            return Err(format!(
                "invalid duration '{s}': unit must be ms, s, m, h or d"
            ));
        }
    };
    std::time::Duration::try_from_secs_f64(seconds)
        .map_err(|e| format!("invalid duration '{s}': {e}"))
}

/// Deserializes an optional duration written as text (`10s`).
pub fn deserialize_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    let text = Option::<String>::deserialize(deserializer)?;
    text.map(|t| parse_duration(&t).map_err(serde::de::Error::custom))
        .transpose()
}

/// A secret string whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Accepts keys of 32-256 printable ASCII characters.
    pub fn new(value: String) -> Result<Self, String> {
        if !(32..=256).contains(&value.len()) || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be 32-256 printable ASCII characters without spaces".into());
        }
        Ok(Self(value))
    }

    /// Accepts any non-empty secret without line breaks (etcd passwords
    /// have no shape rule of their own).
    pub fn password(value: String) -> Result<Self, String> {
        if value.is_empty() || value.contains(['\n', '\r']) {
            return Err("must be non-empty and one line".into());
        }
        Ok(Self(value))
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn listen_addr_accepts_ip_host_and_rejects_garbage() {
        assert_eq!(
            "127.0.0.1:7070".parse::<ListenAddr>().unwrap().0.port(),
            7070
        );
        assert_eq!("[::1]:0".parse::<ListenAddr>().unwrap().0.port(), 0);
        assert!(
            "localhost:7070"
                .parse::<ListenAddr>()
                .unwrap()
                .0
                .ip()
                .is_loopback()
        );
        assert!(
            "7070"
                .parse::<ListenAddr>()
                .unwrap_err()
                .contains("HOST:PORT")
        );
        assert!(
            ":7070"
                .parse::<ListenAddr>()
                .unwrap_err()
                .contains("missing host")
        );
        assert!(
            "127.0.0.1:99999"
                .parse::<ListenAddr>()
                .unwrap_err()
                .contains("invalid port")
        );
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(
            parse_duration("90d").unwrap(),
            Duration::from_secs(90 * 86_400)
        );
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct Sample {
        listen: Option<ListenAddr>,
    }

    #[test]
    fn config_files_reject_unknown_keys_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "listen: 127.0.0.1:1\nlisten-typo: 1\n").unwrap();
        let err = load_file::<Sample>(&path).unwrap_err().one_line();
        assert!(err.contains("unknown field `listen-typo`"), "{err}");
        assert!(!err.contains('\n'));

        std::fs::write(&path, "").unwrap();
        assert!(load_file::<Sample>(&path).unwrap().listen.is_none());

        let missing = dir.path().join("missing.yaml");
        let err = load_file::<Sample>(&missing).unwrap_err().one_line();
        assert!(err.starts_with("cannot read config file"), "{err}");
    }
}

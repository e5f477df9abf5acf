//! Where to connect and as whom: the optional config file
//! (`~/.config/chat-tui/config.toml`), the known servers file next to it
//! (see [`crate::tls`]), and the server address as users type it
//! (`192.168.1.23`, `host:9000`, `ws://host:8765/ws`, `wss://host`), turned
//! into the WebSocket URL the client dials.

use std::path::{Path, PathBuf};

use chat_proto::limits::DEFAULT_PORT;
use serde::Deserialize;

/// Defaults read from the config file; command-line flags and environment
/// variables win over these.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Server address, in any form [`server_url`] accepts.
    pub server: Option<String>,
    /// User name.
    pub user: Option<String>,
    /// Rooms to join at start, in the order they appear in the room list.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Which messages ring the bell and show a desktop notification:
    /// `off`, `mentions`, or `mentions-and-dms` (the default).
    pub notify: Option<crate::notify::Level>,
}

/// Why the config file could not be used.
#[derive(Debug)]
pub enum ConfigError {
    /// The file exists but could not be read.
    Read(PathBuf, std::io::Error),
    /// The file is not valid TOML for [`Config`].
    Parse(PathBuf, String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Read(path, err) => write!(f, "cannot read {}: {err}", path.display()),
            ConfigError::Parse(path, err) => {
                let err = err.trim_end().replace('\n', " ");
                write!(f, "{} is not a valid config file: {err}", path.display())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// The default config file: `$XDG_CONFIG_HOME/chat-tui/config.toml`, else
/// `~/.config/chat-tui/config.toml` (on every platform, as documented).
pub fn default_path() -> Option<PathBuf> {
    Some(config_dir()?.join("config.toml"))
}

/// The file of `wss://` servers whose certificate the user accepted:
/// `known_servers` next to the default config file.
pub fn known_servers_path() -> Option<PathBuf> {
    Some(config_dir()?.join("known_servers"))
}

/// `$XDG_CONFIG_HOME/chat-tui`, else `~/.config/chat-tui`.
fn config_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|home| home.join(".config")))?;
    Some(base.join("chat-tui"))
}

/// Reads a config file. A missing file is not an error when `required` is
/// false (the default path); it is when the user named the file.
pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text).map_err(|err| ConfigError::Parse(path.to_owned(), err)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !required => {
            Ok(Config::default())
        }
        Err(err) => Err(ConfigError::Read(path.to_owned(), err)),
    }
}

/// Parses the text of a config file.
pub fn parse(text: &str) -> Result<Config, String> {
    toml::from_str(text).map_err(|err| err.to_string())
}

/// Why a server address was refused; the message is shown as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

impl std::fmt::Display for UrlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UrlError {}

/// Turns a server address as a user types it into a `ws://` or `wss://`
/// URL: the scheme defaults to `ws://`, the port to 8765 (for `wss://` too:
/// chat-server serves TLS on its usual port) and the path to `/ws`.
/// `http://` is taken to mean `ws://`, and `https://` `wss://`.
pub fn server_url(input: &str) -> Result<String, UrlError> {
    let input = input.trim();
    if input.is_empty() {
        return Err(UrlError("no server address given".into()));
    }
    let (scheme, rest) = match input.split_once("://") {
        None => ("ws", input),
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "ws" | "http" => ("ws", rest),
            "wss" | "https" => ("wss", rest),
            _ => {
                return Err(UrlError(format!(
                    "{input}: unsupported scheme {scheme}://; use ws://HOST:PORT or wss://HOST:PORT"
                )))
            }
        },
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = if path.is_empty() || path == "/" {
        "/ws"
    } else {
        path
    };
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(UrlError(format!(
            "{input}: the path may not contain spaces"
        )));
    }
    if authority.contains('@') {
        return Err(UrlError(format!(
            "{input}: put the user name in --user, not in the address"
        )));
    }
    let (host, port) = split_host_port(authority)
        .ok_or_else(|| UrlError(format!("{input}: not a valid HOST[:PORT]")))?;
    Ok(format!("{scheme}://{host}:{port}{path}"))
}

/// Splits `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address.
/// The host is returned ready for a URL (IPv6 in brackets).
fn split_host_port(authority: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{v6}]"), port)
    } else if authority.matches(':').count() > 1 {
        authority.parse::<std::net::Ipv6Addr>().ok()?;
        (format!("[{authority}]"), None)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !ok {
            return None;
        }
        (host.to_owned(), port)
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0)?,
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_users_type() {
        let ok = |s: &str| server_url(s).unwrap();
        assert_eq!(ok("192.168.1.23"), "ws://192.168.1.23:8765/ws");
        assert_eq!(ok("192.168.1.23:9000"), "ws://192.168.1.23:9000/ws");
        assert_eq!(ok("ws://192.168.1.23:8765"), "ws://192.168.1.23:8765/ws");
        assert_eq!(ok("ws://host:8765/ws"), "ws://host:8765/ws");
        assert_eq!(ok("ws://host/"), "ws://host:8765/ws");
        assert_eq!(ok("WS://chat.lan/custom"), "ws://chat.lan:8765/custom");
        assert_eq!(ok("http://host:1"), "ws://host:1/ws");
        assert_eq!(ok("[::1]:9000"), "ws://[::1]:9000/ws");
        assert_eq!(ok("::1"), "ws://[::1]:8765/ws");
        assert_eq!(ok(" localhost "), "ws://localhost:8765/ws");
        assert_eq!(ok("wss://chat.lan"), "wss://chat.lan:8765/ws");
        assert_eq!(ok("WSS://[::1]:9000/x"), "wss://[::1]:9000/x");
        assert_eq!(ok("https://host:443"), "wss://host:443/ws");
    }

    #[test]
    fn bad_addresses() {
        for bad in [
            "",
            "host:0",
            "host:99999",
            "host:x",
            "ftp://host",
            "a b",
            "[zz]:1",
            ":80",
            "user@host",
        ] {
            assert!(server_url(bad).is_err(), "{bad:?} accepted");
        }
        assert!(server_url("wss://user@host").is_err());
    }

    #[test]
    fn config_file() {
        let config = parse(
            r#"
            server = "192.168.1.23"
            user = "alice"
            rooms = ["general", "random"]
            "#,
        )
        .unwrap();
        assert_eq!(config.server.as_deref(), Some("192.168.1.23"));
        assert_eq!(config.rooms, ["general", "random"]);
        assert_eq!(parse("").unwrap(), Config::default());
        assert!(parse("sever = 1").is_err());
    }

    #[test]
    fn missing_default_file_is_fine() {
        let path = Path::new("/nonexistent/chat-tui/config.toml");
        assert_eq!(load(path, false).unwrap(), Config::default());
        assert!(load(path, true).is_err());
    }
}

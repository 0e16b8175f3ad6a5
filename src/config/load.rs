//! Reading the configuration file and merging the layers.
//!
//! Precedence, lowest first: built-in defaults, the board preset, the file, the environment, the
//! command line (clap resolves the last two: a flag beats its `PISPEAKER_*` variable).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::{args::ConfigArgs, layer::Layer, Config, DEFAULT_CONFIG_PATH};

/// The web app's settings file in the state directory.
pub const WEB_SETTINGS_FILE: &str = "web-settings.toml";
use crate::board;

/// A configuration problem; the daemon prints it and exits with [`ConfigError::EXIT_CODE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl ConfigError {
    /// Exit status for an invalid configuration (what clap uses for bad flags, too).
    pub const EXIT_CODE: u8 = 2;
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Builds the effective configuration from all sources.
pub fn load(args: &ConfigArgs) -> Result<Config, ConfigError> {
    let (path, explicit) = match &args.config {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let file = match std::fs::read_to_string(&path) {
        Ok(text) => parse_layer(&text, &path)?,
        // No file at the default path: a speaker with defaults, as after a fresh install.
        Err(e) if e.kind() == io::ErrorKind::NotFound && !explicit => Layer::default(),
        Err(e) => {
            return Err(ConfigError(format!(
                "{}: cannot read the config file: {}",
                path.display(),
                describe_io(&e)
            )))
        }
    };
    let cli = args.to_layer();
    let cache = cli
        .cache
        .clone()
        .or_else(|| file.cache.clone())
        .unwrap_or_else(|| PathBuf::from(super::DEFAULT_CACHE_DIR));
    let web = web_layer(&cache.join(WEB_SETTINGS_FILE));

    let mut config = Config::default();
    // Both layers validated the name already; a failure here would be a preset file that does
    // not parse, which the board tests rule out.
    if let Some(name) = cli
        .board
        .as_ref()
        .or(web.board.as_ref())
        .or(file.board.as_ref())
    {
        let preset = board::find(&name.0).map_err(|e| ConfigError(format!("board: {e}")))?;
        config.apply(&preset.speaker);
    }
    config.apply(&file);
    config.apply(&web);
    config.apply(&cli);
    Ok(config)
}

/// The settings made in the web app, in the state directory (the daemon's own, writable, on the
/// image's data partition), between the config file and the environment. The config file stays
/// the administrator's (a read-only conffile for the service). A file that does not parse (it is
/// only ever written whole and validated) is ignored with a warning rather than stop a speaker
/// whose users have no shell.
fn web_layer(path: &Path) -> Layer {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(_) => return Layer::default(),
    };
    match parse_layer(&text, path) {
        Ok(mut layer) => {
            // Where the state directory is cannot come from inside it.
            layer.cache = None;
            layer
        }
        Err(e) => {
            log::warn!("ignoring the web app's settings: {e}");
            Layer::default()
        }
    }
}

/// Parses one TOML layer; errors name the origin, line, column and key.
pub(crate) fn parse_layer(text: &str, origin: &Path) -> Result<Layer, ConfigError> {
    let deserializer = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let (line, column) = inner
            .span()
            .map(|span| line_and_column(text, span.start))
            .unwrap_or((1, 1));
        let message = inner.message().trim_end().to_string();
        let key = if key.is_empty() || key == "." {
            String::new()
        } else {
            format!("key '{key}': ")
        };
        ConfigError(format!(
            "{}:{line}:{column}: {key}{message}",
            origin.display()
        ))
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file (check the --config path)".into(),
        io::ErrorKind::PermissionDenied => {
            "permission denied (the file must be readable by the pispeaker user)".into()
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Layer, String> {
        parse_layer(text, Path::new("/etc/pispeaker/config.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_and_column("a = 1\nbé = 2", 6), (2, 1));
        assert_eq!(line_and_column("a = 1\nbé = 2", 12), (2, 6));
    }

    #[test]
    fn bad_value_names_file_line_column_and_key() {
        let err = parse("name = \"x\"\n\nbitrate = 123\n").unwrap_err();
        assert_eq!(
            err,
            "/etc/pispeaker/config.toml:3:11: key 'bitrate': bitrate 123 is not one of 96, 160, 320"
        );
    }

    #[test]
    fn nested_keys_are_named_with_their_section() {
        let err = parse("[jellyfin]\nserver = \"jellyfin.local\"\n").unwrap_err();
        assert!(
            err.starts_with("/etc/pispeaker/config.toml:2:10: key 'jellyfin.server': "),
            "{err}"
        );
        assert!(err.contains("http://"), "{err}");
    }

    #[test]
    fn unknown_keys_and_syntax_errors_have_positions() {
        let err = parse("name = \"a\"\nvolume = 3\n").unwrap_err();
        assert!(err.starts_with("/etc/pispeaker/config.toml:2:1: "), "{err}");
        assert!(err.contains("unknown field `volume`"), "{err}");
        let err = parse("name = \"unterminated\n").unwrap_err();
        assert!(err.starts_with("/etc/pispeaker/config.toml:1:"), "{err}");
    }

    #[test]
    fn out_of_range_and_wrong_type() {
        let err = parse("initial-volume = 150").unwrap_err();
        assert!(
            err.contains(":1:18: key 'initial-volume': 150 is not a volume between 0 and 100"),
            "{err}"
        );
        let err = parse("zeroconf-port = \"x\"").unwrap_err();
        assert!(
            err.contains(":1:17: key 'zeroconf-port': invalid type"),
            "{err}"
        );
    }
}

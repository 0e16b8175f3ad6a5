//! The configuration as a user meets it: through the built binary, with real files, variables
//! and flags. Exit codes and messages are part of the interface.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_pispeaker");

/// Runs `pispeaker` with a clean PISPEAKER_* environment plus `env`.
fn pispeaker(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("PISPEAKER_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn");
    cmd.output().expect("run pispeaker")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(dir: &Path, text: &str) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn effective(args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    let out = pispeaker(args, env);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .parse()
        .expect("`pispeaker config` prints TOML")
}

#[test]
fn precedence_is_cli_then_env_then_file_then_preset_then_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "name = \"From File\"\nbitrate = 160\nboard = \"hifiberry-dacplus\"\nvolume-range = 40.0\n",
    );
    // defaults only (an empty file)
    let t = effective(&["config", "--config", "/dev/null"], &[]);
    assert_eq!(t["name"].as_str(), Some("pispeaker"));
    assert_eq!(t["alsa-mixer-control"].as_str(), Some("PCM"));
    // file over preset over defaults
    let t = effective(&["config", "--config", &file], &[]);
    assert_eq!(t["name"].as_str(), Some("From File"));
    assert_eq!(t["bitrate"].as_integer(), Some(160));
    assert_eq!(
        t["alsa-mixer-control"].as_str(),
        Some("Digital"),
        "from the preset"
    );
    assert_eq!(
        t["volume-range"].as_float(),
        Some(40.0),
        "file beats preset"
    );
    assert_eq!(t["initial-volume"].as_integer(), Some(50), "default");
    // env over file
    let t = effective(
        &["config", "--config", &file],
        &[("PISPEAKER_NAME", "From Env"), ("PISPEAKER_BITRATE", "96")],
    );
    assert_eq!(t["name"].as_str(), Some("From Env"));
    assert_eq!(t["bitrate"].as_integer(), Some(96));
    // CLI over env
    let t = effective(
        &["config", "--config", &file, "--name", "From Flag"],
        &[("PISPEAKER_NAME", "From Env")],
    );
    assert_eq!(t["name"].as_str(), Some("From Flag"));
    // nested keys and booleans
    let t = effective(
        &[
            "config",
            "--config",
            &file,
            "--jellyfin-server",
            "http://jf.lan:8096/",
            "--disable-discovery",
        ],
        &[("PISPEAKER_STATUS_LISTEN", "127.0.0.1:9000")],
    );
    assert_eq!(t["jellyfin"]["server"].as_str(), Some("http://jf.lan:8096"));
    assert_eq!(t["disable-discovery"].as_bool(), Some(true));
    assert_eq!(t["status"]["listen"].as_str(), Some("127.0.0.1:9000"));
}

#[test]
fn a_missing_file_at_the_default_path_is_fine_but_not_when_named() {
    let out = pispeaker(&["config", "--config", "/nonexistent/pispeaker.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/pispeaker.toml"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("no such file"), "{}", stderr(&out));
}

fn config_error(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), text);
    let out = pispeaker(&["config", "--config", &file], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(message.contains(&file), "names the file: {message}");
    message
}

#[test]
fn every_bad_file_names_file_line_column_and_key() {
    let m = config_error("name = \"x\"\nbitrate = 123\n");
    assert!(
        m.contains(":2:11: key 'bitrate': bitrate 123 is not one of 96, 160, 320"),
        "{m}"
    );

    let m = config_error("name = \"x\"\n\nvolume = 7\n");
    assert!(
        m.contains(":3:1:") && m.contains("unknown field `volume`"),
        "{m}"
    );

    let m = config_error("zeroconf-port = \"eighty\"\n");
    assert!(
        m.contains(":1:17: key 'zeroconf-port': invalid type"),
        "{m}"
    );

    let m = config_error("initial-volume = 101\n");
    assert!(
        m.contains(":1:18: key 'initial-volume': 101 is not a volume between 0 and 100"),
        "{m}"
    );

    let m = config_error("[status]\nlisten = \"7070\"\n");
    assert!(m.contains(":2:10: key 'status.listen'"), "{m}");

    let m = config_error("name = \"unterminated\n");
    assert!(m.contains(":1:"), "{m}");

    let m = config_error("device-type = \"toaster\"\n");
    assert!(m.contains("key 'device-type'") && m.contains("avr"), "{m}");
}

#[test]
fn an_unknown_board_lists_the_known_ones() {
    let m = config_error("board = \"hifiberry-dacplsu\"\n");
    assert!(m.contains(":1:9: key 'board'"), "{m}");
    for known in [
        "bcm2835-headphones",
        "hifiberry-dac",
        "hifiberry-dacplus",
        "iqaudio-dacplus",
        "usb-dac",
    ] {
        assert!(m.contains(known), "{m}");
    }
    let out = pispeaker(&["config", "--board", "nope"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("hifiberry-dacplus"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_flags_and_variables_exit_2_and_name_them() {
    let out = pispeaker(&["config", "--initial-volume", "150"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--initial-volume"),
        "{}",
        stderr(&out)
    );
    let out = pispeaker(&["config"], &[("PISPEAKER_BITRATE", "1000")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("1000"), "{}", stderr(&out));
}

#[test]
fn the_example_config_is_the_defaults() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/board/pispeaker.example.toml");
    let from_example = effective(&["config", "--config", example], &[]);
    let defaults = effective(&["config", "--config", "/dev/null"], &[]);
    assert_eq!(
        from_example, defaults,
        "every value in the example is the default"
    );
    // And every key of the effective config is documented in the example.
    let text = std::fs::read_to_string(example).unwrap();
    let mut keys: Vec<String> = Vec::new();
    for (key, value) in &defaults {
        match value {
            toml::Value::Table(section) => keys.extend(section.keys().map(|k| k.to_string())),
            _ => keys.push(key.clone()),
        }
    }
    for key in keys {
        assert!(text.contains(&format!("{key} =")), "example lacks {key}");
    }
}

#[test]
fn an_unusable_state_directory_is_reported_with_path_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let state = blocker.join("state");
    let out = pispeaker(
        &[
            "--config",
            "/dev/null",
            "--cache",
            state.to_str().unwrap(),
            "--disable-discovery",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let m = stderr(&out);
    assert!(m.contains(&state.display().to_string()), "{m}");
    assert!(m.contains("--cache"), "{m}");
}

#[test]
fn an_unknown_pcm_exits_1_and_lists_the_machine() {
    let dir = tempfile::tempdir().unwrap();
    let out = pispeaker(
        &[
            "--config",
            "/dev/null",
            "--cache",
            dir.path().to_str().unwrap(),
            "--device",
            "hw:CARD=pispeaker-missing,DEV=0",
            "--disable-discovery",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let m = stderr(&out);
    assert!(m.contains("hw:CARD=pispeaker-missing,DEV=0"), "{m}");
    assert!(m.contains("--device"), "{m}");
    assert!(
        m.contains("card") || m.contains("PCMs"),
        "lists what the machine has: {m}"
    );
}

#[test]
fn boards_lists_presets_with_config_txt_lines() {
    let out = pispeaker(&["boards"], &[]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("hifiberry-dacplus:"), "{text}");
    assert!(text.contains("dtoverlay=hifiberry-dacplus"), "{text}");
    assert!(text.contains("i2s-dac:"), "{text}");
    assert!(
        text.contains("(SD image: dtoverlay=pispeaker-hifiberry-dacplus"),
        "{text}"
    );
}

//! `pispeaker status`: reads the running daemon's `/status.json` and prints it for a person.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

/// Prints the daemon's status; exit status 1 (with the reason) when it cannot be read.
pub async fn print_status(base_url: String) -> ExitCode {
    let url = format!("{}/status.json", base_url.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let response = match client
        .get(&url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pispeaker is not answering at {url}: {e}\nIs it running? (systemctl status pispeaker) Is the status page enabled ([status] enabled = true)?");
            return ExitCode::from(1);
        }
    };
    match response.json::<Value>().await {
        Ok(status) => {
            print!("{}", render(&status));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{url} did not return the status JSON: {e}");
            ExitCode::from(1)
        }
    }
}

/// Formats the status JSON as aligned lines.
pub fn render(status: &Value) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        out.push_str(&format!("{label:<16} {value}\n"));
    };
    line("speaker", text(&status["name"]));
    let state = text(&status["spotify"]["state"]);
    if status["spotify"]["premium_required"] == Value::Bool(true) {
        line("spotify", format!("{state} - Spotify Premium is required"));
    } else {
        line("spotify", state);
    }
    line("reconnects", text(&status["spotify"]["reconnect_count"]));
    line("sessions alive", text(&status["spotify"]["sessions_alive"]));
    let loss = &status["spotify"]["last_loss"];
    line(
        "last loss",
        if loss.is_null() {
            "-".into()
        } else {
            format!("{} at {}", text(&loss["reason"]), text(&loss["at"]))
        },
    );
    line("volume", format!("{}%", text(&status["volume_percent"])));
    // The audio side (with the web app on): what plays into what, and a switch that failed.
    let audio = &status["audio"];
    if audio.is_object() {
        line(
            "audio",
            format!(
                "{}, volume {} ({} curve)",
                audio["device"]
                    .as_str()
                    .unwrap_or("null sink (no sound card)"),
                text(&audio["volume_control"]),
                text(&audio["curve"])
            ),
        );
        if audio["error"].is_string() {
            line("audio error", text(&audio["error"]));
        }
    }
    let track = &status["spotify"]["track"];
    line(
        "playing",
        if track.is_null() {
            "-".into()
        } else {
            let paused = if status["spotify"]["playing"] == Value::Bool(true) {
                ""
            } else {
                " (paused)"
            };
            format!(
                "{} - {}{paused}",
                text(&track["artists"]),
                text(&track["name"])
            )
        },
    );
    // A/B updates (the SD image only).
    let update = &status["update"];
    if update.is_object() {
        line(
            "running",
            format!(
                "{} (slot {})",
                text(&update["running_version"]),
                text(&update["booted_slot"])
            ),
        );
        line(
            "other slot",
            format!(
                "{}: {} ({})",
                text(&update["other_slot"]),
                text(&update["other_version"]),
                text(&update["other_boot_status"])
            ),
        );
        let last = &update["last_update"];
        if last.is_object() {
            line(
                "last update",
                format!(
                    "{} at {}: {}",
                    text(&last["version"]),
                    text(&last["installed_at"]),
                    text(&last["result"])
                ),
            );
        }
    }
    line("jellyfin", text(&status["jellyfin"]["state"]));
    // `not_controllable`: what is wrong and what to do (see JellyfinState::NotControllable).
    for key in ["problem", "remedy"] {
        if status["jellyfin"][key].is_string() {
            line(&format!("jellyfin {key}"), text(&status["jellyfin"][key]));
        }
    }
    // The Jellyfin cast, once one has played since the daemon started.
    let cast = &status["jellyfin"]["cast"];
    if cast.is_object() {
        line("cast", text(&cast["state"]));
        if !cast["item_id"].is_null() {
            line("cast item", text(&cast["item_id"]));
            line(
                "cast position",
                format!(
                    "{} / {}",
                    seconds(&cast["position_seconds"]),
                    seconds(&cast["duration_seconds"])
                ),
            );
        }
        // queue_index is 0-based in the JSON (like Jellyfin's StartIndex); people count from 1.
        let queue = match cast["queue_index"].as_u64() {
            Some(i) => format!("{} of {}", i + 1, text(&cast["queue_length"])),
            None => format!("{} queued", text(&cast["queue_length"])),
        };
        line("cast queue", queue);
        let repeat = match cast["repeat"].as_str() {
            Some("RepeatNone") => "off".to_string(),
            Some("RepeatAll") => "all".to_string(),
            Some("RepeatOne") => "one".to_string(),
            _ => text(&cast["repeat"]),
        };
        let shuffle = if cast["shuffle"] == Value::Bool(true) {
            "on"
        } else {
            "off"
        };
        line("cast modes", format!("repeat {repeat}, shuffle {shuffle}"));
        let failed = &cast["last_failed"];
        if failed.is_object() {
            line(
                "cast failed",
                format!("{}: {}", text(&failed["item_id"]), text(&failed["reason"])),
            );
        }
    }
    // The SD image's boot partition settings: each value that could not be used.
    if let Some(problems) = status["boot_config"]["problems"].as_array() {
        let source = text(&status["boot_config"]["source"]);
        if problems.is_empty() {
            line("boot config", format!("{source}: ok"));
        }
        for problem in problems {
            let key = text(&problem["key"]);
            let message = text(&problem["message"]);
            if key.is_empty() {
                line("boot config", format!("{source}: {message}"));
            } else {
                line("boot config", format!("{source}: {key}: {message}"));
            }
        }
    }
    out
}

/// `12.3 s`, or `-` when not known.
fn seconds(v: &Value) -> String {
    match v.as_f64() {
        Some(s) => format!("{s:.1} s"),
        None => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "name": "Kitchen",
            "volume_percent": 40.0,
            "spotify": {"state": "connected", "reconnect_count": 0, "last_loss": null, "track": null},
            "jellyfin": {"state": "connected", "server": "http://jf:8096"},
        })
    }

    #[test]
    fn update_fields_are_shown_on_the_image_only() {
        assert!(!render(&base()).contains("other slot"));
        let mut status = base();
        status["update"] = crate::update_status::summarize(
            include_str!("../../tests/fixtures/rauc/status-after-install.json"),
            "0.1.0",
        )
        .unwrap();
        let text = render(&status);
        assert!(text.contains("running          0.1.0 (slot A)\n"), "{text}");
        assert!(
            text.contains("other slot       B: 0.3.0 (good)\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "last update      0.3.0 at 2026-12-04T09:43:44Z: installed; runs after the next reboot\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn premium_required_and_sessions_alive_are_shown() {
        let mut status = base();
        status["spotify"]["state"] = json!("discovery");
        status["spotify"]["premium_required"] = json!(true);
        status["spotify"]["sessions_alive"] = json!(0);
        let text = render(&status);
        assert!(
            text.contains("spotify          discovery - Spotify Premium is required\n"),
            "{text}"
        );
        assert!(text.contains("sessions alive   0\n"), "{text}");
        let text = render(&base());
        assert!(text.contains("spotify          connected\n"), "{text}");
    }

    #[test]
    fn a_speaker_nobody_can_control_says_why_and_what_to_do() {
        let mut status = base();
        status["jellyfin"] = json!({"state": "not_controllable", "server": "http://jf:8096",
            "problem": "no ForceKeepAlive", "remedy": "pair with Quick Connect"});
        let text = render(&status);
        assert!(text.contains("not_controllable\n"), "{text}");
        assert!(text.contains("no ForceKeepAlive\n"), "{text}");
        assert!(text.contains("pair with Quick Connect\n"), "{text}");
    }

    #[test]
    fn no_cast_lines_before_a_cast() {
        let text = render(&base());
        assert!(text.contains("jellyfin         connected\n"), "{text}");
        assert!(!text.contains("cast"), "{text}");
    }

    #[test]
    fn a_playing_cast_shows_item_position_queue_modes_and_the_last_failure() {
        let mut status = base();
        status["jellyfin"]["cast"] = json!({
            "state": "playing",
            "item_id": "0123456789abcdef0123456789abcdef",
            "position_seconds": 12.345,
            "duration_seconds": 180.0,
            "queue_index": 1,
            "queue_length": 4,
            "repeat": "RepeatAll",
            "shuffle": true,
            "last_failed": {"item_id": "fedcba9876543210fedcba9876543210", "reason": "stream: HTTP 500"},
        });
        let text = render(&status);
        for want in [
            "cast             playing\n",
            "cast item        0123456789abcdef0123456789abcdef\n",
            "cast position    12.3 s / 180.0 s\n",
            "cast queue       2 of 4\n",
            "cast modes       repeat all, shuffle on\n",
            "cast failed      fedcba9876543210fedcba9876543210: stream: HTTP 500\n",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
    }

    #[test]
    fn a_stopped_cast_shows_no_item_and_an_unknown_duration_is_a_dash() {
        let mut status = base();
        status["jellyfin"]["cast"] = json!({
            "state": "stopped", "item_id": null, "position_seconds": null,
            "duration_seconds": null, "queue_index": null, "queue_length": 3,
            "repeat": "RepeatNone", "shuffle": false, "last_failed": null,
        });
        let text = render(&status);
        assert!(text.contains("cast             stopped\n"), "{text}");
        assert!(text.contains("cast queue       3 queued\n"), "{text}");
        assert!(
            text.contains("cast modes       repeat off, shuffle off\n"),
            "{text}"
        );
        assert!(
            !text.contains("cast item") && !text.contains("cast failed"),
            "{text}"
        );
        status["jellyfin"]["cast"]["state"] = json!("paused");
        status["jellyfin"]["cast"]["item_id"] = json!("ab");
        status["jellyfin"]["cast"]["position_seconds"] = json!(3.0);
        let text = render(&status);
        assert!(text.contains("cast position    3.0 s / -\n"), "{text}");
    }
}

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
    line("spotify", text(&status["spotify"]["state"]));
    line("reconnects", text(&status["spotify"]["reconnect_count"]));
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
    line("jellyfin", text(&status["jellyfin"]["state"]));
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

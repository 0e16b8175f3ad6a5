//! `pispeaker drop-test`: the user's recovery recipe, automated, on the device.
//!
//! 1. find the running daemon and its access-point connection (remote port 4070) with its source
//!    port, from `/proc/<pid>/net/tcp*`;
//! 2. insert the two iptables DROP rules for that connection only (see [`super::drop_rules`]);
//! 3. follow the daemon's status page until it reports the loss, then a new connection, and
//!    playback in the state the user left it;
//! 4. print detection time, recovery time, volume before/after and PASS/FAIL;
//! 5. remove the rules on every exit path: normal end, error, timeout, Ctrl-C/SIGTERM (the guard is
//!    dropped), and rules left by a run that was killed outright are removed at the next start.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::signal::unix::{signal, SignalKind};

use super::ap_link::{connections_to_port, TcpConnection, AP_PORT};
use super::drop_rules::{remove_stale, DropRules};

/// Options of `pispeaker drop-test`.
#[derive(Debug, Clone)]
pub struct DropTestOptions {
    /// The daemon's pid; found by name when absent.
    pub pid: Option<u32>,
    /// Base URL of the daemon's status page.
    pub status_url: String,
    /// Give up (FAIL) after this long without recovery.
    pub timeout: Duration,
}

/// What the status page says, reduced to what the test follows.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub connected: bool,
    pub reconnect_count: u64,
    pub last_loss: Option<String>,
    pub volume: Option<f64>,
    pub playing: bool,
}

impl Observation {
    /// Reads the fields from `/status.json`, tolerating extra and missing ones.
    pub fn from_status(json: &Value) -> Observation {
        let spotify = json.get("spotify").unwrap_or(json);
        let state = spotify
            .get("state")
            .or_else(|| json.get("spotify"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let get = |key: &str| spotify.get(key).or_else(|| json.get(key));
        Observation {
            connected: state == "connected",
            reconnect_count: get("reconnect_count").and_then(Value::as_u64).unwrap_or(0),
            last_loss: get("last_loss")
                .filter(|v| !v.is_null())
                .map(|v| v.to_string()),
            volume: get("volume_percent")
                .or_else(|| get("volume"))
                .and_then(Value::as_f64),
            playing: get("playing").and_then(Value::as_bool).unwrap_or(false),
        }
    }
}

/// Where the test is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Rules in place; waiting for the daemon to notice.
    WaitingForLoss,
    /// The daemon reported the loss; waiting for it to be connected again (and playing, if it was).
    Recovering,
    Done,
}

/// Follows status snapshots; pure, so it is tested without a daemon.
#[derive(Debug)]
pub struct Progress {
    before: Observation,
    phase: Phase,
    detected_after: Option<Duration>,
    recovered_after: Option<Duration>,
    after: Option<Observation>,
}

impl Progress {
    pub fn new(before: Observation) -> Self {
        Self {
            before,
            phase: Phase::WaitingForLoss,
            detected_after: None,
            recovered_after: None,
            after: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Feeds one snapshot taken `elapsed` after the rules went in.
    pub fn observe(&mut self, now: &Observation, elapsed: Duration) -> Phase {
        if self.phase == Phase::WaitingForLoss {
            let lost = !now.connected
                || now.reconnect_count > self.before.reconnect_count
                || now.last_loss != self.before.last_loss;
            if lost {
                self.detected_after = Some(elapsed);
                self.phase = Phase::Recovering;
            }
        }
        if self.phase == Phase::Recovering {
            let reconnected = now.connected
                && (now.reconnect_count > self.before.reconnect_count
                    || now.last_loss != self.before.last_loss);
            if reconnected && now.playing == self.before.playing {
                self.recovered_after = Some(elapsed);
                self.after = Some(now.clone());
                self.phase = Phase::Done;
            }
        }
        self.phase
    }

    /// The report printed at the end; the bool is PASS.
    pub fn report(&self) -> (String, bool) {
        let fmt = |d: Option<Duration>| match d {
            Some(d) => format!("{:.1} s", d.as_secs_f64()),
            None => "never".to_string(),
        };
        let vol = |o: Option<&Observation>| match o.and_then(|o| o.volume) {
            Some(v) => format!("{v}"),
            None => "?".to_string(),
        };
        let volume_kept = match (
            self.before.volume,
            self.after.as_ref().and_then(|a| a.volume),
        ) {
            (Some(a), Some(b)) => (a - b).abs() < f64::EPSILON,
            _ => false,
        };
        let pass = self.phase == Phase::Done && volume_kept;
        let text = format!(
            "detection time:  {}\nrecovery time:   {}\nvolume before:   {}\nvolume after:    {}\nplaying before:  {}\nplaying after:   {}\nresult:          {}",
            fmt(self.detected_after),
            fmt(self.recovered_after),
            vol(Some(&self.before)),
            vol(self.after.as_ref()),
            self.before.playing,
            self.after.as_ref().map(|a| a.playing.to_string()).unwrap_or_else(|| "?".into()),
            if pass { "PASS" } else { "FAIL" }
        );
        (text, pass)
    }
}

/// Finds the pid of a running `pispeaker` daemon other than this process.
pub fn find_daemon_pid() -> Option<u32> {
    let me = std::process::id();
    let entries = std::fs::read_dir("/proc").ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| *pid != me)
        .find(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let is_drop_test = cmdline.split(|b| *b == 0).any(|arg| arg == b"drop-test");
            comm.trim() == "pispeaker" && !is_drop_test
        })
}

async fn fetch_status(client: &reqwest::Client, base: &str) -> Result<Observation, String> {
    let url = format!("{}/status.json", base.trim_end_matches('/'));
    let response = client
        .get(&url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(|e| format!("cannot read {url}: {e}"))?;
    let json: Value = response
        .json()
        .await
        .map_err(|e| format!("{url} did not return JSON: {e}"))?;
    Ok(Observation::from_status(&json))
}

/// Runs the drop test; the exit status is 0 for PASS, 1 for FAIL or a setup error.
pub async fn run(options: DropTestOptions) -> ExitCode {
    match run_inner(options).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("drop-test: {message}");
            ExitCode::from(1)
        }
    }
}

async fn run_inner(options: DropTestOptions) -> Result<bool, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root to insert iptables rules: run `sudo pispeaker drop-test`".into());
    }
    match remove_stale(&[]) {
        Ok(0) => {}
        Ok(n) => println!("removed {n} rule(s) left behind by an earlier, interrupted drop-test"),
        Err(e) => return Err(format!("cannot list iptables rules: {e}")),
    }
    let pid = options
        .pid
        .or_else(find_daemon_pid)
        .ok_or("no running pispeaker daemon found (start it, or pass --pid)")?;
    let conn = find_ap_connection(pid)?;
    println!(
        "daemon pid {pid}: access-point connection {} -> {}",
        conn.local, conn.remote
    );

    let client = reqwest::Client::new();
    let before = fetch_status(&client, &options.status_url).await?;
    if !before.connected {
        return Err("the daemon is not connected to Spotify: pick the speaker in the Spotify app and start playback first".into());
    }
    let mut progress = Progress::new(before);

    let rules = DropRules::for_connection(&conn);
    for rule in rules.describe() {
        println!("inserting: {rule}");
    }
    let guard = rules
        .insert()
        .map_err(|e| format!("cannot insert the rules: {e}"))?;
    let started = Instant::now();

    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_phase = progress.phase();
    let interrupted = loop {
        tokio::select! {
            _ = sigint.recv() => break true,
            _ = sigterm.recv() => break true,
            _ = tick.tick() => {
                let elapsed = started.elapsed();
                if elapsed > options.timeout {
                    println!("timed out after {} s", options.timeout.as_secs());
                    break false;
                }
                // The status page may itself be briefly busy; a missed sample is not a failure.
                if let Ok(now) = fetch_status(&client, &options.status_url).await {
                    let phase = progress.observe(&now, elapsed);
                    if phase != last_phase {
                        match phase {
                            Phase::Recovering => println!("session lost (after {:.1} s)", elapsed.as_secs_f64()),
                            Phase::Done => println!("reconnected and {} again", if now.playing { "playing" } else { "paused" }),
                            Phase::WaitingForLoss => {}
                        }
                        last_phase = phase;
                    }
                    if phase == Phase::Done {
                        break false;
                    }
                }
            }
        }
    };
    let removal = guard.remove();
    match &removal {
        Ok(()) => println!("rules removed"),
        Err(e) => println!("WARNING: {e}"),
    }
    if interrupted {
        println!("interrupted");
    }
    let (report, pass) = progress.report();
    println!("{report}");
    Ok(pass && !interrupted && removal.is_ok())
}

fn find_ap_connection(pid: u32) -> Result<TcpConnection, String> {
    let conns = connections_to_port(Some(pid), AP_PORT)
        .map_err(|e| format!("cannot read /proc/{pid}/net/tcp: {e}"))?;
    match conns.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "pid {pid} has no established connection to an access point on port {AP_PORT}: is a Spotify user connected? (behind a firewall that blocks 4070 librespot uses 443, which this test cannot tell apart from HTTPS)"
        )),
        many => Err(format!(
            "pid {pid} has {} connections to port {AP_PORT}; expected one",
            many.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obs(
        connected: bool,
        count: u64,
        loss: Option<&str>,
        volume: f64,
        playing: bool,
    ) -> Observation {
        Observation {
            connected,
            reconnect_count: count,
            last_loss: loss.map(|s| format!("\"{s}\"")),
            volume: Some(volume),
            playing,
        }
    }

    #[test]
    fn a_full_recovery_passes_with_times() {
        let mut p = Progress::new(obs(true, 0, None, 40.0, true));
        assert_eq!(
            p.observe(&obs(true, 0, None, 40.0, true), Duration::from_secs(5)),
            Phase::WaitingForLoss
        );
        assert_eq!(
            p.observe(
                &obs(false, 0, Some("keep-alive"), 40.0, false),
                Duration::from_secs(26)
            ),
            Phase::Recovering
        );
        assert_eq!(
            p.observe(
                &obs(true, 1, Some("keep-alive"), 40.0, false),
                Duration::from_secs(28)
            ),
            Phase::Recovering,
            "connected but not yet playing"
        );
        assert_eq!(
            p.observe(
                &obs(true, 1, Some("keep-alive"), 40.0, true),
                Duration::from_secs(29)
            ),
            Phase::Done
        );
        let (text, pass) = p.report();
        assert!(pass, "{text}");
        assert!(text.contains("detection time:  26.0 s"), "{text}");
        assert!(text.contains("recovery time:   29.0 s"), "{text}");
    }

    #[test]
    fn a_volume_jump_fails() {
        let mut p = Progress::new(obs(true, 0, None, 40.0, false));
        p.observe(
            &obs(true, 1, Some("reset"), 50.0, false),
            Duration::from_secs(3),
        );
        assert_eq!(p.phase(), Phase::Done);
        let (text, pass) = p.report();
        assert!(!pass, "{text}");
    }

    #[test]
    fn no_loss_is_a_fail_with_never() {
        let p = Progress::new(obs(true, 0, None, 40.0, true));
        let (text, pass) = p.report();
        assert!(!pass);
        assert!(text.contains("detection time:  never"));
    }

    #[test]
    fn reads_nested_and_flat_status_shapes() {
        let nested = json!({"spotify": {"state": "connected", "reconnect_count": 3, "last_loss": {"reason": "x"}, "playing": true}, "volume_percent": 42.0});
        let o = Observation::from_status(&nested);
        assert!(o.connected && o.playing);
        assert_eq!(o.reconnect_count, 3);
        let flat = json!({"spotify": "reconnecting", "reconnect_count": 1, "last_loss": null, "volume": 1000, "playing": false});
        let o = Observation::from_status(&flat);
        assert!(!o.connected);
        assert_eq!(o.volume, Some(1000.0));
        assert!(o.last_loss.is_none());
    }
}

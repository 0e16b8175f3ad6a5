//! What `pispeaker drop-test` follows on the daemon's status page, and the verdict: pure, so it
//! is tested without a daemon.

use std::time::Duration;

use serde_json::Value;

/// What the status page says, reduced to what the test follows.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub connected: bool,
    pub reconnect_count: u64,
    pub last_loss: Option<String>,
    pub volume: Option<f64>,
    pub playing: bool,
    pub sessions_alive: Option<u64>,
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
            sessions_alive: get("sessions_alive").and_then(Value::as_u64),
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

    /// The status before the rules went in.
    pub fn before(&self) -> &Observation {
        &self.before
    }

    pub fn detected_after(&self) -> Option<Duration> {
        self.detected_after
    }

    pub fn recovered_after(&self) -> Option<Duration> {
        self.recovered_after
    }

    pub fn after(&self) -> Option<&Observation> {
        self.after.as_ref()
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
            sessions_alive: Some(1),
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

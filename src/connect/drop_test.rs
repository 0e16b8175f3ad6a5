//! `pispeaker drop-test`: the user's recovery recipe, automated, on the device.
//!
//! 1. find the running daemon and its access-point connection (remote port 4070) with its source
//!    port: the rows of `/proc/<pid>/net/tcp*` whose socket the daemon owns (`/proc/<pid>/fd`),
//!    so another Spotify client on the same Pi is never touched;
//! 2. insert the two iptables DROP rules for that connection only (see [`super::drop_rules`]);
//! 3. follow the daemon's status page until it reports the loss, then a new connection, and
//!    playback in the state the user left it;
//! 4. print detection time, recovery time, volume before/after and PASS/FAIL;
//! 5. remove the rules on every exit path: normal end, error, timeout, Ctrl-C, SIGTERM and SIGHUP
//!    (an SSH session that drops). The signal handlers are installed before the first rule goes
//!    in, and removal is an explicit step on every path: release builds abort on panic, so no
//!    guard's `Drop` is relied on. Rules left by a run that was killed outright (kill -9, power)
//!    are removed at the next start.
//!
//! `--cycles N` repeats the drop N times, printing a line per cycle and a summary (median
//! detection and recovery, volume, `sessions_alive`, the daemon's RSS before and after): the soak
//! test on a real speaker.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::signal::unix::{signal, SignalKind};

use super::ap_link::{owned_connections_to_port, TcpConnection, AP_PORT};
pub use super::drop_progress::{Observation, Phase, Progress};
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
    /// Drops in a row (1: the single run of the README).
    pub cycles: u32,
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

/// SIGINT, SIGTERM and SIGHUP, installed before any rule exists.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, String> {
        let install = |kind: SignalKind| {
            signal(kind).map_err(|e| format!("cannot install the signal handlers: {e}"))
        };
        Ok(Self {
            int: install(SignalKind::interrupt())?,
            term: install(SignalKind::terminate())?,
            hup: install(SignalKind::hangup())?,
        })
    }

    async fn any(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

/// How one drop cycle ended.
struct Cycle {
    progress: Progress,
    interrupted: bool,
    removed: bool,
    rss_kb: Option<u64>,
}

async fn run_inner(options: DropTestOptions) -> Result<bool, String> {
    // Before anything can insert a rule: a Ctrl-C, a kill or a dropped SSH session from now on
    // is handled by this process, which removes its rules.
    let mut signals = Signals::install()?;
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
    let client = reqwest::Client::new();
    let cycles = options.cycles.max(1);
    if cycles == 1 {
        let cycle = run_cycle(pid, &client, &options, &mut signals, Duration::ZERO).await?;
        let (report, pass) = cycle.progress.report();
        println!("{report}");
        return Ok(pass && !cycle.interrupted && cycle.removed);
    }

    let rss_before = rss_kb(pid);
    let mut done: Vec<Cycle> = Vec::new();
    let mut interrupted = false;
    for n in 1..=cycles {
        println!("--- cycle {n} of {cycles}");
        // After a recovery the new connection may take a moment to appear.
        let wait = if n == 1 {
            Duration::ZERO
        } else {
            Duration::from_secs(30)
        };
        let cycle = run_cycle(pid, &client, &options, &mut signals, wait).await?;
        let (_, pass) = cycle.progress.report();
        println!(
            "cycle {n}: detection {}, recovery {}, volume {} -> {}, sessions_alive {}, {}",
            seconds(cycle.progress.detected_after()),
            seconds(cycle.progress.recovered_after()),
            volume_text(Some(cycle.progress.before())),
            volume_text(cycle.progress.after()),
            cycle
                .progress
                .after()
                .and_then(|a| a.sessions_alive)
                .map_or("?".to_string(), |n| n.to_string()),
            if pass && cycle.removed {
                "PASS"
            } else {
                "FAIL"
            }
        );
        interrupted = cycle.interrupted;
        let stop = cycle.interrupted || !cycle.removed;
        done.push(cycle);
        if stop {
            break;
        }
    }
    let rss_after = done.last().and_then(|c| c.rss_kb).or_else(|| rss_kb(pid));
    let (summary, pass) = summarize(&done, cycles, rss_before, rss_after);
    println!("{summary}");
    Ok(pass && !interrupted)
}

/// One drop: find the connection, insert the rules, follow the status page, remove the rules.
async fn run_cycle(
    pid: u32,
    client: &reqwest::Client,
    options: &DropTestOptions,
    signals: &mut Signals,
    wait_for_connection: Duration,
) -> Result<Cycle, String> {
    let deadline = Instant::now() + wait_for_connection;
    let conn = loop {
        match find_ap_connection(pid) {
            Ok(conn) => break conn,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = signals.any() => return Err("interrupted".into()),
            },
        }
    };
    println!(
        "daemon pid {pid}: access-point connection {} -> {}",
        conn.local, conn.remote
    );
    let before = fetch_status(client, &options.status_url).await?;
    if !before.connected {
        return Err("the daemon is not connected to Spotify: pick the speaker in the Spotify app and start playback first".into());
    }
    let mut progress = Progress::new(before);

    let rules = DropRules::for_connection(&conn);
    for rule in rules.describe() {
        println!("inserting: {rule}");
    }
    let inserted = match rules.insert() {
        Ok(inserted) => inserted,
        // insert() takes a half-inserted pair out again; stale ones are found at the next start.
        Err(e) => return Err(format!("cannot insert the rules: {e}")),
    };
    let started = Instant::now();

    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_phase = progress.phase();
    let interrupted = loop {
        tokio::select! {
            _ = signals.any() => break true,
            _ = tick.tick() => {
                let elapsed = started.elapsed();
                if elapsed > options.timeout {
                    println!("timed out after {} s", options.timeout.as_secs());
                    break false;
                }
                // The status page may itself be briefly busy; a missed sample is not a failure.
                if let Ok(now) = fetch_status(client, &options.status_url).await {
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
    // Explicitly, on every path out of the loop.
    let removal = inserted.remove();
    match &removal {
        Ok(()) => println!("rules removed"),
        Err(e) => println!("WARNING: {e}"),
    }
    if interrupted {
        println!("interrupted");
    }
    Ok(Cycle {
        progress,
        interrupted,
        removed: removal.is_ok(),
        rss_kb: rss_kb(pid),
    })
}

/// The summary of several cycles; the bool is PASS (every cycle passed).
fn summarize(
    cycles: &[Cycle],
    asked: u32,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
) -> (String, bool) {
    let passed = cycles
        .iter()
        .filter(|c| c.removed && c.progress.report().1)
        .count();
    let median = |pick: fn(&Progress) -> Option<Duration>| {
        let mut all: Vec<Duration> = cycles.iter().filter_map(|c| pick(&c.progress)).collect();
        all.sort();
        all.get(all.len().wrapping_sub(1) / 2)
            .copied()
            .filter(|_| !all.is_empty())
    };
    let first = cycles.first().map(|c| c.progress.before());
    let last_after = cycles.last().and_then(|c| c.progress.after());
    let kb = |v: Option<u64>| v.map_or("?".to_string(), |v| format!("{v} kB"));
    let text = format!(
        "cycles:          {} of {asked} run, {passed} passed\nmedian detection: {}\nmedian recovery: {}\nvolume before:   {}\nvolume after:    {}\nsessions alive:  {}\nRSS before:      {}\nRSS after:       {}\nresult:          {}",
        cycles.len(),
        seconds(median(Progress::detected_after)),
        seconds(median(Progress::recovered_after)),
        volume_text(first),
        volume_text(last_after),
        last_after
            .and_then(|a| a.sessions_alive)
            .map_or("?".to_string(), |n| n.to_string()),
        kb(rss_before),
        kb(rss_after),
        if passed == asked as usize { "PASS" } else { "FAIL" }
    );
    (text, passed == asked as usize)
}

fn seconds(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.1} s", d.as_secs_f64()),
        None => "never".to_string(),
    }
}

fn volume_text(o: Option<&Observation>) -> String {
    match o.and_then(|o| o.volume) {
        Some(v) => format!("{v}"),
        None => "?".to_string(),
    }
}

/// The daemon's resident memory (`VmRSS`), in kB.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn find_ap_connection(pid: u32) -> Result<TcpConnection, String> {
    let conns = owned_connections_to_port(pid, AP_PORT)
        .map_err(|e| format!("cannot read /proc/{pid}/net/tcp and /proc/{pid}/fd: {e}"))?;
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
    fn the_summary_has_medians_volume_sessions_and_rss() {
        let cycle = |detect: u64, recover: u64| {
            let mut p = Progress::new(obs(true, 0, None, 40.0, true));
            p.observe(
                &obs(false, 0, Some("x"), 40.0, false),
                Duration::from_secs(detect),
            );
            p.observe(
                &obs(true, 1, Some("x"), 40.0, true),
                Duration::from_secs(recover),
            );
            Cycle {
                progress: p,
                interrupted: false,
                removed: true,
                rss_kb: Some(20_000),
            }
        };
        let cycles = [cycle(20, 24), cycle(30, 33), cycle(25, 40)];
        let (text, pass) = summarize(&cycles, 3, Some(19_000), Some(20_000));
        assert!(pass, "{text}");
        assert!(text.contains("median detection: 25.0 s"), "{text}");
        assert!(text.contains("median recovery: 33.0 s"), "{text}");
        assert!(text.contains("sessions alive:  1"), "{text}");
        assert!(text.contains("RSS before:      19000 kB"), "{text}");
        let (text, pass) = summarize(&cycles[..2], 3, None, None);
        assert!(!pass, "an interrupted soak fails: {text}");
    }
}

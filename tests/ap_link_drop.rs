//! Real-network drop test for the access-point link, in network namespaces made here.
//!
//! A stand-in access point listens on port 4070 in one namespace and writes a heartbeat line to
//! each connection every second, as Spotify's AP keeps a live link busy. In the speaker's
//! namespace two connections go to it. The production code then does what the daemon and
//! `pispeaker drop-test` do: `ApLinkTuner` finds the connections to port 4070 through
//! `/proc/.../net/tcp` and sets keep-alive and `TCP_USER_TIMEOUT` on them, and `DropRules` inserts
//! the user's recipe (source-port DROP on OUTPUT and INPUT) for one of them. The test shows that
//! the dropped connection dies with a socket error (which librespot's reader turns into an invalid
//! session), that the other connection never misses a heartbeat, and that the rules are gone
//! afterwards, also when the test body panics.
//!
//! Host-only: it needs root, namespaces and iptables.

mod netns;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use netns::NetNs;
use pispeaker::connect::ap_link::{ApLinkTuner, LinkTuning, AP_PORT};
use pispeaker::connect::drop_rules::{remove_stale, DropRules, RULE_TAG};

const SPEAKER: &str = "10.233.0.1";
const STAND_IN_AP: &str = "10.233.0.2";

fn iptables_rules(ns: &NetNs) -> String {
    String::from_utf8_lossy(&ns.exec(&["iptables", "-S"]).stdout).into_owned()
}

/// Starts the stand-in AP inside `ns`: every accepted connection gets a heartbeat line per second.
fn start_stand_in_ap(ns: &NetNs) {
    let name = ns.name.clone();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        netns::enter(&name);
        let listener = TcpListener::bind((STAND_IN_AP, AP_PORT)).expect("bind stand-in AP");
        ready_tx.send(()).ok();
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut n = 0u64;
                while stream.write_all(format!("ping {n}\n").as_bytes()).is_ok() {
                    n += 1;
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("stand-in AP listening");
}

#[test]
fn a_dropped_ap_connection_dies_fast_and_only_that_one() {
    if !netns::root_or_skip("a_dropped_ap_connection_dies_fast_and_only_that_one") {
        return;
    }
    let (speaker, ap) = NetNs::pair("pisp-ap", SPEAKER, STAND_IN_AP);
    start_stand_in_ap(&ap);
    let prefix = ["ip", "netns", "exec", speaker.name.as_str()];

    let speaker_name = speaker.name.clone();
    let outcome = std::thread::spawn(move || {
        netns::enter(&speaker_name);
        let dropped = TcpStream::connect((STAND_IN_AP, AP_PORT)).expect("connect 1");
        let kept = TcpStream::connect((STAND_IN_AP, AP_PORT)).expect("connect 2");
        let mut dropped_reader = BufReader::new(dropped.try_clone().unwrap());
        let mut kept_reader = BufReader::new(kept.try_clone().unwrap());
        let mut line = String::new();
        dropped_reader.read_line(&mut line).expect("heartbeat on 1");
        kept_reader.read_line(&mut line).expect("heartbeat on 2");

        // What the supervisor's watchdog does every poll.
        let mut tuner = ApLinkTuner::new(AP_PORT, LinkTuning::default());
        let tuned = tuner.tune_new().expect("tune");
        assert_eq!(
            tuned.len(),
            2,
            "both AP connections found and tuned: {tuned:?}"
        );
        let target = tuned
            .iter()
            .find(|c| c.local == dropped.local_addr().unwrap())
            .copied()
            .expect("dropped connection among those found");

        // The user's recipe, for that connection only.
        let rules =
            DropRules::for_connection(&target).with_prefix(&["ip", "netns", "exec", &speaker_name]);
        let inserted = rules.insert().expect("insert rules");
        let dropped_at = Instant::now();

        // The kept connection must see every heartbeat while the other one dies.
        let kept_thread = std::thread::spawn(move || {
            let mut beats = 0;
            let mut line = String::new();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(40) {
                line.clear();
                match kept_reader.read_line(&mut line) {
                    Ok(n) if n > 0 => beats += 1,
                    other => return Err(format!("kept connection failed: {other:?}")),
                }
            }
            Ok(beats)
        });

        dropped
            .set_read_timeout(Some(Duration::from_secs(90)))
            .unwrap();
        let error = loop {
            line.clear();
            match dropped_reader.read_line(&mut line) {
                Ok(0) => break "closed by peer".to_string(),
                Ok(_) => continue, // heartbeats already in flight before the DROP
                Err(e) => break format!("{e} ({:?})", e.kind()),
            }
        };
        let detection = dropped_at.elapsed();
        let still_listed = iptables_rules_in(&speaker_name);
        inserted.remove().expect("remove rules");
        let kept_beats = kept_thread.join().expect("kept thread");
        (detection, error, kept_beats, still_listed)
    })
    .join()
    .expect("speaker thread");

    let (detection, error, kept_beats, listed_while_active) = outcome;
    eprintln!(
        "dropped AP connection detected after {:.1} s: {error}",
        detection.as_secs_f64()
    );
    assert!(
        listed_while_active.matches(RULE_TAG).count() == 2,
        "both rules were in place: {listed_while_active}"
    );
    assert!(
        error.contains("timed out") || error.contains("TimedOut"),
        "the kernel declared the link dead (ETIMEDOUT), got: {error}"
    );
    // Keep-alive 10 s idle + 3 probes × 5 s, counted from the last heartbeat received.
    assert!(
        detection <= Duration::from_secs(40),
        "a dead link must be declared dead well before librespot's ~2 min keep-alive"
    );
    let kept_beats = kept_beats.expect("the other connection kept working");
    assert!(
        kept_beats >= 35,
        "other connection saw {kept_beats} heartbeats in 40 s"
    );

    let after = iptables_rules(&speaker);
    assert!(!after.contains(RULE_TAG), "rules removed: {after}");
    assert_eq!(remove_stale(&prefix).unwrap(), 0);
}

fn iptables_rules_in(ns_name: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns_name, "iptables", "-S"])
        .output()
        .expect("iptables -S");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rules_are_removed_when_the_holder_panics_and_stale_ones_can_be_cleaned() {
    if !netns::root_or_skip(
        "rules_are_removed_when_the_holder_panics_and_stale_ones_can_be_cleaned",
    ) {
        return;
    }
    let ns = NetNs::new("pisp-rules");
    let prefix = ["ip", "netns", "exec", ns.name.as_str()];
    let local = "10.9.0.2:40000".parse().unwrap();
    let remote = "10.9.0.1:4070".parse().unwrap();

    let result = std::panic::catch_unwind(|| {
        let _guard = DropRules::new(local, remote)
            .with_prefix(&prefix)
            .insert()
            .expect("insert");
        assert_eq!(iptables_rules(&ns).matches(RULE_TAG).count(), 2);
        panic!("expected panic (the test body fails while the rules are in place)");
    });
    assert!(result.is_err());
    assert!(
        !iptables_rules(&ns).contains(RULE_TAG),
        "guard removed the rules during unwinding"
    );

    // A run that was killed (the guard never dropped) leaves rules: remove_stale finds them.
    let leaked = DropRules::new(local, remote)
        .with_prefix(&prefix)
        .insert()
        .expect("insert");
    std::mem::forget(leaked);
    assert_eq!(remove_stale(&prefix).unwrap(), 2);
    assert!(!iptables_rules(&ns).contains(RULE_TAG));
}

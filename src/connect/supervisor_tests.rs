//! The supervisor against the scripted fake, on tokio's paused clock: hours of reconnects run in
//! milliseconds and every time below is exact.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use librespot_playback::mixer::Mixer;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::*;
use crate::audio::{HardwareMixer, SimControl, VolumeCurveKind};
use crate::connect::control::{self, SpeakerStatus};
use crate::connect::fake_backend::{FakeBackend, FakeWorld};
use crate::connect::supervisor_harness::{creds, settings, start, FakeStore};

/// Issue proof 1: 100 losses of different kinds, every new session got the same session_id.
#[tokio::test(start_paused = true)]
async fn a_hundred_losses_keep_the_session_id() {
    let h = start(Some(creds("u")), settings(), true);
    h.wait_sessions(1).await;
    let first_id = h.session(0).id.clone();
    for i in 0..100 {
        let s = h.session(i);
        match i % 4 {
            0 => s.lose(Some("connection reset")),
            1 => s.lose(None), // keep-alive: invalid with no hint
            2 => s.hang(),
            _ => s.end_spirc(),
        }
        h.wait_sessions(i + 2).await;
    }
    {
        let world = h.world.lock().unwrap();
        assert_eq!(
            world.requests[0].1.session_id, None,
            "first connect has no id to keep"
        );
        for (n, (_, request)) in world.requests.iter().enumerate().skip(1) {
            assert_eq!(
                request.session_id.as_deref(),
                Some(first_id.as_str()),
                "reconnect {n}"
            );
        }
        for s in &world.sessions {
            assert_eq!(s.id, first_id);
        }
        assert_eq!(world.sessions.len(), 101);
    }
    assert_eq!(h.handle.status().reconnect_count, 100);
    h.stop().await;
}

/// Issue proof 2: a knob moved between losses; each new Spirc starts with the live value, no
/// stale value is ever written, no drift after 100 cycles.
#[tokio::test(start_paused = true)]
async fn each_reconnect_starts_with_the_live_volume_and_never_drifts() {
    let h = start(Some(creds("u")), settings(), true);
    h.wait_sessions(1).await;
    let writes_after_first = h.sim.writes.load(Ordering::SeqCst);
    let mut knob = 160i64;
    for i in 0..100 {
        knob = (knob * 31 + 17) % 208; // somewhere else on the control
        h.sim.raw.store(knob, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await; // the knob turns while connected
        h.session(i).lose(Some("connection reset"));
        h.wait_sessions(i + 2).await;
        let expected = h.mixer.volume();
        {
            let world = h.world.lock().unwrap();
            let (_, request) = world.requests.last().unwrap();
            assert_eq!(request.initial_volume, expected, "cycle {i}: live volume");
            assert_eq!(
                h.sim.raw.load(Ordering::SeqCst),
                knob,
                "cycle {i}: no drift"
            );
        }
    }
    assert_eq!(
        h.sim.writes.load(Ordering::SeqCst),
        writes_after_first,
        "not one write: neither the reconnects nor the volume sync moved the control"
    );
    h.stop().await;
}

/// Issue proof 3a: playing at loss → exactly one play after SessionConnected.
#[tokio::test(start_paused = true)]
async fn playing_at_loss_plays_exactly_once_after_reconnect() {
    let h = start(Some(creds("u")), settings(), true);
    h.wait_sessions(1).await;
    h.user_plays().await;
    h.session(0).lose(Some("connection reset"));
    h.wait_sessions(2).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    {
        let world = h.world.lock().unwrap();
        assert_eq!(world.plays_on(1), 1);
        assert!(
            !world
                .commands
                .iter()
                .any(|(_, s, c)| *s == 1 && *c == SessionCommand::Transfer),
            "automatic transfer came: no fallback"
        );
    }
    h.stop().await;
}

/// Issue proof 3b: paused at loss → no play.
#[tokio::test(start_paused = true)]
async fn paused_at_loss_stays_paused() {
    let h = start(Some(creds("u")), settings(), true);
    h.wait_sessions(1).await;
    h.user_plays().await;
    h.user_pauses().await;
    h.session(0).lose(None);
    h.wait_sessions(2).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(h.world.lock().unwrap().plays_on(1), 0);
    h.stop().await;
}

/// Issue proof 3c: a second loss during the reconnect (before the transfer) keeps the user's
/// intent, although the shutdowns paused the player in between.
#[tokio::test(start_paused = true)]
async fn loss_during_reconnect_keeps_the_users_intent() {
    let h = start(Some(creds("u")), settings(), true);
    h.wait_sessions(1).await;
    h.until(Duration::from_secs(5), "active", |w| {
        w.sessions[0].is_active()
    })
    .await;
    {
        let mut world = h.world.lock().unwrap();
        world.transfer_on_request = false;
        world.auto_transfer = false;
    }
    h.user_plays().await;
    h.session(0).lose(Some("connection reset"));
    h.wait_sessions(2).await;
    // No transfer yet, and a transient failure on the next attempt as well.
    h.session(1).hang();
    h.world
        .lock()
        .unwrap()
        .script
        .push_back(ConnectFailure::Transient("dns".into()));
    h.until(Duration::from_secs(120), "third attempt", |w| {
        w.requests.len() >= 3
    })
    .await;
    h.world.lock().unwrap().auto_transfer = true;
    h.wait_sessions(3).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    {
        let world = h.world.lock().unwrap();
        assert_eq!(world.plays_on(1), 0, "never activated");
        assert_eq!(
            world.plays_on(2),
            1,
            "intent survived two losses and a failed attempt"
        );
    }
    h.stop().await;
}

/// Issue proof 4: a Spirc that never ends on an invalid session is found within one poll (2 s).
#[tokio::test(start_paused = true)]
async fn a_hung_spirc_is_detected_within_one_poll() {
    let h = start(Some(creds("u")), settings(), true);
    h.wait_sessions(1).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let invalidated = Instant::now();
    h.session(0).hang();
    h.until(
        Duration::from_secs(10),
        "shutdown of the hung session",
        |w| !w.shutdowns.is_empty(),
    )
    .await;
    let detected = h.world.lock().unwrap().shutdowns[0].0;
    let after = detected - invalidated;
    assert!(after <= Duration::from_secs(2), "detected after {after:?}");
    let loss = h.handle.status().last_loss.unwrap();
    assert!(
        loss.reason.starts_with("spirc hung on invalid session"),
        "{}",
        loss.reason
    );
    h.stop().await;
}

/// Issue proof 5: backoff sequence, cap, jitter bounds and reset after a stable connection.
#[tokio::test(start_paused = true)]
async fn backoff_doubles_caps_and_resets_after_a_stable_minute() {
    let h = start(Some(creds("u")), settings(), true);
    h.wait_sessions(1).await;
    {
        let mut world = h.world.lock().unwrap();
        for _ in 0..8 {
            world
                .script
                .push_back(ConnectFailure::Transient("unreachable".into()));
        }
    }
    h.session(0).lose(Some("connection reset"));
    h.wait_sessions(2).await;
    let times: Vec<Instant> = h
        .world
        .lock()
        .unwrap()
        .requests
        .iter()
        .map(|(t, _)| *t)
        .collect();
    // requests[1..=9]: after the loss, 8 failures then success.
    let gaps: Vec<f64> = times
        .windows(2)
        .skip(1)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    let nominal = [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0];
    for (gap, n) in gaps.iter().zip(nominal) {
        assert!(
            *gap >= n * 0.8 - 0.05 && *gap <= (n * 1.2_f64).min(60.0) + 0.05,
            "gap {gap} for nominal {n}: {gaps:?}"
        );
    }
    // Up for more than a minute, then lost: the next delay is back near 1 s.
    tokio::time::sleep(Duration::from_secs(61)).await;
    let lost_at = Instant::now();
    h.session(1).lose(Some("connection reset"));
    h.wait_sessions(3).await;
    let reconnect = h.world.lock().unwrap().requests.last().unwrap().0 - lost_at;
    assert!(
        reconnect <= Duration::from_millis(1300),
        "reset backoff, got {reconnect:?}"
    );
    h.stop().await;
}

/// Issue proof 6a: transient errors retry with the same credentials, forever.
#[tokio::test(start_paused = true)]
async fn transient_errors_never_stop_the_loop() {
    let h = start(Some(creds("u")), settings(), true);
    {
        let mut world = h.world.lock().unwrap();
        for kind in [
            "dns lookup failed",
            "tls handshake",
            "HTTP 503",
            "audio key",
            "timed out",
        ] {
            for _ in 0..6 {
                world
                    .script
                    .push_back(ConnectFailure::Transient(kind.into()));
            }
        }
    }
    // 30 failures, backing off up to 60 s each: about half an hour of virtual time.
    h.until(
        Duration::from_secs(3600),
        "a session after 30 failures",
        |w| !w.sessions.is_empty(),
    )
    .await;
    {
        let world = h.world.lock().unwrap();
        assert_eq!(world.requests.len(), 31);
        assert!(world
            .requests
            .iter()
            .all(|(_, r)| r.credentials == creds("u")));
    }
    assert!(h.store.0.lock().unwrap().set_aside.is_empty());
    h.stop().await;
}

/// Issue proof 6b: rejected credentials are set aside and discovery takes over.
#[tokio::test(start_paused = true)]
async fn revoked_credentials_go_back_to_discovery() {
    let h = start(Some(creds("old")), settings(), true);
    h.world
        .lock()
        .unwrap()
        .script
        .push_back(ConnectFailure::CredentialsRejected("BadCredentials".into()));
    h.until(Duration::from_secs(5), "first attempt", |w| {
        w.requests.len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        h.world.lock().unwrap().requests.len(),
        1,
        "no retries with revoked credentials"
    );
    assert_eq!(h.store.0.lock().unwrap().set_aside.len(), 1);
    assert_eq!(h.handle.status().spotify, SpotifyState::Discovery);
    assert_eq!(
        h.handle.send(Command::Play).await,
        Err(ControlError::NoSession)
    );
    // The user picks the speaker again in the app.
    h.discovered.send(creds("new")).await.unwrap();
    h.wait_sessions(1).await;
    {
        let world = h.world.lock().unwrap();
        let (_, request) = world.requests.last().unwrap();
        assert_eq!(request.credentials, creds("new"));
        assert_eq!(request.session_id, None);
    }
    assert!(
        h.store.0.lock().unwrap().saved >= 1,
        "new reusable credentials cached"
    );
    h.stop().await;
}

/// Commands while reconnecting are answered, never dropped; while connected they reach Spirc.
#[tokio::test(start_paused = true)]
async fn control_commands_are_answered_in_every_state() {
    let h = start(None, settings(), true);
    assert_eq!(
        h.handle.send(Command::Play).await,
        Err(ControlError::NoSession)
    );
    h.discovered.send(creds("u")).await.unwrap();
    h.wait_sessions(1).await;
    assert_eq!(h.handle.send(Command::Next).await, Ok(()));
    assert_eq!(
        h.handle.send(Command::Seek { position_ms: 5 }).await,
        Ok(())
    );
    h.world
        .lock()
        .unwrap()
        .script
        .push_back(ConnectFailure::Transient("down".into()));
    h.session(0).lose(Some("connection reset"));
    h.until(Duration::from_secs(5), "failed attempt", |w| {
        w.requests.len() == 2
    })
    .await;
    assert_eq!(
        h.handle.send(Command::Pause).await,
        Err(ControlError::Reconnecting)
    );
    h.wait_sessions(2).await;
    assert_eq!(h.handle.send(Command::SetVolume(1000)).await, Ok(()));
    {
        let world = h.world.lock().unwrap();
        let sent: Vec<SessionCommand> = world.commands.iter().map(|(_, _, c)| *c).collect();
        assert!(sent.contains(&SessionCommand::Next));
        assert!(sent.contains(&SessionCommand::Seek(5)));
        assert!(sent.contains(&SessionCommand::SetVolume(1000)));
        assert!(!sent.contains(&SessionCommand::Pause));
    }
    h.stop().await;
}

/// No automatic transfer: after the timeout the speaker asks for one, then plays once.
#[tokio::test(start_paused = true)]
async fn transfer_fallback_after_the_timeout() {
    let h = start(Some(creds("u")), settings(), true);
    h.wait_sessions(1).await;
    h.user_plays().await;
    h.world.lock().unwrap().auto_transfer = false;
    h.session(0).lose(Some("connection reset"));
    h.wait_sessions(2).await;
    let connected = Instant::now();
    h.until(Duration::from_secs(30), "transfer request", |w| {
        w.commands
            .iter()
            .any(|(_, s, c)| *s == 1 && *c == SessionCommand::Transfer)
    })
    .await;
    {
        let world = h.world.lock().unwrap();
        let transfer_at = world
            .commands
            .iter()
            .find(|(_, s, c)| *s == 1 && *c == SessionCommand::Transfer)
            .unwrap()
            .0;
        assert!(
            transfer_at - connected >= Duration::from_millis(9_900),
            "waited the timeout"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.world.lock().unwrap().plays_on(1), 1);
    h.stop().await;
}

/// A knob turned outside the daemon reaches Spotify within 1 s, once, without feedback.
#[tokio::test(start_paused = true)]
async fn external_volume_changes_flow_back_within_a_second() {
    let h = start(Some(creds("u")), settings(), true);
    h.wait_sessions(1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = h.sim.writes.load(Ordering::SeqCst);
    let turned = Instant::now();
    h.sim.raw.store(120, Ordering::SeqCst);
    let live = h.mixer.volume();
    h.until(Duration::from_secs(1), "SetVolume to Spotify", |w| {
        w.commands
            .iter()
            .any(|(_, _, c)| *c == SessionCommand::SetVolume(live))
    })
    .await;
    let at = h
        .world
        .lock()
        .unwrap()
        .commands
        .iter()
        .find(|(_, _, c)| *c == SessionCommand::SetVolume(live))
        .unwrap()
        .0;
    assert!(at - turned <= Duration::from_secs(1));
    tokio::time::sleep(Duration::from_secs(10)).await;
    {
        let world = h.world.lock().unwrap();
        let reports = world
            .commands
            .iter()
            .filter(|(_, _, c)| matches!(c, SessionCommand::SetVolume(_)))
            .count();
        assert_eq!(
            reports, 2,
            "one sync at activation, one for the knob; no loop"
        );
    }
    assert_eq!(
        h.sim.writes.load(Ordering::SeqCst),
        writes,
        "no write back to the control"
    );
    assert_eq!(h.sim.raw.load(Ordering::SeqCst), 120);
    assert_eq!(h.handle.status().volume, live);
    h.stop().await;
}

/// A new user picking the speaker replaces the session at once, with a fresh session id.
#[tokio::test(start_paused = true)]
async fn a_new_user_takes_over_without_backoff() {
    let h = start(Some(creds("a")), settings(), true);
    h.wait_sessions(1).await;
    let before = Instant::now();
    h.discovered.send(creds("b")).await.unwrap();
    h.wait_sessions(2).await;
    {
        let world = h.world.lock().unwrap();
        let (at, request) = world.requests.last().unwrap();
        // The old Spirc's goodbye goes first (it must not unregister the new one), no backoff.
        let goodbye = world.goodbye_time.unwrap();
        assert!(*at - before < goodbye + Duration::from_millis(100));
        assert_eq!(request.credentials, creds("b"));
        assert_eq!(request.session_id, None);
        assert_ne!(world.sessions[1].id, world.sessions[0].id);
    }
    h.stop().await;
}

/// The figure for the closing note: from "network back" (the attempt that succeeds) to play()
/// issued, beyond the backoff delay. On the paused clock the supervisor's own share is exact.
#[tokio::test(start_paused = true)]
async fn overhead_from_network_back_to_play() {
    let h = start(Some(creds("u")), settings(), true);
    h.wait_sessions(1).await;
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        h.user_plays().await;
        h.session(i).lose(Some("connection reset"));
        h.wait_sessions(i + 2).await;
        h.until(Duration::from_secs(5), "play", |w| w.plays_on(i + 1) == 1)
            .await;
        {
            let world = h.world.lock().unwrap();
            // From the new Spirc's registration: the login before it is librespot's time.
            let attempt = world.registrations.last().unwrap().0;
            let play = world
                .commands
                .iter()
                .find(|(_, s, c)| *s == i + 1 && *c == SessionCommand::Play)
                .unwrap()
                .0;
            worst = worst.max(play - attempt);
        }
    }
    println!(
        "supervisor overhead from network back to play(): {} ms (worst of 20 cycles)",
        worst.as_millis()
    );
    assert!(worst <= Duration::from_millis(100));
    h.stop().await;
}

/// The heartbeat keeps beating while waiting for a user and while backing off.
#[tokio::test(start_paused = true)]
async fn heartbeat_beats_in_every_state() {
    let sim = SimControl::pcm512x(100);
    let mixer: Arc<dyn Mixer> =
        Arc::new(HardwareMixer::new(sim, VolumeCurveKind::Log, 60.0).unwrap());
    let world = Arc::new(Mutex::new(FakeWorld::default()));
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (_discovered_tx, discovered_rx) = mpsc::channel(1);
    let (_handle, endpoint) = control::channel(SpeakerStatus::new("t", 0));
    let supervisor = Supervisor::new(
        FakeBackend {
            world,
            events: events_tx,
            mixer: mixer.clone(),
        },
        mixer,
        Box::new(FakeStore::default()),
        discovered_rx,
        events_rx,
        endpoint,
        settings(),
    );
    let heartbeat = supervisor.heartbeat();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(supervisor.run(shutdown_rx));
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            heartbeat.age() <= Duration::from_secs(2),
            "age {:?}",
            heartbeat.age()
        );
    }
    shutdown_tx.send_replace(true);
    task.await.unwrap();
}

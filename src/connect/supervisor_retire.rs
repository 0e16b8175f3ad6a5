//! Retiring a session: the old Spirc ends (or is abandoned) before the next one registers, and
//! the live sessions are counted.

use log::warn;
use tokio::time::{sleep_until, Instant};

use super::super::control::ControlError;
use super::super::session::{ConnectBackend, ConnectSession};
use super::Supervisor;

impl<B: ConnectBackend> Supervisor<B> {
    /// Ends a session before anything else starts: Spirc's goodbye (disconnect and
    /// `delete_connect_state_request`, over HTTPS, spirc.rs:567-579) must not reach Spotify after
    /// the next Spirc registered the same device id. Waits for it up to `goodbye_timeout`, then
    /// abandons the Spirc without its goodbye and closes the dealer the abort skipped.
    pub(super) async fn retire(
        &mut self,
        mut session: B::Session,
        meanwhile: ControlError,
        ended: bool,
    ) {
        self.heartbeat.beat();
        if ended {
            // The Spirc task is over: goodbye said (or failed) and dealer closed.
            drop(session);
            self.publish_alive();
            return;
        }
        session.shutdown();
        let deadline = sleep_until(Instant::now() + self.settings.goodbye_timeout);
        tokio::pin!(deadline);
        let ended = loop {
            tokio::select! {
                _ = session.ended() => break true,
                _ = &mut deadline => break false,
                Some((_, reply)) = self.endpoint.commands.recv() => {
                    let _ = reply.send(Err(meanwhile.clone()));
                }
                Some(signal) = self.events.recv() => self.on_signal_disconnected(signal),
            }
        };
        if !ended {
            warn!(
                "the old Spotify session did not say goodbye within {} s; abandoning it",
                self.settings.goodbye_timeout.as_secs_f64()
            );
            session.abandon().await;
        }
        drop(session);
        self.heartbeat.beat();
        self.publish_alive();
    }

    pub(super) fn publish_alive(&mut self) {
        let alive = self.registry.alive();
        self.endpoint.status.send_if_modified(|s| {
            let changed = s.sessions_alive != alive;
            s.sessions_alive = alive;
            changed
        });
    }
}

//! The account without Premium: librespot calls `exit(1)` right after its login
//! (core/src/session.rs:364-372) and systemd restarts us with the cached credentials, for ever.
//! A marker raised before the login and lowered once the process has outlived it shows how many
//! runs in a row died that way; at [`DEATHS_MEAN_NO_PREMIUM`] the credentials are set aside.

use librespot_core::authentication::Credentials;
use log::error;

use super::super::session::ConnectBackend;
use super::{Supervisor, DEATHS_MEAN_NO_PREMIUM};

impl<B: ConnectBackend> Supervisor<B> {
    /// At start: ends the exit loop left by earlier runs, saying why once.
    pub(super) fn check_exit_loop(&mut self, credentials: &mut Option<Credentials>) {
        self.marker_base = self.store.login_deaths();
        if self.marker_base < DEATHS_MEAN_NO_PREMIUM {
            if credentials.is_none() && self.store.premium_required() {
                // Set aside by an earlier run (before a reboot, say): still the reason the
                // speaker waits to be picked, and nothing else would say so.
                error!("Spotify Premium is required: the last account that picked this speaker has no Premium; pick it in the Spotify app with a Premium account");
                self.publish(|s| s.premium_required = true);
            }
            return;
        }
        if credentials.is_some() {
            error!(
                "Spotify Premium is required: the last {} starts ended right after logging in, which is what librespot does for an account without Premium; pick the speaker in the Spotify app with a Premium account",
                self.marker_base
            );
            self.store
                .set_aside("belong to an account without Spotify Premium");
            *credentials = None;
            self.store.set_premium_required(true);
            self.publish(|s| s.premium_required = true);
        }
        self.store.set_login_deaths(0);
        self.marker_base = 0;
    }

    /// Raises the login marker for the attempt about to start (once per run).
    pub(super) fn raise_login_marker(&mut self) {
        if !self.marker_raised {
            self.store.set_login_deaths(self.marker_base + 1);
            self.marker_raised = true;
        }
    }

    /// The process outlived the attempt or the session's first seconds: put the marker back.
    pub(super) fn lower_login_marker(&mut self, to: u32) {
        if self.marker_raised {
            self.store.set_login_deaths(to);
            self.marker_raised = false;
        }
    }
}

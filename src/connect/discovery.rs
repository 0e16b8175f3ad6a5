//! Zeroconf discovery: announces `_spotify-connect._tcp` and serves the `getInfo`/`addUser`
//! endpoint the Spotify app talks to, handing the credentials it receives to the supervisor.
//!
//! librespot's `Discovery` stream ends on a server or mDNS error (an interface going away, say).
//! A speaker must stay discoverable, so this task relaunches it with a backoff instead of giving
//! up, for as long as the daemon runs. With no network at all (libmdns fails at once with "No such
//! device") it does not launch: it waits for an address (netlink, [`super::netwatch`]) and starts
//! the moment one appears. Each state change is logged once, "visible" only once it announces.

use std::time::Duration;

use futures_util::StreamExt;
use librespot_core::authentication::Credentials;
use librespot_core::config::DeviceType;
use librespot_discovery::Discovery;
use log::{info, warn};
use tokio::sync::{mpsc, oneshot, watch};

use super::netwatch::{self, AddressEvents};

/// What discovery announces.
#[derive(Debug, Clone)]
pub struct DiscoverySettings {
    pub device_id: String,
    pub client_id: String,
    pub name: String,
    pub device_type: DeviceType,
    /// 0 lets the OS pick a port.
    pub port: u16,
}

/// First and longest pause between relaunches after a failure.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// libmdns fails at once when it cannot set up (librespot-discovery 0.8.0 lib.rs:397-421 ends
/// the stream with a `ZeroconfError`); a launch that lasts this long is announcing.
const ANNOUNCE_GRACE: Duration = Duration::from_secs(1);
/// Up this long: the next failure starts the backoff afresh.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// Where discovery stands, logged once per change (the journal on the image is in RAM).
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Starting,
    NoAddress,
    Visible,
    Failing(String),
}

/// Runs discovery until `shutdown` turns true. `ready` fires once the service is first announced
/// (or the first launch failed, or there is no network yet, so the daemon does not wait forever
/// for readiness). With no usable address it waits for one (`addresses` ticks when one
/// appears); after a failure it waits with a doubling delay, cut short by a new address.
pub async fn run(
    settings: DiscoverySettings,
    credentials: mpsc::Sender<Credentials>,
    ready: oneshot::Sender<Result<(), String>>,
    mut shutdown: watch::Receiver<bool>,
    mut addresses: AddressEvents,
) {
    let mut ready = Some(ready);
    let mut delay = RETRY_FIRST;
    let mut state = State::Starting;
    let change = |state: &mut State, new: State| -> bool {
        let changed = *state != new;
        *state = new;
        changed
    };
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !netwatch::has_usable_address() {
            if change(&mut state, State::NoAddress) {
                info!("zeroconf discovery waits for a network address (no interface is up yet)");
            }
            if let Some(ready) = ready.take() {
                let _ = ready.send(Ok(()));
            }
            // An address event, or a look every minute in case netlink is unavailable.
            if wait_or_shutdown(RETRY_MAX, &mut shutdown, &mut addresses).await {
                return;
            }
            continue;
        }
        let launched = Discovery::builder(settings.device_id.clone(), settings.client_id.clone())
            .name(settings.name.clone())
            .device_type(settings.device_type)
            .port(settings.port)
            .launch();
        let failure = match launched {
            Ok(mut discovery) => {
                // The zeroconf server is up and libmdns is registering: the daemon may go on
                // (its signal handlers come after readiness). "Visible" waits for the grace.
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Ok(()));
                }
                let up_at = tokio::time::Instant::now();
                let announced = tokio::time::sleep(ANNOUNCE_GRACE);
                tokio::pin!(announced);
                let mut visible = false;
                let ended = loop {
                    tokio::select! {
                        _ = &mut announced, if !visible => {
                            visible = true;
                            delay = RETRY_FIRST;
                            if change(&mut state, State::Visible) {
                                info!(
                                    "zeroconf discovery up: \"{}\" is visible in the Spotify app",
                                    settings.name
                                );
                            }
                        }
                        next = discovery.next() => match next {
                            Some(creds) => {
                                info!("a Spotify app picked this speaker; connecting as {}",
                                    creds.username.as_deref().unwrap_or("a new user"));
                                if credentials.send(creds).await.is_err() {
                                    discovery.shutdown().await;
                                    return;
                                }
                            }
                            None => break "zeroconf discovery stopped (see the libmdns error above)".to_string(),
                        },
                        _ = shutdown.changed() => {
                            discovery.shutdown().await;
                            return;
                        }
                    }
                };
                discovery.shutdown().await;
                if up_at.elapsed() >= STABLE_AFTER {
                    delay = RETRY_FIRST;
                }
                ended
            }
            Err(e) => format!(
                "zeroconf discovery could not start: {e} (is zeroconf-port {} free?)",
                settings.port
            ),
        };
        if change(&mut state, State::Failing(failure.clone())) {
            warn!(
                "{failure}; retrying, waiting longer after each failure (at most {} s)",
                RETRY_MAX.as_secs()
            );
        }
        if let Some(ready) = ready.take() {
            let _ = ready.send(Err(failure));
        }
        if wait_or_shutdown(delay, &mut shutdown, &mut addresses).await {
            return;
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}

/// Sleeps for `delay`, or until a network address appears; true if shutdown was requested.
async fn wait_or_shutdown(
    delay: Duration,
    shutdown: &mut watch::Receiver<bool>,
    addresses: &mut AddressEvents,
) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => *shutdown.borrow(),
        changed = addresses.changed() => {
            if changed.is_ok() {
                info!("a network address appeared; starting zeroconf discovery now");
            } else {
                // No watcher: plain delays from now on.
                tokio::time::sleep(delay).await;
            }
            *shutdown.borrow()
        }
        _ = shutdown.changed() => true,
    }
}

//! Zeroconf discovery: announces `_spotify-connect._tcp` and serves the `getInfo`/`addUser`
//! endpoint the Spotify app talks to, handing the credentials it receives to the supervisor.
//!
//! librespot's `Discovery` stream ends on a server or mDNS error (an interface going away, say).
//! A speaker must stay discoverable, so this task relaunches it with a backoff instead of giving
//! up, for as long as the daemon runs.

use std::time::Duration;

use futures_util::StreamExt;
use librespot_core::authentication::Credentials;
use librespot_core::config::DeviceType;
use librespot_discovery::Discovery;
use log::{info, warn};
use tokio::sync::{mpsc, oneshot, watch};

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

/// Runs discovery until `shutdown` turns true. `ready` fires once the service is first announced
/// (or the first launch failed, so the daemon does not wait forever for readiness).
pub async fn run(
    settings: DiscoverySettings,
    credentials: mpsc::Sender<Credentials>,
    ready: oneshot::Sender<Result<(), String>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ready = Some(ready);
    let mut delay = Duration::from_secs(1);
    loop {
        let launched = Discovery::builder(settings.device_id.clone(), settings.client_id.clone())
            .name(settings.name.clone())
            .device_type(settings.device_type)
            .port(settings.port)
            .launch();
        let mut discovery = match launched {
            Ok(discovery) => {
                info!(
                    "zeroconf discovery up: \"{}\" is visible in the Spotify app",
                    settings.name
                );
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Ok(()));
                }
                delay = Duration::from_secs(1);
                discovery
            }
            Err(e) => {
                let message = format!(
                    "zeroconf discovery could not start: {e} (is zeroconf-port {} free?)",
                    settings.port
                );
                warn!("{message}; retrying in {}s", delay.as_secs());
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(message));
                }
                if wait_or_shutdown(delay, &mut shutdown).await {
                    return;
                }
                delay = (delay * 2).min(Duration::from_secs(60));
                continue;
            }
        };

        loop {
            tokio::select! {
                next = discovery.next() => match next {
                    Some(creds) => {
                        info!("a Spotify app picked this speaker; connecting as {}",
                            creds.username.as_deref().unwrap_or("a new user"));
                        if credentials.send(creds).await.is_err() {
                            discovery.shutdown().await;
                            return;
                        }
                    }
                    None => {
                        warn!("zeroconf discovery stopped; restarting it");
                        break;
                    }
                },
                _ = shutdown.changed() => {
                    discovery.shutdown().await;
                    return;
                }
            }
        }
        discovery.shutdown().await;
        if wait_or_shutdown(delay, &mut shutdown).await {
            return;
        }
    }
}

/// Sleeps for `delay`; true if shutdown was requested meanwhile.
async fn wait_or_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

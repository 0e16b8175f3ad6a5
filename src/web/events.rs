//! The event stream: numbered events in a short ring buffer, served as Server-Sent Events.
//!
//! Every event gets the next sequence number under one lock, and is pushed to the ring and to
//! the live subscribers under that same lock, so a client that subscribes with `Last-Event-ID`
//! gets exactly the events after its id (from the ring) followed by the live ones, with no gap
//! and no duplicate. SSE rather than a WebSocket: it is plain HTTP/1.1 on the hyper server that
//! exists, browsers reconnect by themselves and send `Last-Event-ID`, and `curl -N` reads it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::stream::{self, Stream, StreamExt};
use hyper::body::{Bytes, Frame};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

/// How many events a reconnecting client can catch up on. At a few events a second (a seek,
/// a volume drag) this is well over a minute of history, for a few tens of kilobytes.
pub const RING: usize = 256;

/// One event as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub id: u64,
    /// `playing`, `paused`, `stopped`, `track`, `volume`, `source`, `connection`, `jellyfin`,
    /// `settings`, or `resync` (the client was away longer than the ring holds).
    pub kind: &'static str,
    pub data: Value,
}

impl Event {
    /// The SSE wire form: `id`, `event` and one `data` line (JSON has no raw newlines).
    pub fn to_sse(&self) -> String {
        format!(
            "id: {}\nevent: {}\ndata: {}\n\n",
            self.id, self.kind, self.data
        )
    }
}

struct Ring {
    next_id: u64,
    events: VecDeque<Event>,
}

/// The hub every producer publishes to and every client subscribes to. Clones share it.
#[derive(Clone)]
pub struct EventHub {
    ring: Arc<Mutex<Ring>>,
    live: broadcast::Sender<Event>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

impl EventHub {
    pub fn new() -> Self {
        let (live, _) = broadcast::channel(RING);
        Self {
            ring: Arc::new(Mutex::new(Ring {
                next_id: 1,
                events: VecDeque::with_capacity(RING),
            })),
            live,
        }
    }

    /// Numbers, keeps and sends one event; returns its id.
    pub fn publish(&self, kind: &'static str, data: Value) -> u64 {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let event = Event {
            id: ring.next_id,
            kind,
            data,
        };
        ring.next_id += 1;
        if ring.events.len() == RING {
            ring.events.pop_front();
        }
        ring.events.push_back(event.clone());
        // No subscriber is fine: the ring keeps it for the next one.
        let _ = self.live.send(event);
        ring.next_id - 1
    }

    /// The id of the newest event (0 before the first).
    pub fn last_id(&self) -> u64 {
        self.ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next_id
            - 1
    }

    /// What a client missed after `last_id`, and a receiver for everything after that. A client
    /// whose id fell out of the ring (or is from before a restart) gets one `resync` event first:
    /// it must re-read `/status.json` rather than trust a partial history.
    pub fn subscribe(&self, last_id: Option<u64>) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let receiver = self.live.subscribe();
        let Some(last) = last_id else {
            return (Vec::new(), receiver);
        };
        let oldest = ring.events.front().map_or(ring.next_id, |e| e.id);
        let newest = ring.next_id - 1;
        let mut missed = Vec::new();
        if last > newest || last + 1 < oldest {
            missed.push(Event {
                id: newest,
                kind: "resync",
                data: serde_json::json!({"reason": "events were missed; reload the status"}),
            });
        } else {
            missed.extend(ring.events.iter().filter(|e| e.id > last).cloned());
        }
        (missed, receiver)
    }

    /// The SSE body for one client: the missed events, then live ones, with a comment line every
    /// `keep_alive` so proxies and the browser see the connection is alive. A client too slow to
    /// keep up with the ring gets a `resync` and continues from the present.
    pub fn sse_stream(
        &self,
        last_id: Option<u64>,
        keep_alive: Duration,
    ) -> impl Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + 'static {
        let (missed, receiver) = self.subscribe(last_id);
        let hub = self.clone();
        // `retry` tells the browser how soon to reconnect after a drop.
        let head = stream::iter(
            std::iter::once("retry: 1000\n\n".to_string())
                .chain(missed.iter().map(Event::to_sse))
                .map(|text| Ok(Frame::data(Bytes::from(text))))
                .collect::<Vec<_>>(),
        );
        let live = stream::unfold(receiver, move |mut receiver| {
            let hub = hub.clone();
            async move {
                let text = match tokio::time::timeout(keep_alive, receiver.recv()).await {
                    Ok(Ok(event)) => event.to_sse(),
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => Event {
                        id: hub.last_id(),
                        kind: "resync",
                        data: serde_json::json!({"reason": "the client fell behind"}),
                    }
                    .to_sse(),
                    Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                    Err(_) => ": keep-alive\n\n".to_string(),
                };
                Some((Ok(Frame::data(Bytes::from(text))), receiver))
            }
        });
        head.chain(live)
    }
}

/// Parses a `Last-Event-ID` header (or `?last_id=`) value.
pub fn parse_last_id(value: Option<&str>) -> Option<u64> {
    value.and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_count_up_and_a_returning_client_gets_exactly_what_it_missed() {
        let hub = EventHub::new();
        for n in 0..5 {
            hub.publish("volume", json!({"percent": n}));
        }
        let (missed, _) = hub.subscribe(Some(3));
        assert_eq!(missed.iter().map(|e| e.id).collect::<Vec<_>>(), vec![4, 5]);
        let (missed, _) = hub.subscribe(Some(5));
        assert!(missed.is_empty());
        let (missed, _) = hub.subscribe(None);
        assert!(missed.is_empty(), "a new client starts from now");
    }

    #[test]
    fn an_id_older_than_the_ring_or_from_the_future_asks_for_a_resync() {
        let hub = EventHub::new();
        for _ in 0..(RING + 10) {
            hub.publish("volume", json!({}));
        }
        let (missed, _) = hub.subscribe(Some(3));
        assert_eq!(missed.len(), 1);
        assert_eq!(missed[0].kind, "resync");
        // The daemon restarted: ids start again at 1.
        let fresh = EventHub::new();
        fresh.publish("volume", json!({}));
        let (missed, _) = fresh.subscribe(Some(900));
        assert_eq!(missed[0].kind, "resync");
        // Exactly at the ring's edge nothing is lost, so no resync.
        let oldest = (RING + 10 - RING + 1) as u64;
        let (missed, _) = hub.subscribe(Some(oldest - 1));
        assert_eq!(missed.len(), RING);
        assert_eq!(missed[0].id, oldest);
    }

    #[test]
    fn sse_wire_form() {
        let e = Event {
            id: 7,
            kind: "volume",
            data: json!({"percent": 40}),
        };
        assert_eq!(
            e.to_sse(),
            "id: 7\nevent: volume\ndata: {\"percent\":40}\n\n"
        );
        assert_eq!(parse_last_id(Some(" 12 ")), Some(12));
        assert_eq!(parse_last_id(Some("x")), None);
    }

    #[tokio::test]
    async fn a_subscriber_sees_missed_then_live_events_in_order() {
        let hub = EventHub::new();
        hub.publish("playing", json!({}));
        hub.publish("volume", json!({"percent": 10}));
        let mut body = Box::pin(hub.sse_stream(Some(1), Duration::from_secs(30)));
        hub.publish("paused", json!({}));
        let mut text = String::new();
        while !text.contains("event: paused") {
            let frame = tokio::time::timeout(Duration::from_secs(10), body.next())
                .await
                .expect("an event within the deadline")
                .expect("stream open")
                .unwrap();
            text.push_str(std::str::from_utf8(frame.data_ref().unwrap()).unwrap());
        }
        assert!(!text.contains("event: playing"), "{text}");
        let volume = text.find("id: 2\nevent: volume").expect(&text);
        let paused = text.find("id: 3\nevent: paused").expect(&text);
        assert!(volume < paused);
    }
}

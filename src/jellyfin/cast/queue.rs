//! The cast's play queue: pure logic, no I/O, so every order rule is tested directly.
//!
//! Two orders are kept: the order the user built (`original`) and the order things play in
//! (`order`, equal to `original` unless shuffled). Shuffling keeps the current item current and
//! puts it first; turning shuffle off goes back to the user's order at the current item.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// One entry. The same item may be queued twice; `playlist_item_id` tells them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueItem {
    pub id: String,
    pub playlist_item_id: String,
}

/// How `Play` adds items (Jellyfin's `PlayCommand`).
///
/// `PlayInstantMix` has no variant: the speaker cannot build a mix (that needs the server's
/// library queries), so the parser turns it into `PlayNow` of the ids it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayCommand {
    PlayNow,
    PlayNext,
    PlayLast,
    /// Replace the queue with the items in a random order and turn shuffle on. The real server
    /// shuffles itself and sends `PlayNow`; other servers and older versions may pass it on.
    PlayShuffle,
}

impl PlayCommand {
    /// True when the command replaces the queue (and ends what plays now).
    pub fn replaces_queue(self) -> bool {
        matches!(self, Self::PlayNow | Self::PlayShuffle)
    }
}

/// Jellyfin's `RepeatMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RepeatMode {
    #[default]
    RepeatNone,
    RepeatAll,
    RepeatOne,
}

impl RepeatMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RepeatNone => "RepeatNone",
            Self::RepeatAll => "RepeatAll",
            Self::RepeatOne => "RepeatOne",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "RepeatNone" => Some(Self::RepeatNone),
            "RepeatAll" => Some(Self::RepeatAll),
            "RepeatOne" => Some(Self::RepeatOne),
            _ => None,
        }
    }
}

/// Jellyfin's `PlaybackOrder` (`SetShuffleQueue` sends `Sorted` or `Shuffle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlaybackOrder {
    #[default]
    Default,
    Shuffle,
}

impl PlaybackOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "Default",
            Self::Shuffle => "Shuffle",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Shuffle" => Some(Self::Shuffle),
            "Sorted" | "Default" => Some(Self::Default),
            _ => None,
        }
    }
}

/// The queue and where we are in it.
#[derive(Debug)]
pub struct Queue {
    original: Vec<QueueItem>,
    order: Vec<QueueItem>,
    /// Index into `order`.
    current: Option<usize>,
    pub repeat: RepeatMode,
    playback_order: PlaybackOrder,
    next_playlist_id: u64,
    rng: StdRng,
}

impl Queue {
    /// `seed` makes shuffles reproducible in tests; the player seeds from the OS.
    pub fn new(seed: u64) -> Self {
        Self {
            original: Vec::new(),
            order: Vec::new(),
            current: None,
            repeat: RepeatMode::default(),
            playback_order: PlaybackOrder::default(),
            next_playlist_id: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn entries(&mut self, ids: &[String]) -> Vec<QueueItem> {
        ids.iter()
            .map(|id| {
                self.next_playlist_id += 1;
                QueueItem {
                    id: id.clone(),
                    playlist_item_id: format!("playlistItem{}", self.next_playlist_id),
                }
            })
            .collect()
    }

    /// Adds items as `Play` asks. Returns true when the current item changed (start playing it).
    /// `start_index` means nothing to `PlayShuffle`: the first item of the shuffled order plays.
    pub fn play(&mut self, command: PlayCommand, ids: &[String], start_index: usize) -> bool {
        if ids.is_empty() {
            return false;
        }
        let entries = self.entries(ids);
        match (command, self.current) {
            (PlayCommand::PlayShuffle, _) => {
                // The given order stays the user's order, so turning shuffle off later plays
                // the items as they were sent, from the one playing then.
                self.original = entries;
                self.order = self.original.clone();
                self.current = None;
                self.playback_order = PlaybackOrder::Shuffle;
                // Nothing is current yet, so every item takes part in the shuffle.
                self.shuffle_around_current();
                self.current = Some(0);
                true
            }
            (PlayCommand::PlayNow, _) | (_, None) => {
                let start = start_index.min(entries.len() - 1);
                self.original = entries;
                self.order = self.original.clone();
                self.current = Some(start);
                if self.playback_order == PlaybackOrder::Shuffle {
                    self.shuffle_around_current();
                }
                true
            }
            (PlayCommand::PlayNext, Some(at)) => {
                // After the current item in both orders, so turning shuffle off keeps them next.
                let cur = &self.order[at];
                let in_original = self
                    .original
                    .iter()
                    .position(|e| e.playlist_item_id == cur.playlist_item_id)
                    .map_or(self.original.len(), |p| p + 1);
                self.original
                    .splice(in_original..in_original, entries.iter().cloned());
                self.order.splice(at + 1..at + 1, entries);
                false
            }
            (PlayCommand::PlayLast, Some(_)) => {
                self.original.extend(entries.iter().cloned());
                self.order.extend(entries);
                false
            }
        }
    }

    pub fn current(&self) -> Option<&QueueItem> {
        self.current.and_then(|i| self.order.get(i))
    }

    /// Where the current item is in play order (0-based), for the status page.
    pub fn current_index(&self) -> Option<usize> {
        self.current.filter(|i| *i < self.order.len())
    }

    /// The track ended by itself: what plays next (`RepeatOne` repeats, `RepeatAll` wraps).
    pub fn on_track_end(&mut self) -> Option<&QueueItem> {
        if self.repeat == RepeatMode::RepeatOne {
            return self.current();
        }
        self.skip()
    }

    /// The user's "next", or skipping a failed item: moves on even in `RepeatOne`. At the end
    /// without `RepeatAll` the queue is finished (`None`; the items stay for a later `Play`).
    pub fn skip(&mut self) -> Option<&QueueItem> {
        let at = self.current?;
        self.current = if at + 1 < self.order.len() {
            Some(at + 1)
        } else if self.repeat == RepeatMode::RepeatAll && !self.order.is_empty() {
            Some(0)
        } else {
            None
        };
        self.current()
    }

    /// The user's "previous": the item before, wrapping with `RepeatAll`, else the first again.
    pub fn previous(&mut self) -> Option<&QueueItem> {
        let at = self.current?;
        self.current = Some(if at > 0 {
            at - 1
        } else if self.repeat == RepeatMode::RepeatAll {
            self.order.len().saturating_sub(1)
        } else {
            0
        });
        self.current()
    }

    pub fn playback_order(&self) -> PlaybackOrder {
        self.playback_order
    }

    /// Shuffle on or off; the current item stays current either way.
    pub fn set_playback_order(&mut self, order: PlaybackOrder) {
        if order == self.playback_order {
            return;
        }
        self.playback_order = order;
        match order {
            PlaybackOrder::Shuffle => self.shuffle_around_current(),
            PlaybackOrder::Default => {
                let current = self.current().map(|c| c.playlist_item_id.clone());
                self.order = self.original.clone();
                self.current =
                    current.and_then(|id| self.order.iter().position(|e| e.playlist_item_id == id));
            }
        }
    }

    fn shuffle_around_current(&mut self) {
        let current = self.current.map(|i| self.order.remove(i));
        self.order.shuffle(&mut self.rng);
        if let Some(current) = current {
            self.order.insert(0, current);
            self.current = Some(0);
        }
    }

    /// Everything queued, in play order (for `NowPlayingQueue`).
    pub fn items(&self) -> &[QueueItem] {
        &self.order
    }

    /// Forgets everything (Stop).
    pub fn clear(&mut self) {
        self.original.clear();
        self.order.clear();
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// The ids in sorted order: two queues hold the same items when these are equal.
    fn sorted(ids: &[String]) -> Vec<String> {
        let mut ids = ids.to_vec();
        ids.sort();
        ids
    }

    fn order(q: &Queue) -> Vec<&str> {
        q.items().iter().map(|e| e.id.as_str()).collect()
    }

    fn cur(q: &Queue) -> Option<&str> {
        q.current().map(|e| e.id.as_str())
    }

    #[test]
    fn play_now_next_and_last_build_the_queue_in_order() {
        let mut q = Queue::new(1);
        assert!(q.play(PlayCommand::PlayNow, &ids(&["a", "b", "c"]), 1));
        assert_eq!(cur(&q), Some("b"));
        assert!(!q.play(PlayCommand::PlayLast, &ids(&["z"]), 0));
        assert!(!q.play(PlayCommand::PlayNext, &ids(&["n1", "n2"]), 0));
        assert_eq!(order(&q), ["a", "b", "n1", "n2", "c", "z"]);
        assert_eq!(q.skip().map(|e| e.id.as_str()), Some("n1"));
        assert_eq!(q.skip().map(|e| e.id.as_str()), Some("n2"));
        // PlayNow replaces everything.
        assert!(q.play(PlayCommand::PlayNow, &ids(&["x"]), 7));
        assert_eq!(order(&q), ["x"]);
        assert_eq!(cur(&q), Some("x"), "StartIndex is clamped");
        assert_eq!(q.current_index(), Some(0));
        // PlayNext or PlayLast with nothing playing starts playing.
        let mut empty = Queue::new(1);
        assert!(empty.play(PlayCommand::PlayLast, &ids(&["p"]), 0));
        assert_eq!(cur(&empty), Some("p"));
        assert!(!empty.play(PlayCommand::PlayNow, &[], 0), "nothing to play");
    }

    #[test]
    fn repeat_modes_decide_what_follows_the_end() {
        let mut q = Queue::new(1);
        q.play(PlayCommand::PlayNow, &ids(&["a", "b"]), 0);
        q.repeat = RepeatMode::RepeatOne;
        assert_eq!(q.on_track_end().map(|e| e.id.clone()), Some("a".into()));
        assert_eq!(
            q.skip().map(|e| e.id.clone()),
            Some("b".into()),
            "next skips even in RepeatOne"
        );
        q.repeat = RepeatMode::RepeatAll;
        assert_eq!(q.on_track_end().map(|e| e.id.clone()), Some("a".into()));
        assert_eq!(q.previous().map(|e| e.id.clone()), Some("b".into()));
        q.repeat = RepeatMode::RepeatNone;
        assert!(q.on_track_end().is_none(), "the end of the queue");
        assert_eq!(q.current_index(), None);
        assert!(q.skip().is_none());
        q.play(PlayCommand::PlayNow, &ids(&["a", "b"]), 0);
        assert_eq!(
            q.previous().map(|e| e.id.clone()),
            Some("a".into()),
            "the first item again"
        );
        assert_eq!(RepeatMode::parse("RepeatAll"), Some(RepeatMode::RepeatAll));
        assert_eq!(RepeatMode::parse("Sideways"), None);
        assert_eq!(PlaybackOrder::parse("Sorted"), Some(PlaybackOrder::Default));
    }

    #[test]
    fn shuffle_keeps_the_current_item_and_unshuffle_restores_the_users_order() {
        let names: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
        let mut q = Queue::new(7);
        q.play(PlayCommand::PlayNow, &names, 5);
        q.set_playback_order(PlaybackOrder::Shuffle);
        assert_eq!(cur(&q), Some("t5"));
        assert_eq!(order(&q)[0], "t5");
        let shuffled: Vec<String> = order(&q).iter().map(|s| s.to_string()).collect();
        assert_ne!(
            shuffled, names,
            "20 items do not shuffle into the same order"
        );
        assert_eq!(
            sorted(&shuffled),
            sorted(&names),
            "nothing lost or duplicated"
        );
        q.skip();
        let now = cur(&q).unwrap().to_string();
        q.set_playback_order(PlaybackOrder::Default);
        assert_eq!(
            order(&q),
            names.iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert_eq!(cur(&q), Some(now.as_str()), "still on the same item");
        // PlayNow while shuffled starts at StartIndex and shuffles the rest.
        q.set_playback_order(PlaybackOrder::Shuffle);
        q.play(PlayCommand::PlayNow, &names, 3);
        assert_eq!(cur(&q), Some("t3"));
    }

    #[test]
    fn play_shuffle_replaces_the_queue_in_a_random_order_and_turns_shuffle_on() {
        let names: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
        let mut q = Queue::new(3);
        q.play(PlayCommand::PlayNow, &ids(&["old1", "old2"]), 0);
        assert!(q.play(PlayCommand::PlayShuffle, &names, 7));
        assert_eq!(q.playback_order(), PlaybackOrder::Shuffle);
        let shuffled: Vec<String> = order(&q).iter().map(|s| s.to_string()).collect();
        assert_eq!(
            cur(&q),
            Some(shuffled[0].as_str()),
            "the first of the new order plays"
        );
        assert_ne!(
            shuffled, names,
            "20 items do not shuffle into the same order"
        );
        assert_eq!(
            sorted(&shuffled),
            sorted(&names),
            "the old queue is gone, nothing lost or duplicated"
        );
        // Another seed, another order: the order comes from the generator, not from the ids.
        let mut other = Queue::new(4);
        other.play(PlayCommand::PlayShuffle, &names, 0);
        assert_ne!(order(&other), order(&q));
        // Every item plays once, in the reported order, then the queue ends.
        let mut played = vec![cur(&q).unwrap().to_string()];
        while let Some(next) = q.on_track_end() {
            played.push(next.id.clone());
        }
        assert_eq!(played, shuffled);
        // Shuffle off: the order the items were sent in, at the item playing then.
        q.play(PlayCommand::PlayShuffle, &names, 0);
        q.skip();
        let now = cur(&q).unwrap().to_string();
        q.set_playback_order(PlaybackOrder::Default);
        assert_eq!(
            order(&q),
            names.iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert_eq!(cur(&q), Some(now.as_str()));
        // One item, and an empty request, behave.
        assert!(q.play(PlayCommand::PlayShuffle, &ids(&["solo"]), 0));
        assert_eq!(order(&q), ["solo"]);
        assert!(!q.play(PlayCommand::PlayShuffle, &[], 0));
        assert!(PlayCommand::PlayShuffle.replaces_queue() && PlayCommand::PlayNow.replaces_queue());
        assert!(!PlayCommand::PlayNext.replaces_queue() && !PlayCommand::PlayLast.replaces_queue());
    }

    #[test]
    fn the_same_item_twice_is_two_entries() {
        let mut q = Queue::new(1);
        q.play(PlayCommand::PlayNow, &ids(&["a", "a"]), 0);
        let [first, second] = q.items() else {
            panic!("two entries")
        };
        assert_ne!(first.playlist_item_id, second.playlist_item_id);
    }
}

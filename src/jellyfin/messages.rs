//! Inbound WebSocket messages and what they mean for the speaker. Pure functions: everything a
//! server (or an attacker on the LAN) can send is handled here without panicking.

use std::collections::VecDeque;

use log::debug;
use serde_json::Value;

use super::cast::{CastCommand, PlayCommand, PlayRequest, PlaybackOrder, RepeatMode};
use crate::audio::MAX_VOLUME;
use crate::connect::control::Command;
use crate::source::SourceCommand;

/// What a message asks of us.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Answer `KeepAlive` now and every `seconds / 2`.
    ForceKeepAlive { seconds: u64 },
    /// A remote-control request, already translated (for the cast while one plays).
    Control(Vec<Command>),
    /// Only the cast can do this (`Play`, repeat and shuffle modes).
    Cast(CastCommand),
    /// `Rewind` / `FastForward`: a seek relative to where playback is now, in ms.
    SeekBy(i64),
    /// Unknown, malformed, repeated or not for us.
    Ignore,
}

/// Jellyfin's default skip lengths (see `playstate`).
pub const SKIP_BACK_MS: i64 = 10_000;
pub const SKIP_FORWARD_MS: i64 = 30_000;

/// Remembers recent MessageIds so a repeated message is acted on once.
#[derive(Debug, Default)]
pub struct RecentIds(VecDeque<String>);

impl RecentIds {
    const KEEP: usize = 256;

    /// True the first time an id is seen.
    pub fn first_time(&mut self, id: &str) -> bool {
        if self.0.iter().any(|seen| seen == id) {
            return false;
        }
        if self.0.len() == Self::KEEP {
            self.0.pop_front();
        }
        self.0.push_back(id.to_string());
        true
    }
}

/// Volume before a Mute, to restore on Unmute.
#[derive(Debug, Default)]
pub struct MuteMemory(Option<u16>);

/// Parses one text frame. `volume` is the speaker's live volume (for Mute/Unmute).
pub fn parse(text: &str, seen: &mut RecentIds, mute: &mut MuteMemory, volume: u16) -> Inbound {
    let Ok(message) = serde_json::from_str::<Value>(text) else {
        return Inbound::Ignore;
    };
    if let Some(id) = message.get("MessageId").and_then(Value::as_str) {
        if !seen.first_time(id) {
            return Inbound::Ignore;
        }
    }
    let data = message.get("Data").unwrap_or(&Value::Null);
    match message.get("MessageType").and_then(Value::as_str) {
        Some("ForceKeepAlive") => {
            let seconds = data
                .as_u64()
                .or_else(|| data.as_str().and_then(|s| s.parse().ok()))
                .filter(|s| *s >= 2)
                .unwrap_or(60);
            Inbound::ForceKeepAlive { seconds }
        }
        Some("Play") => play(data),
        Some("Playstate") => playstate(data),
        Some("GeneralCommand") => general(data, mute, volume),
        _ => Inbound::Ignore,
    }
}

/// `Play {ItemIds, PlayCommand, StartIndex?, StartPositionTicks?, MediaSourceId?,
/// ControllingUserId}`.
fn play(data: &Value) -> Inbound {
    let command = match data.get("PlayCommand").and_then(Value::as_str) {
        Some("PlayNow") | None => PlayCommand::PlayNow,
        Some("PlayNext") => PlayCommand::PlayNext,
        Some("PlayLast") => PlayCommand::PlayLast,
        // The real server shuffles and expands instant mixes itself and sends PlayNow; these
        // arrive only from other servers or older versions, so handle them defensively.
        Some("PlayShuffle") => PlayCommand::PlayShuffle,
        Some("PlayInstantMix") => {
            // A mix is built from library queries the speaker does not make: play what came.
            debug!("PlayInstantMix reached the speaker (the server did not expand the mix): playing the given items");
            PlayCommand::PlayNow
        }
        Some(_) => return Inbound::Ignore,
    };
    let item_ids: Vec<String> = data
        .get("ItemIds")
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if item_ids.is_empty() {
        return Inbound::Ignore;
    }
    let number = |name: &str| {
        data.get(name).and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
    };
    let text = |name: &str| data.get(name).and_then(Value::as_str).map(str::to_string);
    Inbound::Cast(CastCommand::Play(PlayRequest {
        item_ids,
        command,
        start_index: number("StartIndex")
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0),
        start_position_ms: number("StartPositionTicks").unwrap_or(0) / 10_000,
        media_source_id: text("MediaSourceId"),
        user_id: text("ControllingUserId"),
    }))
}

/// A remote-control request as a command for whichever source is active ([`crate::source`]).
pub fn to_source(command: &Command) -> SourceCommand {
    match command {
        Command::Play => SourceCommand::Play,
        Command::Pause => SourceCommand::Pause,
        Command::PlayPause => SourceCommand::PlayPause,
        Command::Stop => SourceCommand::Stop,
        Command::Next => SourceCommand::Next,
        Command::Previous => SourceCommand::Previous,
        Command::Seek { position_ms } => SourceCommand::Seek {
            position_ms: u64::from(*position_ms),
        },
        Command::SetVolume(v) => SourceCommand::SetVolume(*v),
        Command::VolumeUp => SourceCommand::VolumeUp,
        Command::VolumeDown => SourceCommand::VolumeDown,
    }
}

fn playstate(data: &Value) -> Inbound {
    let command = match data.get("Command").and_then(Value::as_str) {
        Some("Pause") => Command::Pause,
        Some("Unpause") => Command::Play,
        Some("PlayPause") => Command::PlayPause,
        Some("Stop") => Command::Stop,
        Some("NextTrack") => Command::Next,
        Some("PreviousTrack") => Command::Previous,
        // The server sends these without an amount (PlaystateRequest: Command, SeekPositionTicks,
        // ControllingUserId); its clients skip by the user's display preferences, whose defaults
        // are 10 s back and 30 s forward (Jellyfin.Data/Entities/DisplayPreferences.cs v10.10.7
        // L27-28: SkipForwardLength = 30000, SkipBackwardLength = 10000; same in all three).
        Some("Rewind") => return Inbound::SeekBy(-SKIP_BACK_MS),
        Some("FastForward") => return Inbound::SeekBy(SKIP_FORWARD_MS),
        Some("Seek") => {
            let ticks = data
                .get("SeekPositionTicks")
                .and_then(Value::as_i64)
                .unwrap_or(-1);
            if ticks < 0 {
                return Inbound::Ignore;
            }
            // 1 tick = 100 ns.
            let ms = u32::try_from(ticks / 10_000).unwrap_or(u32::MAX);
            Command::Seek { position_ms: ms }
        }
        _ => return Inbound::Ignore,
    };
    Inbound::Control(vec![command])
}

fn general(data: &Value, mute: &mut MuteMemory, volume: u16) -> Inbound {
    let arg = |name: &str| {
        data.get("Arguments")
            .and_then(|a| a.get(name))
            .and_then(|v| {
                v.as_str()
                    .map(str::to_string)
                    .or_else(|| v.as_f64().map(|n| n.to_string()))
            })
    };
    let command = match data.get("Name").and_then(Value::as_str) {
        Some("SetVolume") => {
            let Some(percent) = arg("Volume").and_then(|v| v.parse::<f64>().ok()) else {
                return Inbound::Ignore;
            };
            mute.0 = None;
            Command::SetVolume(percent_to_volume(percent))
        }
        Some("SetRepeatMode") => {
            return match arg("RepeatMode").as_deref().and_then(RepeatMode::parse) {
                Some(mode) => Inbound::Cast(CastCommand::SetRepeat(mode)),
                None => Inbound::Ignore,
            }
        }
        Some("SetShuffleQueue") => {
            return match arg("ShuffleMode").as_deref().and_then(PlaybackOrder::parse) {
                Some(order) => Inbound::Cast(CastCommand::SetShuffle(order)),
                None => Inbound::Ignore,
            }
        }
        Some("VolumeUp") => Command::VolumeUp,
        Some("VolumeDown") => Command::VolumeDown,
        Some("Mute") => return mute_on(mute, volume),
        Some("Unmute") => return mute_off(mute, volume),
        Some("ToggleMute") => {
            return if mute.0.is_some() || volume == 0 {
                mute_off(mute, volume)
            } else {
                mute_on(mute, volume)
            }
        }
        _ => return Inbound::Ignore,
    };
    Inbound::Control(vec![command])
}

fn mute_on(mute: &mut MuteMemory, volume: u16) -> Inbound {
    if volume == 0 {
        return Inbound::Ignore;
    }
    mute.0 = Some(volume);
    Inbound::Control(vec![Command::SetVolume(0)])
}

fn mute_off(mute: &mut MuteMemory, volume: u16) -> Inbound {
    match mute.0.take() {
        Some(before) if volume == 0 => Inbound::Control(vec![Command::SetVolume(before)]),
        _ => Inbound::Ignore,
    }
}

/// Jellyfin's 0-100 to Spotify's 0..=65535.
pub fn percent_to_volume(percent: f64) -> u16 {
    let clamped = if percent.is_finite() {
        percent.clamp(0.0, 100.0)
    } else {
        0.0
    };
    (clamped / 100.0 * f64::from(MAX_VOLUME)).round() as u16
}

/// Spotify's 0..=65535 to Jellyfin's 0-100.
pub fn volume_to_percent(volume: u16) -> u8 {
    (f64::from(volume) * 100.0 / f64::from(MAX_VOLUME)).round() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Inbound {
        parse(
            text,
            &mut RecentIds::default(),
            &mut MuteMemory::default(),
            30000,
        )
    }

    #[test]
    fn rewind_and_fast_forward_skip_by_the_servers_defaults() {
        let m = |c: &str| format!(r#"{{"MessageType":"Playstate","Data":{{"Command":"{c}"}}}}"#);
        assert_eq!(p(&m("Rewind")), Inbound::SeekBy(-10_000));
        assert_eq!(p(&m("FastForward")), Inbound::SeekBy(30_000));
    }

    #[test]
    fn playstate_and_general_commands_translate() {
        assert_eq!(
            p(r#"{"MessageType":"Playstate","Data":{"Command":"Pause"}}"#),
            Inbound::Control(vec![Command::Pause])
        );
        assert_eq!(
            p(r#"{"MessageType":"Playstate","Data":{"Command":"Unpause"}}"#),
            Inbound::Control(vec![Command::Play])
        );
        assert_eq!(
            p(
                r#"{"MessageType":"Playstate","Data":{"Command":"Seek","SeekPositionTicks":600000000}}"#
            ),
            Inbound::Control(vec![Command::Seek {
                position_ms: 60_000
            }])
        );
        assert_eq!(
            p(
                r#"{"MessageType":"GeneralCommand","Data":{"Name":"SetVolume","Arguments":{"Volume":"50"}}}"#
            ),
            Inbound::Control(vec![Command::SetVolume(32768)])
        );
        assert_eq!(
            p(r#"{"MessageType":"ForceKeepAlive","Data":60}"#),
            Inbound::ForceKeepAlive { seconds: 60 }
        );
    }

    #[test]
    fn mute_remembers_the_volume() {
        let (mut seen, mut mute) = (RecentIds::default(), MuteMemory::default());
        let m = r#"{"MessageType":"GeneralCommand","Data":{"Name":"Mute"}}"#;
        assert_eq!(
            parse(m, &mut seen, &mut mute, 30000),
            Inbound::Control(vec![Command::SetVolume(0)])
        );
        let u = r#"{"MessageType":"GeneralCommand","Data":{"Name":"Unmute"}}"#;
        assert_eq!(
            parse(u, &mut seen, &mut mute, 0),
            Inbound::Control(vec![Command::SetVolume(30000)])
        );
        let t = r#"{"MessageType":"GeneralCommand","Data":{"Name":"ToggleMute"}}"#;
        assert_eq!(
            parse(t, &mut seen, &mut mute, 30000),
            Inbound::Control(vec![Command::SetVolume(0)])
        );
        assert_eq!(
            parse(t, &mut seen, &mut mute, 0),
            Inbound::Control(vec![Command::SetVolume(30000)])
        );
    }

    #[test]
    fn repeated_ids_unknown_types_and_garbage_are_ignored() {
        let mut seen = RecentIds::default();
        let mut mute = MuteMemory::default();
        let m = r#"{"MessageType":"Playstate","MessageId":"a1","Data":{"Command":"NextTrack"}}"#;
        assert_eq!(
            parse(m, &mut seen, &mut mute, 1),
            Inbound::Control(vec![Command::Next])
        );
        assert_eq!(parse(m, &mut seen, &mut mute, 1), Inbound::Ignore);
        for junk in [
            "",
            "null",
            "[]",
            "{",
            r#"{"MessageType":12}"#,
            r#"{"MessageType":"LibraryChanged","Data":{}}"#,
            r#"{"MessageType":"Playstate","Data":"Pause"}"#,
            r#"{"MessageType":"Playstate","Data":{"Command":"Seek","SeekPositionTicks":-5}}"#,
            r#"{"MessageType":"GeneralCommand","Data":{"Name":"SetVolume","Arguments":{"Volume":"loud"}}}"#,
            r#"{"MessageType":"ForceKeepAlive","Data":"x"}"#,
        ] {
            let r = parse(junk, &mut seen, &mut mute, 1);
            assert!(
                matches!(r, Inbound::Ignore | Inbound::ForceKeepAlive { seconds: 60 }),
                "{junk}: {r:?}"
            );
        }
    }

    #[test]
    fn play_and_queue_modes_are_cast_commands() {
        let r = p(
            r#"{"MessageType":"Play","Data":{"ItemIds":["a","b"],"PlayCommand":"PlayNext","StartIndex":1,"StartPositionTicks":15000000,"ControllingUserId":"u1","MediaSourceId":"m"}}"#,
        );
        assert_eq!(
            r,
            Inbound::Cast(CastCommand::Play(PlayRequest {
                item_ids: vec!["a".into(), "b".into()],
                command: PlayCommand::PlayNext,
                start_index: 1,
                start_position_ms: 1_500,
                media_source_id: Some("m".into()),
                user_id: Some("u1".into()),
            }))
        );
        assert!(matches!(
            p(r#"{"MessageType":"Play","Data":{"ItemIds":["a"]}}"#),
            Inbound::Cast(CastCommand::Play(PlayRequest {
                command: PlayCommand::PlayNow,
                start_index: 0,
                ..
            }))
        ));
        for junk in [
            r#"{"MessageType":"Play","Data":{"ItemIds":[]}}"#,
            r#"{"MessageType":"Play","Data":{"ItemIds":"a"}}"#,
            r#"{"MessageType":"Play","Data":{"ItemIds":["a"],"PlayCommand":"PlayEverything"}}"#,
            r#"{"MessageType":"GeneralCommand","Data":{"Name":"SetRepeatMode","Arguments":{"RepeatMode":"Often"}}}"#,
        ] {
            assert_eq!(p(junk), Inbound::Ignore, "{junk}");
        }
        assert_eq!(
            p(
                r#"{"MessageType":"GeneralCommand","Data":{"Name":"SetRepeatMode","Arguments":{"RepeatMode":"RepeatOne"}}}"#
            ),
            Inbound::Cast(CastCommand::SetRepeat(RepeatMode::RepeatOne))
        );
        assert_eq!(
            p(
                r#"{"MessageType":"GeneralCommand","Data":{"Name":"SetShuffleQueue","Arguments":{"ShuffleMode":"Shuffle"}}}"#
            ),
            Inbound::Cast(CastCommand::SetShuffle(PlaybackOrder::Shuffle))
        );
        assert_eq!(to_source(&Command::Play), SourceCommand::Play);
        assert_eq!(to_source(&Command::Stop), SourceCommand::Stop);
    }

    #[test]
    fn play_shuffle_and_an_unexpanded_instant_mix_are_played() {
        let r = p(
            r#"{"MessageType":"Play","Data":{"ItemIds":["a","b","c"],"PlayCommand":"PlayShuffle","StartIndex":2,"ControllingUserId":"u1"}}"#,
        );
        assert_eq!(
            r,
            Inbound::Cast(CastCommand::Play(PlayRequest {
                item_ids: vec!["a".into(), "b".into(), "c".into()],
                command: PlayCommand::PlayShuffle,
                start_index: 2,
                start_position_ms: 0,
                media_source_id: None,
                user_id: Some("u1".into()),
            }))
        );
        // An instant mix the server did not expand: the seed items, played now.
        let r = p(
            r#"{"MessageType":"Play","Data":{"ItemIds":["seed"],"PlayCommand":"PlayInstantMix"}}"#,
        );
        assert_eq!(
            r,
            Inbound::Cast(CastCommand::Play(PlayRequest {
                item_ids: vec!["seed".into()],
                command: PlayCommand::PlayNow,
                start_index: 0,
                start_position_ms: 0,
                media_source_id: None,
                user_id: None,
            }))
        );
        assert_eq!(
            p(r#"{"MessageType":"Play","Data":{"ItemIds":[],"PlayCommand":"PlayShuffle"}}"#),
            Inbound::Ignore,
            "nothing to shuffle"
        );
    }

    #[test]
    fn volume_scales_round_trip() {
        for percent in 0..=100u8 {
            assert_eq!(
                volume_to_percent(percent_to_volume(f64::from(percent))),
                percent
            );
        }
        assert_eq!(percent_to_volume(250.0), MAX_VOLUME);
    }
}

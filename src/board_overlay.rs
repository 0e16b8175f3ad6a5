//! The SD image's device-tree overlay for the board chosen in `pispeaker.toml`.
//!
//! A HAT only appears if the Pi firmware applies its overlay at power-on, and the firmware reads
//! `dtoverlay=` lines from `config.txt` on the FAT partition, before Linux runs. So
//! `board = "hifiberry-dacplus"`, edited on a PC, must end up there. Three constraints shape how:
//!
//! - Debian's `raspi-firmware` rewrites `config.txt` from a blank slate on every kernel install,
//!   appending `/etc/default/raspi-firmware-custom` (on the read-only root). A block we kept in
//!   `config.txt` would vanish then. Instead that file (fixed in the image) holds the line
//!   `include pispeaker-board.txt`, the firmware's own include directive, and the overlay lines
//!   live in `/boot/firmware/pispeaker-board.txt`, which only this module writes. A regenerated
//!   `config.txt` keeps the include; this file is never touched by Debian.
//! - The mapping board → overlay comes from the presets (`image-overlay`, `image-dtbs`), nothing
//!   else: the Pi 2 fix-up is added exactly when the preset lists the Pi 2's device tree.
//! - The new overlay only takes effect after the firmware runs again, so the boot unit reboots
//!   once when the effective lines changed — and never twice for the same content (a card that
//!   silently drops writes must not turn into a boot loop). An unknown board, a broken file or a
//!   failed write leaves the old overlay in place and the speaker booting.

use std::io;
use std::path::{Path, PathBuf};

use crate::{board, boot_config, state};

/// The file on the FAT partition that `config.txt` includes.
pub const DEFAULT_TARGET: &str = "/boot/firmware/pispeaker-board.txt";
/// The overlay that frees GPIO 18–21 on the Pi 2 (see `board/overlays/README.md`).
pub const PI2_FIXUP: &str = "pispeaker-pi2-i2s";
/// The Pi 2's device tree: a preset listing it gets the fix-up in a `[pi2]` section.
const PI2_DTB: &str = "bcm2836-rpi-2-b";

const HEADER: &str = "\
# pispeaker: the device-tree overlay for the board in pispeaker.toml (included from config.txt).
# Written at boot by pispeaker-board-overlay.service: change `board` in pispeaker.toml, not this.
";

/// What the file should hold for a preset.
pub fn render(preset: &board::Preset) -> String {
    let mut out = String::from(HEADER);
    match &preset.image_overlay {
        None => out.push_str("# This board needs no overlay.\n"),
        Some(overlay) => {
            if preset.image_dtbs.iter().any(|d| d == PI2_DTB) {
                out.push_str(&format!("[pi2]\ndtoverlay={PI2_FIXUP}\n[all]\n"));
            }
            out.push_str(&format!("dtoverlay={overlay}\n"));
        }
    }
    out
}

/// The lines the firmware acts on: a comment-only or missing file is "no overlay".
fn effective(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// What `apply` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The file already says what the board needs: nothing written.
    Unchanged { board: Option<String> },
    /// The file was (re)written. `reboot` is true when the lines the firmware reads changed, so
    /// the firmware has to run again for them to apply.
    Written { board: Option<String>, reboot: bool },
    /// The board (or the whole settings file) could not be used: the file was left as it is.
    LeftAlone { why: String },
}

/// Where to write and how.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `pispeaker.toml` on the boot partition.
    pub source: PathBuf,
    /// The included file, normally [`DEFAULT_TARGET`].
    pub target: PathBuf,
    /// If set and this mount point is read-only (the image mounts the FAT `ro`), it is remounted
    /// read-write for the write only and read-only again afterwards.
    pub remount: Option<PathBuf>,
}

/// Reads the board from `source` and brings `target` in line with its preset.
pub fn apply(paths: &Paths) -> io::Result<Outcome> {
    let board = match board_from(&paths.source) {
        Ok(board) => board,
        Err(why) => return Ok(Outcome::LeftAlone { why }),
    };
    // No `board` means the speaker's own default (no preset): no HAT, so no overlay.
    let wanted = match &board {
        Some(name) => match board::find(name) {
            Ok(preset) => render(&preset),
            Err(e) => return Ok(Outcome::LeftAlone { why: e.to_string() }),
        },
        None => render_none(),
    };
    let current = match std::fs::read_to_string(&paths.target) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if current.as_deref() == Some(wanted.as_str()) {
        return Ok(Outcome::Unchanged { board });
    }
    let reboot = effective(current.as_deref().unwrap_or("")) != effective(&wanted);
    with_writable(paths.remount.as_deref(), || {
        state::write_atomic_with_mode(&paths.target, wanted.as_bytes(), 0o644)
    })?;
    // Read back what the card now says: a write that did not land must not cause a reboot.
    if std::fs::read_to_string(&paths.target)? != wanted {
        return Err(io::Error::other(format!(
            "{} does not hold what was written",
            paths.target.display()
        )));
    }
    Ok(Outcome::Written { board, reboot })
}

fn render_none() -> String {
    format!("{HEADER}# This board needs no overlay.\n")
}

/// The `board` value, `None` if unset. Anything unusable (a parse error, a non-string, an
/// unknown name) is an error with the message for the journal: the old overlay then stays,
/// because removing a working HAT's overlay over a typo would only add a second problem.
fn board_from(source: &Path) -> Result<Option<String>, String> {
    let text = match std::fs::read_to_string(source) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{} cannot be read: {e}", source.display())),
    };
    let (settings, problems) = boot_config::parse(&text);
    if let Some(p) = problems
        .iter()
        .find(|p| p.key.is_empty() || p.key == "board")
    {
        let key = if p.key.is_empty() { "" } else { "board " };
        return Err(format!("{}: {key}{}", source.display(), p.message));
    }
    Ok(settings.board)
}

/// Runs `write` with `mount` writable, if it is a read-only mount; restores read-only after.
pub(crate) fn with_writable(
    mount: Option<&Path>,
    write: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    let Some(mount) = mount.filter(|m| is_read_only(m)) else {
        return write();
    };
    remount(mount, "rw")?;
    let result = write();
    let back = remount(mount, "ro");
    result.and(back)
}

fn is_read_only(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut st) };
    rc == 0 && (st.f_flag & libc::ST_RDONLY) != 0
}

fn remount(mount: &Path, mode: &str) -> io::Result<()> {
    let status = std::process::Command::new("mount")
        .arg("-o")
        .arg(format!("remount,{mode}"))
        .arg(mount)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "mount -o remount,{mode} {} failed ({status})",
            mount.display()
        )))
    }
}

/// Decides whether to reboot after a write that changed the firmware's lines, at most once per
/// content: `stamp` (on the writable data partition) remembers the content a reboot was made
/// for. Finding the same content there means the last reboot did not make the change stick.
pub fn reboot_allowed(stamp: &Path, wanted: &[u8]) -> io::Result<bool> {
    match state::read_optional(stamp)? {
        Some(previous) if previous == wanted => Ok(false),
        _ => {
            state::write_atomic_with_mode(stamp, wanted, 0o644)?;
            Ok(true)
        }
    }
}

/// After a boot with nothing to change, the next change may reboot again.
pub fn clear_stamp(stamp: &Path) -> io::Result<()> {
    match std::fs::remove_file(stamp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Card {
        dir: tempfile::TempDir,
    }

    impl Card {
        fn new() -> Self {
            Card {
                dir: tempfile::tempdir().unwrap(),
            }
        }
        fn paths(&self) -> Paths {
            Paths {
                source: self.dir.path().join("pispeaker.toml"),
                target: self.dir.path().join("pispeaker-board.txt"),
                remount: None,
            }
        }
        fn settings(&self, text: &str) {
            std::fs::write(self.paths().source, text).unwrap();
        }
        fn target(&self) -> Option<String> {
            std::fs::read_to_string(self.paths().target).ok()
        }
    }

    fn lines_for(board: &str) -> Vec<String> {
        let card = Card::new();
        card.settings(&format!("board = \"{board}\"\n"));
        apply(&card.paths()).unwrap();
        effective(&card.target().unwrap())
            .into_iter()
            .map(String::from)
            .collect()
    }

    #[test]
    fn each_hat_preset_writes_its_overlay_with_the_pi2_fixup() {
        for (board, overlay) in [
            ("hifiberry-dac", "pispeaker-hifiberry-dac"),
            ("hifiberry-dacplus", "pispeaker-hifiberry-dacplus"),
            ("iqaudio-dacplus", "pispeaker-iqaudio-dacplus"),
            ("i2s-dac", "pispeaker-i2s-dac"),
        ] {
            assert_eq!(
                lines_for(board),
                [
                    "[pi2]",
                    "dtoverlay=pispeaker-pi2-i2s",
                    "[all]",
                    &format!("dtoverlay={overlay}")
                ],
                "{board}"
            );
        }
    }

    #[test]
    fn every_preset_maps_to_its_image_overlay() {
        // The single source of truth: whatever the presets say, the file says.
        for preset in board::presets() {
            let lines = lines_for(preset.name);
            let overlays: Vec<&str> = lines
                .iter()
                .filter_map(|l| l.strip_prefix("dtoverlay="))
                .filter(|o| *o != PI2_FIXUP)
                .collect();
            assert_eq!(
                overlays,
                preset
                    .image_overlay
                    .as_deref()
                    .into_iter()
                    .collect::<Vec<_>>(),
                "{}",
                preset.name
            );
        }
    }

    #[test]
    fn boards_without_an_overlay_write_no_dtoverlay_line() {
        for board in ["usb-dac", "bcm2835-headphones"] {
            assert!(lines_for(board).is_empty(), "{board}");
        }
    }

    #[test]
    fn switching_to_a_usb_dac_removes_the_overlay_and_asks_for_a_reboot() {
        let card = Card::new();
        card.settings("board = \"hifiberry-dacplus\"\n");
        assert_eq!(
            apply(&card.paths()).unwrap(),
            Outcome::Written {
                board: Some("hifiberry-dacplus".into()),
                reboot: true
            }
        );
        card.settings("board = \"usb-dac\"\n");
        assert_eq!(
            apply(&card.paths()).unwrap(),
            Outcome::Written {
                board: Some("usb-dac".into()),
                reboot: true
            }
        );
        assert!(!card.target().unwrap().contains("dtoverlay"));
    }

    #[test]
    fn second_run_writes_nothing_and_does_not_reboot() {
        let card = Card::new();
        card.settings("board = \"iqaudio-dacplus\"\n");
        assert!(matches!(
            apply(&card.paths()).unwrap(),
            Outcome::Written { reboot: true, .. }
        ));
        let modified = std::fs::metadata(card.paths().target)
            .unwrap()
            .modified()
            .unwrap();
        let inode =
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(card.paths().target).unwrap());
        assert_eq!(
            apply(&card.paths()).unwrap(),
            Outcome::Unchanged {
                board: Some("iqaudio-dacplus".into())
            }
        );
        let meta = std::fs::metadata(card.paths().target).unwrap();
        assert_eq!(meta.modified().unwrap(), modified);
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&meta), inode);
    }

    #[test]
    fn unknown_board_leaves_the_file_untouched_and_says_why() {
        let card = Card::new();
        card.settings("board = \"hifiberry-dacplus\"\n");
        apply(&card.paths()).unwrap();
        let before = card.target().unwrap();
        card.settings("board = \"hifiberry-dacplsu\"\n");
        let Outcome::LeftAlone { why } = apply(&card.paths()).unwrap() else {
            panic!("an unknown board must leave the file alone");
        };
        assert!(why.contains("hifiberry-dacplsu"), "{why}");
        assert!(why.contains("hifiberry-dacplus"), "lists the known: {why}");
        assert_eq!(card.target().unwrap(), before);
        // A broken file is the same: nobody knows which board was meant.
        card.settings("board = \"usb-dac\n");
        assert!(matches!(
            apply(&card.paths()).unwrap(),
            Outcome::LeftAlone { .. }
        ));
        assert_eq!(card.target().unwrap(), before);
    }

    #[test]
    fn no_board_or_no_settings_file_means_no_overlay() {
        let card = Card::new();
        card.settings("name = \"Kitchen\"\n");
        assert_eq!(
            apply(&card.paths()).unwrap(),
            Outcome::Written {
                board: None,
                reboot: false
            }
        );
        assert!(effective(&card.target().unwrap()).is_empty());
        std::fs::remove_file(card.paths().source).unwrap();
        assert_eq!(
            apply(&card.paths()).unwrap(),
            Outcome::Unchanged { board: None }
        );
    }

    #[test]
    fn a_comment_only_change_is_written_without_a_reboot() {
        let card = Card::new();
        card.settings("board = \"i2s-dac\"\n");
        apply(&card.paths()).unwrap();
        let text = card.target().unwrap();
        std::fs::write(card.paths().target, format!("# an old header\n{}", text)).unwrap();
        assert_eq!(
            apply(&card.paths()).unwrap(),
            Outcome::Written {
                board: Some("i2s-dac".into()),
                reboot: false
            }
        );
        assert_eq!(card.target().unwrap(), text);
    }

    #[test]
    fn the_image_ships_the_file_a_usb_dac_gets() {
        // image/boot/pispeaker.toml names usb-dac: the shipped file must already match, or the
        // first boot would rewrite it.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let shipped = std::fs::read_to_string(root.join("image/boot/pispeaker-board.txt")).unwrap();
        assert_eq!(shipped, render(&board::find("usb-dac").unwrap()));
        let settings = std::fs::read_to_string(root.join("image/boot/pispeaker.toml")).unwrap();
        assert!(settings.contains("\nboard = \"usb-dac\"\n"));
        // and config.txt includes it, through the file Debian's regeneration appends.
        let custom =
            std::fs::read_to_string(root.join("image/rootfs/etc/default/raspi-firmware-custom"))
                .unwrap();
        let target = Path::new(DEFAULT_TARGET);
        assert!(custom
            .lines()
            .any(|l| l == format!("include {}", target.file_name().unwrap().to_str().unwrap())));
        assert_eq!(target.parent(), Some(Path::new("/boot/firmware")));
    }

    #[test]
    fn reboots_at_most_once_for_the_same_content() {
        let dir = tempfile::tempdir().unwrap();
        let stamp = dir.path().join("stamp");
        assert!(reboot_allowed(&stamp, b"dtoverlay=a\n").unwrap());
        // The write did not stick: the next boot wants the same change again.
        assert!(!reboot_allowed(&stamp, b"dtoverlay=a\n").unwrap());
        assert!(reboot_allowed(&stamp, b"dtoverlay=b\n").unwrap());
        clear_stamp(&stamp).unwrap();
        clear_stamp(&stamp).unwrap();
        assert!(reboot_allowed(&stamp, b"dtoverlay=b\n").unwrap());
    }
}

//! `image/rauc/pispeaker-slot`, RAUC's custom bootloader backend, on a temporary directory that
//! stands for the boot partition: switching both ways, the boot-try state, refusing an
//! incomplete slot, and a power cut at every step of every write it makes.
//!
//! A power cut is modelled as the set of files the card can hold after it (the script stops dead
//! at the step, `PISPEAKER_SLOT_CUT`, and the test then builds each state the card may be in):
//! - `written`: FILE.new was written but not fsynced, so it may hold any prefix of its content
//!   (modelled: empty, half, whole); FILE is untouched.
//! - `synced`: FILE.new is complete; FILE is untouched.
//! - `renamed`: the rename is not yet on the card (the directory was not fsynced), so FILE may be
//!   the old or the new content (both modelled).
//!
//! In every state the firmware must find a config.txt that names a slot whose files are
//! complete and that still has every other line.
//!
//! The slot state is kept in two copies, `pispeaker-slots.txt` and `pispeaker-slots.alt.txt`,
//! written in turn (the whole one with the highest generation counts): on the image's FAT,
//! `fsck.vfat -a` emptied the file written last after a reset (image/rauc/README.md, "vfat").
//! So besides the card states above, each cut is also checked with the copy written last
//! emptied, as that fsck left it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("image/rauc/pispeaker-slot")
}

/// Debian's raspi-firmware config.txt, shortened, with our include and slot A active.
const CONFIG: &str = "# Do not modify this file!\n[pi4]\narm_boost=1\n[all]\nkernel=vmlinuz-6.1.0-28-armmp\ninitramfs initrd.img-6.1.0-28-armmp followkernel\ndtparam=audio=on\ninclude pispeaker-board.txt\nos_prefix=slotA/\n";

fn make_slot(boot: &Path, slot: &str) {
    let dir = boot.join(format!("slot{slot}"));
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("vmlinuz-6.1.0-28-armmp"), b"kernel").unwrap();
    fs::write(dir.join("initrd.img-6.1.0-28-armmp"), b"initrd").unwrap();
    fs::write(dir.join("bcm2710-rpi-3-b.dtb"), b"dtb").unwrap();
    fs::write(
        dir.join("cmdline.txt"),
        format!("root=LABEL=ROOT{slot} rauc.slot={slot}\n"),
    )
    .unwrap();
}

/// The two copies of the slot state.
const COPIES: [&str; 2] = ["pispeaker-slots.txt", "pispeaker-slots.alt.txt"];

/// The slot state as image/build.sh writes it on a new card.
const IMAGE_STATE: &str = "# A/B boot state (image/build.sh)\ngeneration=1\nA=good\nB=bad\nend\n";

fn remove_state(boot: &Path) {
    for copy in COPIES {
        let _ = fs::remove_file(boot.join(copy));
    }
}

fn boot_partition() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("config.txt"), CONFIG).unwrap();
    make_slot(dir.path(), "A");
    make_slot(dir.path(), "B");
    dir
}

fn run(boot: &Path, args: &[&str], cut: Option<&str>) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg(script())
        .args(args)
        .env("PISPEAKER_BOOT_DIR", boot)
        .env("PISPEAKER_BOOT_TRIES", "3")
        // A real power cut (sysrq) on the host would reset the machine running the tests.
        .env_remove("PISPEAKER_CUT_ACTION");
    if let Some(cut) = cut {
        cmd.env("PISPEAKER_SLOT_CUT", cut);
    }
    cmd.output().expect("run sh")
}

fn ok(boot: &Path, args: &[&str]) -> String {
    let out = run(boot, args, None);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Every file of the directory (not the slot directories, which the switch never writes).
fn snapshot(boot: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(boot)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn restore(boot: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (name, _) in snapshot(boot) {
        fs::remove_file(boot.join(name)).unwrap();
    }
    for (name, data) in files {
        fs::write(boot.join(name), data).unwrap();
    }
}

/// What the firmware would do with this card: the slot config.txt names, which must be
/// complete, with every non-os_prefix line of the original config.txt kept.
fn firmware_boots(boot: &Path) -> String {
    let config = fs::read_to_string(boot.join("config.txt")).expect("config.txt must exist");
    let prefix = config
        .lines()
        .filter_map(|l| l.strip_prefix("os_prefix="))
        .next_back()
        .expect("config.txt names a slot");
    for line in CONFIG.lines().filter(|l| !l.starts_with("os_prefix=")) {
        assert!(
            config.lines().any(|l| l == line),
            "config.txt lost {line:?}:\n{config}"
        );
    }
    let slot = prefix
        .strip_prefix("slot")
        .and_then(|s| s.strip_suffix('/'))
        .unwrap_or_else(|| panic!("os_prefix={prefix} is not a slot"));
    let dir = boot.join(prefix);
    for file in [
        "vmlinuz-6.1.0-28-armmp",
        "initrd.img-6.1.0-28-armmp",
        "bcm2710-rpi-3-b.dtb",
        "cmdline.txt",
    ] {
        assert!(
            dir.join(file)
                .metadata()
                .map(|m| m.len() > 0)
                .unwrap_or(false),
            "config.txt names slot {slot}, whose {file} is missing"
        );
    }
    slot.to_string()
}

#[test]
fn switches_both_ways_and_keeps_every_other_line() {
    let boot = boot_partition();
    let boot = boot.path();
    assert_eq!(ok(boot, &["get-primary"]), "A");
    // A slot never recorded is good (the image ships A good).
    assert_eq!(ok(boot, &["get-state", "A"]), "good");

    // What RAUC 1.8 does on an install into B: mark it bad, write it, make it primary.
    ok(boot, &["set-state", "B", "bad"]);
    assert_eq!(ok(boot, &["get-state", "B"]), "bad");
    ok(boot, &["set-primary", "B"]);
    assert_eq!(ok(boot, &["get-primary"]), "B");
    assert_eq!(firmware_boots(boot), "B");
    let state = ok(boot, &["show"]);
    assert!(state.starts_with("A=good B=try:3 "), "{state}");
    // A slot with tries left counts as good until the initramfs spends them.
    assert_eq!(ok(boot, &["get-state", "B"]), "good");
    // mark-good after READY.
    ok(boot, &["set-state", "B", "good"]);
    let state = ok(boot, &["show"]);
    assert!(state.starts_with("A=good B=good "), "{state}");

    ok(boot, &["set-primary", "A"]);
    assert_eq!(ok(boot, &["get-primary"]), "A");
    assert_eq!(firmware_boots(boot), "A");
    let config = fs::read_to_string(boot.join("config.txt")).unwrap();
    assert_eq!(config, CONFIG, "switching back gives the original file");
    assert_eq!(config.matches("os_prefix=").count(), 1);
    // No temporary file is left behind.
    assert!(!boot.join("config.txt.new").exists());
    for copy in COPIES {
        assert!(!boot.join(format!("{copy}.new")).exists());
    }
}

/// pispeaker-mark-good.service marks the booted slot good at every boot: a state that already
/// says so is not written again (no FAT write a reset could catch, no new generation).
#[test]
fn marking_a_good_slot_good_again_writes_nothing() {
    let boot = boot_partition();
    let boot = boot.path();
    fs::write(boot.join(COPIES[0]), IMAGE_STATE).unwrap();
    ok(boot, &["set-state", "A", "good"]);
    assert_eq!(
        fs::read_to_string(boot.join(COPIES[0])).unwrap(),
        IMAGE_STATE
    );
    assert!(
        !boot.join(COPIES[1]).exists(),
        "a copy was written for an unchanged state"
    );
    // A change is still written, into the other copy.
    ok(boot, &["set-state", "B", "good"]);
    let state = ok(boot, &["show"]);
    assert!(state.starts_with("A=good B=good generation=2 "), "{state}");
    // Without any whole copy, marking good writes one (the state in force was a fallback).
    remove_state(boot);
    ok(boot, &["set-state", "A", "good"]);
    let state = ok(boot, &["show"]);
    assert!(state.starts_with("A=good B=good generation=1 "), "{state}");
}

#[test]
fn a_config_without_os_prefix_gets_one_under_all() {
    let boot = boot_partition();
    let boot = boot.path();
    let without = CONFIG.replace("os_prefix=slotA/\n", "[pi4]\narm_freq=1000\n");
    fs::write(boot.join("config.txt"), &without).unwrap();
    let out = run(boot, &["get-primary"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no os_prefix= line"));
    ok(boot, &["set-primary", "B"]);
    let config = fs::read_to_string(boot.join("config.txt")).unwrap();
    assert!(
        config.ends_with("arm_freq=1000\n[all]\nos_prefix=slotB/\n"),
        "{config}"
    );
    assert_eq!(ok(boot, &["get-primary"]), "B");
}

#[test]
fn refuses_to_switch_to_an_incomplete_slot_or_a_bad_argument() {
    let boot = boot_partition();
    let boot = boot.path();
    let before = snapshot(boot);
    for (missing, why) in [
        ("vmlinuz-6.1.0-28-armmp", "the kernel config.txt names"),
        (
            "initrd.img-6.1.0-28-armmp",
            "the initramfs config.txt names",
        ),
        ("bcm2710-rpi-3-b.dtb", "no device tree"),
        ("cmdline.txt", "cmdline.txt is missing"),
    ] {
        make_slot(boot, "B");
        fs::remove_file(boot.join("slotB").join(missing)).unwrap();
        let out = run(boot, &["set-primary", "B"], None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "switched without {missing}");
        assert!(stderr.contains(why), "{missing}: {stderr}");
        assert_eq!(snapshot(boot), before, "nothing written without {missing}");
    }
    for args in [
        &["set-primary", "C"][..],
        &["set-state", "A", "maybe"],
        &["get-state"],
        &["frobnicate"],
    ] {
        let out = run(boot, args, None);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn get_current_reads_rauc_slot_from_the_command_line() {
    let boot = boot_partition();
    let cmdline = boot.path().join("cmdline");
    fs::write(
        &cmdline,
        "console=ttyAMA0 root=LABEL=ROOTB rauc.slot=B rw\n",
    )
    .unwrap();
    let out = Command::new("sh")
        .arg(script())
        .arg("get-current")
        .env("PISPEAKER_CMDLINE", &cmdline)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "B");
    fs::write(&cmdline, "console=ttyAMA0 root=/dev/mmcblk0p2\n").unwrap();
    let out = Command::new("sh")
        .arg(script())
        .arg("get-current")
        .env("PISPEAKER_CMDLINE", &cmdline)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Every state a power cut at `file:step` can leave, given the files before and the files the
/// script left when it stopped there.
fn states_after_cut(
    before: &BTreeMap<String, Vec<u8>>,
    left: &BTreeMap<String, Vec<u8>>,
    file: &str,
    step: &str,
) -> Vec<BTreeMap<String, Vec<u8>>> {
    let tmp = format!("{file}.new");
    match step {
        "written" => {
            let whole = left.get(&tmp).expect("the new file was written").clone();
            [0, whole.len() / 2, whole.len()]
                .into_iter()
                .map(|n| {
                    let mut s = left.clone();
                    s.insert(tmp.clone(), whole[..n].to_vec());
                    s
                })
                .collect()
        }
        "synced" => vec![left.clone()],
        "renamed" => {
            // Either the rename reached the card or it did not.
            let mut not_yet = left.clone();
            match before.get(file) {
                Some(old) => not_yet.insert(file.to_string(), old.clone()),
                None => not_yet.remove(file),
            };
            not_yet.insert(tmp, left[file].clone());
            vec![left.clone(), not_yet]
        }
        _ => unreachable!(),
    }
}

#[test]
fn a_power_cut_at_any_step_leaves_a_bootable_complete_slot() {
    let boot = boot_partition();
    let boot = boot.path();
    let mut checked = 0;
    // Both directions, from a card with and without a state (with one: the running slot
    // good, the target slot marked bad, as RAUC does before it writes it).
    for (from, to, with_state) in [("A", "B", false), ("A", "B", true), ("B", "A", true)] {
        for write in ["state", "config.txt"] {
            for step in ["written", "synced", "renamed"] {
                // The card before the switch.
                fs::write(
                    boot.join("config.txt"),
                    CONFIG.replace("slotA/", &format!("slot{from}/")),
                )
                .unwrap();
                remove_state(boot);
                if with_state {
                    fs::write(boot.join(COPIES[0]), IMAGE_STATE).unwrap();
                    // The running slot is good (B after an earlier update, marked good).
                    ok(boot, &["set-state", from, "good"]);
                    ok(boot, &["set-state", to, "bad"]);
                }
                // The state goes into the copy that does not hold the state in force.
                let file = if write == "state" {
                    next_copy(boot)
                } else {
                    write.to_string()
                };
                let before = snapshot(boot);
                let out = run(boot, &["set-primary", to], Some(&format!("{file}:{step}")));
                assert_eq!(
                    out.status.code(),
                    Some(75),
                    "{file}:{step}: the cut happened"
                );
                let left = snapshot(boot);
                for state in states_after_cut(&before, &left, &file, step) {
                    for fsck in [false, true] {
                        let what = format!(
                            "{from}->{to} {file}:{step}{}",
                            if fsck {
                                ", the copy written last emptied"
                            } else {
                                ""
                            }
                        );
                        restore(boot, &state);
                        if fsck && fsck_empties_newest(boot).is_none() {
                            continue; // no whole copy to lose
                        }
                        let slot = firmware_boots(boot);
                        // Before config.txt's rename reaches the card the old slot boots, after
                        // it the new one; never anything else.
                        let switched = file == "config.txt"
                            && step == "renamed"
                            && state["config.txt"] != before["config.txt"];
                        assert_eq!(slot, if switched { to } else { from }, "{what}");
                        // A new slot never boots as good: otherwise a slot that never becomes
                        // ready would be booted for ever. Without fsck it has its tries armed;
                        // with the armed copy emptied it is bad (the copy before) or, with no
                        // copy left, the counter puts it on trial.
                        if switched {
                            let armed = slot_line(boot, to);
                            if fsck && newest_copy(boot).is_some() {
                                assert_eq!(armed, "bad", "{what}: slot {to} boots as {armed}");
                            } else if fsck {
                                // No copy left (a card that had none before the switch): the
                                // counter puts the booted slot on trial (settle checks it).
                            } else {
                                assert_eq!(armed, "try:3", "{what}: slot {to} boots without tries");
                            }
                        }
                        // Booting on from this card, the new slot never becoming ready: the
                        // speaker ends on the old slot.
                        let (settled, boots) = settle(boot, to, &what);
                        assert_eq!(settled, from, "{what}: settled after {boots} boots");
                        // The script runs again on this card (RAUC retries the install): it
                        // completes, whatever the leftover temporary file holds.
                        restore(boot, &state);
                        if fsck {
                            fsck_empties_newest(boot);
                        }
                        ok(boot, &["set-primary", to]);
                        assert_eq!(firmware_boots(boot), to, "{what}");
                        assert_eq!(slot_line(boot, to), "try:3", "{what}");
                        // (With the copy written last emptied the rerun writes the other copy:
                        // a leftover .new of this one waits, never read, for its next write.)
                        if !fsck || file == "config.txt" {
                            assert!(!boot.join(format!("{file}.new")).exists(), "{what}");
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    println!("power cut: {checked} card states checked, each boots a complete slot");
}

/// The image mounts the boot partition read-only: a switch remounts it read-write for the write
/// and leaves it read-only again. A tmpfs mounted read-only (in a private mount namespace, as
/// root) stands for the FAT partition.
#[test]
fn a_read_only_boot_partition_is_remounted_for_the_write_and_back() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root to mount");
        return;
    }
    let boot = boot_partition();
    let mnt = boot.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let script = format!(
        "set -e
        mount -t tmpfs none {mnt}
        cp -r {src}/config.txt {src}/slotA {src}/slotB {mnt}/
        mount -o remount,ro {mnt}
        if touch {mnt}/probe 2>/dev/null; then echo 'not read-only'; exit 1; fi
        PISPEAKER_BOOT_DIR={mnt} sh {slot} set-primary B
        PISPEAKER_BOOT_DIR={mnt} sh {slot} set-state B good
        PISPEAKER_BOOT_DIR={mnt} sh {slot} get-primary
        PISPEAKER_BOOT_DIR={mnt} sh {slot} show
        if touch {mnt}/probe 2>/dev/null; then echo 'left read-write'; exit 1; fi
        awk -v m={mnt} '$2 == m {{ print $4 }}' /proc/mounts",
        mnt = mnt.display(),
        src = boot.path().display(),
        slot = script().display()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("B\n"), "{stdout}");
    assert!(stdout.contains("B=good"), "{stdout}");
    assert!(
        stdout.trim_end().ends_with("ro") || stdout.contains("\nro,"),
        "{stdout}"
    );
}

/// `boot-count` as the initramfs runs it at a boot of `slot` (rauc.slot= on the command line):
/// its exit status (0 boot on, 10 reboot) and what it printed.
fn boot_count(boot: &Path, slot: &str, cut: Option<&str>) -> (i32, String) {
    // Outside the card's directory, whose files the tests compare.
    let cmdline = tempfile::NamedTempFile::new().unwrap();
    fs::write(
        cmdline.path(),
        format!("console=ttyAMA0 root=/dev/sda rauc.slot={slot} ro\n"),
    )
    .unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg(script())
        .arg("boot-count")
        .env("PISPEAKER_BOOT_DIR", boot)
        .env("PISPEAKER_CMDLINE", cmdline.path())
        .env_remove("PISPEAKER_CUT_ACTION");
    if let Some(cut) = cut {
        cmd.env("PISPEAKER_SLOT_CUT", cut);
    }
    let out = cmd.output().expect("run sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A field of `pispeaker-slot show` (A, B, generation, copy, other).
fn show_field(boot: &Path, key: &str) -> String {
    let out = run(boot, &["show"], None);
    assert!(out.status.success(), "show: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let prefix = format!("{key}=");
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("show has no {key}=: {text}"))
        .to_string()
}

/// A slot's state word (good, bad, try:N) as the script reads it from the two copies.
fn slot_line(boot: &Path, slot: &str) -> String {
    show_field(boot, slot)
}

/// The copy holding the state in force (the one written last of those whose write reached
/// the card), if any copy is whole.
fn newest_copy(boot: &Path) -> Option<String> {
    let copy = show_field(boot, "copy");
    (copy != "none").then_some(copy)
}

/// The copy the next write of the state replaces: the one not holding the state in force.
fn next_copy(boot: &Path) -> String {
    match newest_copy(boot).as_deref() {
        Some("pispeaker-slots.txt") => COPIES[1].to_string(),
        _ => COPIES[0].to_string(),
    }
}

/// What fsck.vfat did on the image after a reset: the file written last is left empty.
fn fsck_empties_newest(boot: &Path) -> Option<String> {
    let copy = newest_copy(boot)?;
    fs::write(boot.join(&copy), b"").unwrap();
    Some(copy)
}

/// Boots the card on until it settles, the counter running at each boot of whatever the
/// firmware picks: slot `never_ready` never reaches READY, the other one does and is marked
/// good (pispeaker-mark-good.service). Returns the slot it settles on and the boots it took.
/// `never_ready` may boot only on trial (never as good), and the boots are bounded.
fn settle(boot: &Path, never_ready: &str, what: &str) -> (String, u32) {
    let mut boots = 0;
    loop {
        boots += 1;
        assert!(boots <= 8, "{what}: no end of boots");
        let slot = firmware_boots(boot);
        let (code, text) = boot_count(boot, &slot, None);
        if code == 10 {
            continue;
        }
        assert_eq!(code, 0, "{what}: {text}");
        if slot != never_ready {
            ok(boot, &["set-state", &slot, "good"]);
            return (slot, boots);
        }
        let state = slot_line(boot, &slot);
        assert!(
            state.starts_with("try:"),
            "{what}: slot {slot}, which never becomes ready, boots as {state}: {text}"
        );
    }
}

/// What an update leaves: slot B armed with 3 tries and booted by config.txt, A good (three
/// generations: the image's, B marked bad, B armed).
fn card_after_update(boot: &Path) {
    fs::write(boot.join("config.txt"), CONFIG).unwrap();
    remove_state(boot);
    // As RAUC 1.8 installs into B on a new card: B marked bad, written, made primary.
    fs::write(boot.join(COPIES[0]), IMAGE_STATE).unwrap();
    ok(boot, &["set-state", "B", "bad"]);
    ok(boot, &["set-primary", "B"]);
    assert_eq!(slot_line(boot, "B"), "try:3");
    assert_eq!(firmware_boots(boot), "B");
}

/// A slot that never reaches READY (nothing marks it good) spends its tries, one per boot, and
/// the boot after the last one marks it bad and puts config.txt back on the good slot; the
/// good slot then boots without anything being written.
#[test]
fn boot_count_spends_the_tries_then_returns_to_the_good_slot() {
    let boot = boot_partition();
    let boot = boot.path();
    card_after_update(boot);
    for left in [2, 1, 0] {
        let (code, text) = boot_count(boot, "B", None);
        assert_eq!(code, 0, "{text}");
        assert_eq!(slot_line(boot, "B"), format!("try:{left}"), "{text}");
        assert_eq!(firmware_boots(boot), "B", "still on trial: {text}");
        assert_eq!(
            ok(boot, &["get-state", "B"]),
            if left > 0 { "good" } else { "bad" }
        );
    }
    let (code, text) = boot_count(boot, "B", None);
    assert_eq!(code, 10, "out of tries: the initramfs reboots: {text}");
    assert!(text.contains("config.txt boots slot A again"), "{text}");
    assert_eq!(slot_line(boot, "B"), "bad");
    assert_eq!(slot_line(boot, "A"), "good");
    assert_eq!(firmware_boots(boot), "A");
    assert!(!boot.join("config.txt.new").exists());

    let before = snapshot(boot);
    let (code, text) = boot_count(boot, "A", None);
    assert_eq!((code, text.trim()), (0, "slot A is good"));
    assert_eq!(
        snapshot(boot),
        before,
        "a boot of a good slot writes nothing"
    );
}

/// Marked good after READY (`rauc status mark-good` → set-state good), the slot stays.
#[test]
fn boot_count_leaves_a_slot_marked_good_alone() {
    let boot = boot_partition();
    let boot = boot.path();
    card_after_update(boot);
    assert_eq!(boot_count(boot, "B", None).0, 0);
    ok(boot, &["set-state", "B", "good"]);
    let before = snapshot(boot);
    for _ in 0..4 {
        assert_eq!(boot_count(boot, "B", None).0, 0);
    }
    assert_eq!(snapshot(boot), before);
    assert_eq!(firmware_boots(boot), "B");
}

/// Out of tries, but the other slot is no better (bad, or its boot files are incomplete): the
/// counter does not switch to it, and the card keeps booting what it has.
#[test]
fn boot_count_never_switches_to_a_slot_that_cannot_boot() {
    let boot = boot_partition();
    let boot = boot.path();
    for spoil in ["A is bad", "slotA has no kernel"] {
        card_after_update(boot);
        make_slot(boot, "A");
        for _ in 0..3 {
            assert_eq!(boot_count(boot, "B", None).0, 0);
        }
        if spoil == "A is bad" {
            ok(boot, &["set-state", "A", "bad"]);
        } else {
            fs::remove_file(boot.join("slotA/vmlinuz-6.1.0-28-armmp")).unwrap();
        }
        let before = snapshot(boot);
        let (code, text) = boot_count(boot, "B", None);
        assert_eq!(code, 0, "{spoil}: {text}");
        assert!(text.contains("booting slot B anyway"), "{spoil}: {text}");
        assert_eq!(snapshot(boot), before, "{spoil}");
        assert_eq!(firmware_boots(boot), "B", "{spoil}");
    }
}

/// A power cut at every step of every write the counter makes (the decrement, marking the slot
/// bad, switching config.txt): in each state the card can be left in, the firmware boots a
/// complete slot, a try is never given back, and booting on from there (the counter running at
/// each boot of whatever the firmware picks) ends on the good slot A with B bad, after at most
/// two more boots. With the copy written last also emptied (fsck.vfat after the reset), the
/// state before it counts: at most one try comes back, and it still ends on A.
#[test]
fn boot_count_survives_a_power_cut_at_every_step() {
    let boot = boot_partition();
    let boot = boot.path();
    let mut checked = 0;
    // (tries left before the boot, the write that is cut)
    let cases = [(3, "state"), (0, "state"), (0, "config.txt")];
    for (tries, write) in cases {
        for step in ["written", "synced", "renamed"] {
            card_after_update(boot);
            for _ in tries..3 {
                assert_eq!(boot_count(boot, "B", None).0, 0);
            }
            assert_eq!(slot_line(boot, "B"), format!("try:{tries}"));
            let file = if write == "state" {
                next_copy(boot)
            } else {
                write.to_string()
            };
            let before = snapshot(boot);
            let (code, text) = boot_count(boot, "B", Some(&format!("{file}:{step}")));
            assert_eq!(code, 75, "{tries} {file}:{step}: the cut happened: {text}");
            let left = snapshot(boot);
            for state in states_after_cut(&before, &left, &file, step) {
                for fsck in [false, true] {
                    let what = format!(
                        "try:{tries} {file}:{step}{}",
                        if fsck {
                            ", the copy written last emptied"
                        } else {
                            ""
                        }
                    );
                    restore(boot, &state);
                    if fsck {
                        fsck_empties_newest(boot).expect("a whole copy");
                    }
                    firmware_boots(boot);
                    let b = slot_line(boot, "B");
                    if let Some(n) = b.strip_prefix("try:") {
                        let n: u32 = n.parse().unwrap();
                        let most = if fsck { tries + 1 } else { tries };
                        assert!(n <= most, "{what}: a try was given back: {b}");
                    }
                    let (slot, boots) = settle(boot, "B", &what);
                    assert_eq!(slot, "A", "{what}");
                    assert_eq!(ok(boot, &["get-state", "B"]), "bad", "{what}");
                    assert_eq!(slot_line(boot, "A"), "good", "{what}");
                    if tries == 0 && !fsck {
                        assert!(boots <= 3, "{what}: {boots} boots to get back to A");
                    }
                    checked += 1;
                }
            }
        }
    }
    println!("boot counter power cuts: {checked} card states checked, each ends on slot A");
}

/// A power cut in the emulator is a real one (`PISPEAKER_CUT_ACTION=sysrq`): at the step the
/// script logs where it is and writes `b` to the sysrq trigger, an immediate reset. Here the
/// trigger and the log are files (writing the real trigger would reset this machine): the
/// script writes `b` there and goes no further, the card exactly as with the default cut.
#[test]
fn a_sysrq_power_cut_writes_b_to_the_trigger_and_stops() {
    let boot = boot_partition();
    let boot = boot.path();
    let default = run(boot, &["set-primary", "B"], Some("config.txt:synced"));
    assert_eq!(default.status.code(), Some(75));
    let default_card = snapshot(boot);

    let boot2 = boot_partition();
    let boot2 = boot2.path();
    let outside = tempfile::tempdir().unwrap();
    let trigger = outside.path().join("sysrq-trigger");
    let log = outside.path().join("kmsg");
    fs::write(&trigger, "").unwrap();
    fs::write(&log, "").unwrap();
    let out = Command::new("sh")
        .arg(script())
        .args(["set-primary", "B"])
        .env("PISPEAKER_BOOT_DIR", boot2)
        .env("PISPEAKER_BOOT_TRIES", "3")
        .env("PISPEAKER_SLOT_CUT", "config.txt:synced")
        .env("PISPEAKER_CUT_ACTION", "sysrq")
        .env("PISPEAKER_SYSRQ_TRIGGER", &trigger)
        .env("PISPEAKER_CUT_LOG", &log)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    assert_eq!(fs::read_to_string(&trigger).unwrap(), "b\n");
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        "<2>PISPEAKER-CUT: config.txt:synced\n"
    );
    assert_eq!(
        snapshot(boot2),
        default_card,
        "the card as the default cut leaves it"
    );

    // A trigger that cannot be written: the default cut, said so.
    let boot3 = boot_partition();
    let out = Command::new("sh")
        .arg(script())
        .args(["set-primary", "B"])
        .env("PISPEAKER_BOOT_DIR", boot3.path())
        .env("PISPEAKER_SLOT_CUT", "config.txt:synced")
        .env("PISPEAKER_CUT_ACTION", "sysrq")
        .env(
            "PISPEAKER_SYSRQ_TRIGGER",
            outside.path().join("no/such/dir"),
        )
        .env("PISPEAKER_CUT_LOG", &log)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75));
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not write"));
    assert_eq!(snapshot(boot3.path()), default_card);
}

/// Seconds since this machine booted, as the script reads them.
fn uptime() -> u64 {
    let text = fs::read_to_string("/proc/uptime").unwrap();
    let secs: f64 = text.split_whitespace().next().unwrap().parse().unwrap();
    secs as u64
}

/// What one run of `trial-watch` did: exit status, everything it printed, whether it ran the
/// reboot command, and how long it took.
struct Watch {
    code: Option<i32>,
    text: String,
    rebooted: bool,
    took: Duration,
}

/// Runs `trial-watch` for a boot of `slot` with `extra` on the kernel command line; `during`
/// is called once the script has printed its first line (with the card's path), as the
/// speaker's mark-good would act while the watch runs. The script must end within `limit`.
fn trial_watch(boot: &Path, cmdline: &str, limit: Duration, during: impl FnOnce(&str)) -> Watch {
    let outside = tempfile::tempdir().unwrap();
    let cmdline_file = outside.path().join("cmdline");
    fs::write(&cmdline_file, format!("{cmdline}\n")).unwrap();
    let marker = outside.path().join("rebooted");
    let start = Instant::now();
    let mut child = Command::new("sh")
        .arg(script())
        .arg("trial-watch")
        .env("PISPEAKER_BOOT_DIR", boot)
        .env("PISPEAKER_CMDLINE", &cmdline_file)
        .env("PISPEAKER_TRIAL_POLL", "1")
        .env(
            "PISPEAKER_REBOOT_CMD",
            format!("echo reboot >'{}'", marker.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // stdout and stderr line by line through one channel, so the first line can be awaited
    // with a deadline.
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    let readers = [
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let _ = tx.send(line.unwrap());
            }
        }),
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let _ = tx2.send(line.unwrap());
            }
        }),
    ];
    let mut text = String::new();
    match rx.recv_timeout(limit) {
        Ok(first) => {
            during(&first);
            text.push_str(&first);
            text.push('\n');
        }
        Err(_) => {
            let _ = child.kill();
            panic!("trial-watch printed nothing within {limit:?}");
        }
    }
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("trial-watch still running after {limit:?}; printed: {text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for r in readers {
        r.join().unwrap();
    }
    for line in rx.try_iter() {
        text.push_str(&line);
        text.push('\n');
    }
    Watch {
        code,
        text,
        rebooted: marker.exists(),
        took: start.elapsed(),
    }
}

/// Slot B on trial (2 tries left after this boot) and nothing marks it good: when the timeout
/// given on the command line has passed since boot, the watch says why and reboots.
#[test]
fn trial_watch_reboots_a_slot_still_on_trial_at_the_timeout() {
    let boot = boot_partition();
    let boot = boot.path();
    card_after_update(boot);
    assert_eq!(boot_count(boot, "B", None).0, 0);
    assert_eq!(slot_line(boot, "B"), "try:2");
    // 2-3 s from now, measured from this machine's boot as the script measures it (whole
    // seconds).
    let timeout = uptime() + 3;
    let cmdline = format!("console=ttyAMA0 rauc.slot=B pispeaker.trial_timeout={timeout} ro");
    let w = trial_watch(boot, &cmdline, Duration::from_secs(120), |_| {});
    println!("rebooted after {:?}: {}", w.took, w.text);
    assert_eq!(w.code, Some(0), "{}", w.text);
    assert!(w.rebooted, "the reboot command ran: {}", w.text);
    assert!(
        w.text.contains(&format!(
            "slot B did not become ready within {timeout} s of boot: rebooting; 2 tries left before the speaker returns to slot A"
        )),
        "{}",
        w.text
    );
    assert!(
        w.took >= Duration::from_millis(500),
        "it waited: {:?}",
        w.took
    );
    assert_eq!(slot_line(boot, "B"), "try:2", "the watch writes nothing");

    // Started late (the timeout already behind, as for a watch that starts after a slow
    // mount): the time counts from boot, so it reboots at once.
    let late = uptime().saturating_sub(1);
    let cmdline = format!("rauc.slot=B pispeaker.trial_timeout={late}");
    let w = trial_watch(boot, &cmdline, Duration::from_secs(60), |_| {});
    assert!(w.rebooted, "{}", w.text);
    assert!(
        w.text.contains(&format!("within {late} s of boot")),
        "{}",
        w.text
    );

    // No timeout on the command line: 600 s. (This machine booted long ago, so that is past.)
    if uptime() >= 600 {
        let w = trial_watch(boot, "rauc.slot=B", Duration::from_secs(60), |_| {});
        assert!(w.rebooted, "{}", w.text);
        assert!(w.text.contains("within 600 s of boot"), "{}", w.text);
    } else {
        println!("this machine booted under 600 s ago: the default timeout is not checked");
    }
}

/// Marked good (mark-good after READY) while the watch waits: it ends without a reboot.
#[test]
fn trial_watch_ends_without_a_reboot_when_the_slot_becomes_good() {
    let boot = boot_partition();
    let boot = boot.path();
    card_after_update(boot);
    assert_eq!(boot_count(boot, "B", None).0, 0);
    let timeout = uptime() + 300;
    let cmdline = format!("rauc.slot=B pispeaker.trial_timeout={timeout}");
    let w = trial_watch(boot, &cmdline, Duration::from_secs(200), |first| {
        assert!(
            first.contains("slot B is on trial (2 tries left"),
            "{first}"
        );
        ok(boot, &["set-state", "B", "good"]);
    });
    println!("ended after {:?}: {}", w.took, w.text);
    assert_eq!(w.code, Some(0), "{}", w.text);
    assert!(!w.rebooted, "{}", w.text);
    assert!(
        w.text.contains("slot B is good (marked after READY)"),
        "{}",
        w.text
    );
}

/// Nothing to watch: a good slot, a bad one (the counter found nothing better), a boot that is
/// not from an A/B slot. It exits at once (long before the timeout) and never reboots.
#[test]
fn trial_watch_exits_at_once_when_not_on_trial() {
    let boot = boot_partition();
    let boot = boot.path();
    card_after_update(boot);
    let far = uptime() + 3600;
    ok(boot, &["set-state", "B", "good"]);
    for (cmdline, says) in [
        (
            format!("rauc.slot=B pispeaker.trial_timeout={far}"),
            "slot B is good: not on trial",
        ),
        (
            format!("rauc.slot=A pispeaker.trial_timeout={far}"),
            "slot A is good: not on trial",
        ),
        (
            format!("root=/dev/mmcblk0p2 pispeaker.trial_timeout={far}"),
            "not booted from an A/B slot",
        ),
    ] {
        let w = trial_watch(boot, &cmdline, Duration::from_secs(60), |_| {});
        assert_eq!((w.code, w.rebooted), (Some(0), false), "{}", w.text);
        assert!(w.text.contains(says), "{cmdline}: {}", w.text);
    }
    ok(boot, &["set-state", "B", "bad"]);
    let w = trial_watch(
        boot,
        &format!("rauc.slot=B pispeaker.trial_timeout={far}"),
        Duration::from_secs(60),
        |_| {},
    );
    assert_eq!((w.code, w.rebooted), (Some(0), false), "{}", w.text);
    assert!(w.text.contains("slot B is bad, not on trial"), "{}", w.text);
}

/// The last try (`try:0`): a reboot returns to the other slot when that one is good and
/// complete; when it is not, boot-count would boot this slot again, so the watch does not
/// reboot (it would loop every timeout for ever) and says why.
#[test]
fn trial_watch_on_the_last_try_reboots_only_when_there_is_a_slot_to_return_to() {
    let boot = boot_partition();
    let boot = boot.path();
    card_after_update(boot);
    for _ in 0..3 {
        assert_eq!(boot_count(boot, "B", None).0, 0);
    }
    assert_eq!(slot_line(boot, "B"), "try:0");
    let past = uptime().saturating_sub(1);
    let cmdline = format!("rauc.slot=B pispeaker.trial_timeout={past}");
    let w = trial_watch(boot, &cmdline, Duration::from_secs(60), |_| {});
    assert!(w.rebooted, "{}", w.text);
    assert!(
        w.text
            .contains("rebooting; 0 tries left before the speaker returns to slot A"),
        "{}",
        w.text
    );

    ok(boot, &["set-state", "A", "bad"]);
    let w = trial_watch(boot, &cmdline, Duration::from_secs(60), |_| {});
    assert_eq!((w.code, w.rebooted), (Some(0), false), "{}", w.text);
    assert!(
        w.text.contains(
            "no tries left, but there is no slot to return to (slot A is bad): not rebooting"
        ),
        "{}",
        w.text
    );

    ok(boot, &["set-state", "A", "good"]);
    fs::remove_file(boot.join("slotA/bcm2710-rpi-3-b.dtb")).unwrap();
    let w = trial_watch(boot, &cmdline, Duration::from_secs(60), |_| {});
    assert!(!w.rebooted, "{}", w.text);
    assert!(w.text.contains("slotA has no device tree"), "{}", w.text);
}

/// The state files a command changed (by comparing the card before and after).
fn state_files_changed(
    before: &BTreeMap<String, Vec<u8>>,
    after: &BTreeMap<String, Vec<u8>>,
) -> Vec<String> {
    COPIES
        .iter()
        .filter(|c| before.get(**c) != after.get(**c))
        .map(|c| c.to_string())
        .collect()
}

fn generation(text: &str) -> u32 {
    text.lines()
        .find_map(|l| l.strip_prefix("generation="))
        .unwrap_or_else(|| panic!("no generation= in {text}"))
        .parse()
        .unwrap()
}

/// The finding in the emulator: after a reset in the slot switch, fsck.vfat left the state file
/// written by set-primary empty. The copy that write went to is damaged three ways (emptied,
/// cut in the middle of a line, its `end` line lost); each time the state before the write
/// counts, slot B bad (RAUC marks it so before writing it), so a boot of B, which config.txt
/// names, goes straight back to A: the update is lost, never a way back.
#[test]
fn a_lost_copy_after_set_primary_leaves_the_new_slot_bad_and_the_counter_goes_back() {
    let boot = boot_partition();
    let boot = boot.path();
    type Damage = fn(&[u8]) -> Vec<u8>;
    let damages: [(&str, Damage); 3] = [
        ("emptied", |_| Vec::new()),
        ("cut mid-line", |d| {
            let text = String::from_utf8_lossy(d);
            let at = text.find("B=try:3").expect("B armed") + 3;
            d[..at].to_vec()
        }),
        ("end line lost", |d| {
            String::from_utf8_lossy(d).replace("end\n", "").into_bytes()
        }),
    ];
    for (how, damage) in damages {
        fs::write(boot.join("config.txt"), CONFIG).unwrap();
        remove_state(boot);
        fs::write(boot.join(COPIES[0]), IMAGE_STATE).unwrap();
        ok(boot, &["set-state", "B", "bad"]);
        let before = snapshot(boot);
        ok(boot, &["set-primary", "B"]);
        let after = snapshot(boot);
        let written = state_files_changed(&before, &after);
        assert_eq!(written.len(), 1, "{how}: {written:?}");
        let damaged = damage(&after[&written[0]]);
        fs::write(boot.join(&written[0]), &damaged).unwrap();
        assert_eq!(firmware_boots(boot), "B", "{how}");
        assert_eq!(ok(boot, &["get-state", "B"]), "bad", "{how}");
        assert_eq!(ok(boot, &["get-state", "A"]), "good", "{how}");
        let (code, text) = boot_count(boot, "B", None);
        assert_eq!(code, 10, "{how}: {text}");
        assert!(
            text.contains("config.txt boots slot A again"),
            "{how}: {text}"
        );
        assert_eq!(firmware_boots(boot), "A", "{how}");
        let (code, text) = boot_count(boot, "A", None);
        assert_eq!((code, text.trim()), (0, "slot A is good"), "{how}");
    }
}

/// Every write goes into the copy that does not hold the state in force, with the next
/// generation, and leaves the other copy (the state before) as it was: the two copies take
/// turns and the newest state and the one before are never in the same file.
#[test]
fn writes_take_turns_between_the_two_copies_with_rising_generations() {
    let boot = boot_partition();
    let boot = boot.path();
    // A card after an earlier update (B good), so RAUC's first write, B bad, changes the state.
    fs::write(boot.join(COPIES[0]), IMAGE_STATE.replace("B=bad", "B=good")).unwrap();
    let mut expect_copy = 1;
    let steps: [&dyn Fn(); 6] = [
        &|| drop(ok(boot, &["set-state", "B", "bad"])),
        &|| drop(ok(boot, &["set-primary", "B"])),
        &|| assert_eq!(boot_count(boot, "B", None).0, 0),
        &|| assert_eq!(boot_count(boot, "B", None).0, 0),
        &|| drop(ok(boot, &["set-state", "B", "good"])),
        &|| drop(ok(boot, &["set-primary", "A"])),
    ];
    for (i, step) in steps.iter().enumerate() {
        // The image's copy is generation 1; write i makes generation i + 2.
        let last_generation = i as u32 + 1;
        let before = snapshot(boot);
        step();
        let after = snapshot(boot);
        let written = state_files_changed(&before, &after);
        assert_eq!(written, [COPIES[expect_copy]], "write {i}");
        let text = String::from_utf8_lossy(&after[COPIES[expect_copy]]).into_owned();
        assert_eq!(generation(&text), last_generation + 1, "write {i}: {text}");
        assert!(text.ends_with("\nend\n"), "write {i}: {text}");
        // The other copy still holds the state before, whole.
        let other = String::from_utf8_lossy(&after[COPIES[1 - expect_copy]]).into_owned();
        assert_eq!(generation(&other), last_generation, "write {i}: {other}");
        assert_eq!(show_field(boot, "copy"), COPIES[expect_copy], "write {i}");
        assert_eq!(
            show_field(boot, "other"),
            format!("{}:{last_generation}", COPIES[1 - expect_copy]),
            "write {i}"
        );
        expect_copy = 1 - expect_copy;
    }
    assert_eq!(
        ok(boot, &["show"]).split(' ').take(3).collect::<Vec<_>>(),
        ["A=try:3", "B=good", "generation=7"]
    );
}

/// The single file earlier images and versions of the script wrote (comments, A= and B=, no
/// generation= or end) is read as generation 0: an update from a speaker flashed before the
/// two copies starts from its state, and the first write goes to the other copy.
#[test]
fn reads_the_single_file_of_earlier_images_as_generation_0() {
    let boot = boot_partition();
    let boot = boot.path();
    // What image/build.sh wrote before.
    let legacy = "# A/B boot state for image/rauc/pispeaker-slot and the initramfs: good, bad or try:N\n# (N boots left for a new slot to reach READY). Do not edit by hand.\nA=good\nB=bad\n";
    fs::write(boot.join(COPIES[0]), legacy).unwrap();
    assert_eq!(ok(boot, &["get-state", "A"]), "good");
    assert_eq!(ok(boot, &["get-state", "B"]), "bad");
    assert_eq!(
        ok(boot, &["show"]),
        "A=good B=bad generation=0 copy=pispeaker-slots.txt other=pispeaker-slots.alt.txt:missing"
    );
    ok(boot, &["set-primary", "B"]);
    assert_eq!(fs::read_to_string(boot.join(COPIES[0])).unwrap(), legacy);
    assert_eq!(
        ok(boot, &["show"]),
        "A=good B=try:3 generation=1 copy=pispeaker-slots.alt.txt other=pispeaker-slots.txt:0"
    );

    // An earlier version's set-primary left B on trial in the single file (the update that
    // brings this version): the new slot's counter goes on from there.
    remove_state(boot);
    fs::write(boot.join(COPIES[0]), "# comment\nA=good\nB=try:3\n").unwrap();
    let (code, text) = boot_count(boot, "B", None);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("2 left after it"), "{text}");
    assert!(ok(boot, &["show"])
        .starts_with("A=good B=try:2 generation=1 copy=pispeaker-slots.alt.txt "));

    // Not whole, so not read: half of a file, a second A= line, an unknown word, a line after
    // `end`, a new-format copy without its end.
    for (bad, why) in [
        ("A=good\n", "no B= line"),
        ("A=good\nA=bad\nB=bad\n", "two A= lines"),
        ("A=fine\nB=bad\n", "an unknown state"),
        (
            "generation=4\nA=good\nB=bad\nend\nB=try:3\n",
            "a line after end",
        ),
        ("generation=4\nA=good\nB=bad\n", "no end"),
        ("A=good\nB=bad\nend\n", "an end without a generation"),
    ] {
        remove_state(boot);
        fs::write(
            boot.join(COPIES[1]),
            IMAGE_STATE
                .replace("generation=1", "generation=2")
                .replace("B=bad", "B=try:1"),
        )
        .unwrap();
        fs::write(boot.join(COPIES[0]), bad).unwrap();
        assert_eq!(
            show_field(boot, "copy"),
            COPIES[1],
            "{why}: the damaged copy was read"
        );
        assert_eq!(
            show_field(boot, "other"),
            format!("{}:damaged", COPIES[0]),
            "{why}"
        );
    }
}

/// No whole copy at all (both emptied): the counter does not take the booted slot as good, it
/// puts it on trial with all its tries and takes the other as good, so a new slot that never
/// becomes ready still goes back. (Other commands, on a running system, take both as good.)
/// Both are said on stderr.
#[test]
fn with_no_whole_copy_the_counter_puts_the_booted_slot_on_trial() {
    let boot = boot_partition();
    let boot = boot.path();
    card_after_update(boot);
    for copy in COPIES {
        fs::write(boot.join(copy), b"").unwrap();
    }
    let out = run(boot, &["get-state", "B"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "good");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds a whole slot state"),
        "{out:?}"
    );
    let (code, text) = boot_count(boot, "B", None);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("taking slot B, the one booted, as on trial (3 tries) and the other as good"),
        "{text}"
    );
    assert!(text.contains("2 left after it"), "{text}");
    assert!(ok(boot, &["show"]).starts_with("A=good B=try:2 generation=1 "));
    let (slot, boots) = settle(boot, "B", "no whole copy");
    assert_eq!(slot, "A", "after {boots} boots");
    assert_eq!(ok(boot, &["get-state", "B"]), "bad");
}

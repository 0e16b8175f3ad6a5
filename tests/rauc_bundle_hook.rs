//! `image/rauc/pispeaker-bundle-hook`, the update bundle's slot post-install hook, run the way
//! RAUC 1.8 runs it (`hook slot-post-install` with RAUC_SLOT_CLASS, RAUC_SLOT_BOOTNAME and
//! RAUC_SLOT_MOUNT_POINT; rauc v1.8 src/update_handler.c run_slot_hook_extra_env) on a directory
//! standing for the new root and one standing for the boot partition. The install through the
//! real RAUC service is tests/rauc_install.rs; this covers what that cannot stop halfway: a
//! power cut at every step of writing slotB/, for a first install and for a second one before
//! the reboot (config.txt naming slot B), and refusals that must leave nothing behind.
//!
//! A power cut is the script stopping dead at a step (`PISPEAKER_HOOK_CUT`). The hook writes
//! only new files and directories and renames them, each fsynced before the next step, so the
//! card after a cut at a step holds that step's state or, for a rename not yet on the card, the
//! previous step's, which the test checks too.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn hook() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("image/rauc/pispeaker-bundle-hook")
}

const CONFIG: &str = "[all]\nkernel=vmlinuz\ninitramfs initrd.img followkernel\ninclude pispeaker-board.txt\nos_prefix=slotA/\n";
/// Slot A's command line as image/build.sh writes it: the root's mount options (rootflags=, no
/// fstab line for "/") and panic=10 (a panicking kernel reboots, so the boot counter runs) must
/// reach every new slot.
const CMDLINE_A: &str = "console=tty0 console=ttyS1,115200 root=PARTUUID=7073706b-02 rw rootwait ro rootflags=noatime,errors=remount-ro panic=10 rauc.slot=A\n";
const STEPS: [&str; 5] = [
    "switched-back",
    "copied",
    "synced",
    "moved-old",
    "moved-new",
];

/// A root file system as image/build.sh makes it, its boot files naming `version`.
fn new_root(dir: &Path, version: &str) {
    let _ = fs::remove_dir_all(dir);
    for (path, what) in [
        ("boot/vmlinuz-6.1.0-99-armmp", "kernel"),
        ("boot/initrd.img-6.1.0-99-armmp", "initramfs"),
        ("usr/lib/pispeaker/boot/bcm2837-rpi-3-b.dtb", "Pi 3 tree"),
        (
            "usr/lib/pispeaker/boot/overlays/pispeaker-i2s-dac.dtbo",
            "overlay",
        ),
    ] {
        let path = dir.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, format!("{what} of {version}")).unwrap();
    }
}

/// slotB/ as the hook writes it for `version`.
fn slot_b(version: &str) -> BTreeMap<String, Vec<u8>> {
    [
        ("vmlinuz", format!("kernel of {version}")),
        ("initrd.img", format!("initramfs of {version}")),
        ("bcm2837-rpi-3-b.dtb", format!("Pi 3 tree of {version}")),
        (
            "overlays/pispeaker-i2s-dac.dtbo",
            format!("overlay of {version}"),
        ),
        (
            "cmdline.txt",
            "console=tty0 console=ttyS1,115200 root=PARTUUID=7073706b-03 rw rootwait ro rootflags=noatime,errors=remount-ro panic=10 rauc.slot=B\n"
                .to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_bytes()))
    .collect()
}

/// The card as the image leaves it: slot A's files, nothing for slot B.
fn card(dir: &Path) -> PathBuf {
    let boot = dir.join("boot");
    fs::create_dir_all(boot.join("slotA/overlays")).unwrap();
    fs::write(boot.join("config.txt"), CONFIG).unwrap();
    for (file, content) in [
        ("vmlinuz", "kernel of A"),
        ("initrd.img", "initramfs of A"),
        ("bcm2837-rpi-3-b.dtb", "Pi 3 tree of A"),
        ("overlays/pispeaker-i2s-dac.dtbo", "overlay of A"),
        ("cmdline.txt", CMDLINE_A),
    ] {
        fs::write(boot.join("slotA").join(file), content).unwrap();
    }
    fs::write(
        dir.join("cmdline"),
        "console=tty0 root=PARTUUID=7073706b-02 rauc.slot=A\n",
    )
    .unwrap();
    boot
}

fn run(dir: &Path, cut: Option<&str>) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg(hook())
        .arg("slot-post-install")
        .env("PISPEAKER_BOOT_DIR", dir.join("boot"))
        .env("PISPEAKER_CMDLINE", dir.join("cmdline"))
        .env("RAUC_SLOT_CLASS", "rootfs")
        .env("RAUC_SLOT_BOOTNAME", "B")
        .env("RAUC_SLOT_MOUNT_POINT", dir.join("root"))
        .env_remove("PISPEAKER_HOOK_CUT")
        // A real power cut (sysrq) on the host would reset the machine running the tests.
        .env_remove("PISPEAKER_CUT_ACTION");
    if let Some(cut) = cut {
        cmd.env("PISPEAKER_HOOK_CUT", cut);
    }
    cmd.output().unwrap()
}

/// Every file under `dir` by relative path (empty when `dir` does not exist).
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                files.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// The slot config.txt boots, and that its directory holds one whole version's files.
fn boots(boot: &Path, slot_a: &BTreeMap<String, Vec<u8>>, versions: &[&str]) -> String {
    let config = fs::read_to_string(boot.join("config.txt")).unwrap();
    let rest: String = config
        .lines()
        .filter(|l| !l.starts_with("os_prefix="))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        rest,
        CONFIG.replace("os_prefix=slotA/\n", ""),
        "config.txt lost a line"
    );
    let prefix = config
        .lines()
        .filter_map(|l| l.strip_prefix("os_prefix="))
        .next_back()
        .unwrap()
        .to_string();
    let files = tree(&boot.join(prefix.trim_end_matches('/')));
    match prefix.as_str() {
        "slotA/" => assert!(&files == slot_a, "slot A's files changed"),
        "slotB/" => assert!(
            versions.iter().any(|v| files == slot_b(v)),
            "config.txt boots slotB/, which holds no whole version: {:?}",
            files.keys().collect::<Vec<_>>()
        ),
        other => panic!("config.txt boots {other}"),
    }
    prefix
}

/// Undoes the hook's last rename in `boot` (a rename the directory fsync had not put on the card
/// yet): the state of the step before.
fn undo_rename(boot: &Path, step: &str) {
    let back = |from: &str, to: &str| {
        if boot.join(from).exists() {
            fs::rename(boot.join(from), boot.join(to)).unwrap();
        }
    };
    match step {
        // config.txt.new was renamed over config.txt (a second install): the old one again.
        "switched-back" => {
            fs::write(boot.join("config.txt"), CONFIG.replace("slotA/", "slotB/")).unwrap()
        }
        "moved-old" => back("slotB.old", "slotB"),
        "moved-new" => back("slotB", "slotB.new"),
        _ => unreachable!(),
    }
}

#[test]
fn writes_the_new_slot_and_its_cmdline() {
    let dir = tempfile::tempdir().unwrap();
    let boot = card(dir.path());
    new_root(&dir.path().join("root"), "2.0.0");
    let out = run(dir.path(), None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(tree(&boot.join("slotB")), slot_b("2.0.0"));
    assert_eq!(fs::read_to_string(boot.join("config.txt")).unwrap(), CONFIG);
    let mut entries: Vec<String> = fs::read_dir(&boot)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["config.txt", "slotA", "slotB"]);
}

#[test]
fn a_power_cut_at_any_step_leaves_a_bootable_slot_and_the_next_install_completes() {
    // First install (config.txt boots A, no slotB/), and a second one before the reboot
    // (config.txt boots slotB/ holding 1.0.0).
    for second in [false, true] {
        for step in STEPS {
            for undone in [false, true] {
                let renames = match step {
                    "switched-back" => second,
                    "moved-old" | "moved-new" => true,
                    _ => false,
                };
                if undone && !renames {
                    continue;
                }
                let dir = tempfile::tempdir().unwrap();
                let boot = card(dir.path());
                let slot_a = tree(&boot.join("slotA"));
                if second {
                    new_root(&dir.path().join("root"), "1.0.0");
                    assert!(run(dir.path(), None).status.success());
                    let config = CONFIG.replace("slotA/", "slotB/");
                    fs::write(boot.join("config.txt"), config).unwrap();
                }
                new_root(&dir.path().join("root"), "2.0.0");
                let out = run(dir.path(), Some(step));
                assert_eq!(out.status.code(), Some(75), "cut at {step}");
                if undone {
                    undo_rename(&boot, step);
                }
                let booted = boots(&boot, &slot_a, &["1.0.0"]);
                println!("second={second} cut at {step} (rename undone: {undone}): boots {booted}");
                // The next install (RAUC writes the root again and reruns the hook) completes.
                let out = run(dir.path(), None);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(tree(&boot.join("slotB")), slot_b("2.0.0"));
                assert_eq!(tree(&boot.join("slotB.new")), BTreeMap::new());
                assert_eq!(tree(&boot.join("slotB.old")), BTreeMap::new());
                assert_eq!(boots(&boot, &slot_a, &[]), "slotA/");
            }
        }
    }
}

/// In the emulator a cut is a real power cut (`PISPEAKER_CUT_ACTION=sysrq`): the hook logs the
/// step and writes `b` to the sysrq trigger. With files for the trigger and the log (the real
/// trigger would reset this machine), it writes `b` there and goes no further: the card is as
/// the default cut (exit 75) leaves it.
#[test]
fn a_sysrq_power_cut_writes_b_to_the_trigger_and_stops() {
    let plain = tempfile::tempdir().unwrap();
    let boot = card(plain.path());
    new_root(&plain.path().join("root"), "2.0.0");
    assert_eq!(run(plain.path(), Some("synced")).status.code(), Some(75));
    let default_card = tree(&boot);

    let dir = tempfile::tempdir().unwrap();
    let boot = card(dir.path());
    new_root(&dir.path().join("root"), "2.0.0");
    let trigger = dir.path().join("sysrq-trigger");
    let log = dir.path().join("kmsg");
    fs::write(&trigger, "").unwrap();
    fs::write(&log, "").unwrap();
    let out = Command::new("sh")
        .arg(hook())
        .arg("slot-post-install")
        .env("PISPEAKER_BOOT_DIR", dir.path().join("boot"))
        .env("PISPEAKER_CMDLINE", dir.path().join("cmdline"))
        .env("RAUC_SLOT_CLASS", "rootfs")
        .env("RAUC_SLOT_BOOTNAME", "B")
        .env("RAUC_SLOT_MOUNT_POINT", dir.path().join("root"))
        .env("PISPEAKER_HOOK_CUT", "synced")
        .env("PISPEAKER_CUT_ACTION", "sysrq")
        .env("PISPEAKER_SYSRQ_TRIGGER", &trigger)
        .env("PISPEAKER_CUT_LOG", &log)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    assert_eq!(fs::read_to_string(&trigger).unwrap(), "b\n");
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        "<2>PISPEAKER-CUT: synced\n"
    );
    assert_eq!(
        tree(&boot),
        default_card,
        "the card as the default cut leaves it"
    );
}

/// Spoils the new root or the card in one way.
type Spoil = fn(&Path);

#[test]
fn refusals_leave_the_card_as_it_was() {
    let cases: [(&str, Spoil, &str); 5] = [
        (
            "no kernel",
            |d| fs::remove_file(d.join("root/boot/vmlinuz-6.1.0-99-armmp")).unwrap(),
            "has 0 kernels in /boot",
        ),
        (
            "no initramfs",
            |d| fs::remove_file(d.join("root/boot/initrd.img-6.1.0-99-armmp")).unwrap(),
            "has no initramfs /boot/initrd.img-6.1.0-99-armmp",
        ),
        (
            "no device trees",
            |d| fs::remove_file(d.join("root/usr/lib/pispeaker/boot/bcm2837-rpi-3-b.dtb")).unwrap(),
            "no device tree",
        ),
        (
            "a running command line without root=",
            |d| {
                fs::write(
                    d.join("boot/slotA/cmdline.txt"),
                    "console=tty0 rauc.slot=A\n",
                )
                .unwrap()
            },
            "has no root= to change",
        ),
        (
            // A copy that fails halfway, as on a full boot partition: the partly written
            // slotB.new/ is removed.
            "an initramfs that cannot be copied",
            |d| {
                let initrd = d.join("root/boot/initrd.img-6.1.0-99-armmp");
                fs::remove_file(&initrd).unwrap();
                fs::create_dir_all(initrd.join("not-a-file")).unwrap();
            },
            "omitting directory",
        ),
    ];
    for (what, break_it, says) in cases {
        let dir = tempfile::tempdir().unwrap();
        let boot = card(dir.path());
        new_root(&dir.path().join("root"), "2.0.0");
        break_it(dir.path());
        let before = tree(&boot);
        let out = run(dir.path(), None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains(says), "{what}: {stderr}");
        assert!(tree(&boot) == before, "{what}: the card changed");
        assert!(!boot.join("slotB.new").exists(), "{what}");
    }
    // Installing into the running slot is never asked by RAUC; refused all the same.
    let dir = tempfile::tempdir().unwrap();
    let boot = card(dir.path());
    new_root(&dir.path().join("root"), "2.0.0");
    fs::write(dir.path().join("cmdline"), "root=x rauc.slot=B\n").unwrap();
    let before = tree(&boot);
    let out = run(dir.path(), None);
    assert_eq!(out.status.code(), Some(1));
    assert!(tree(&boot) == before);
}

/// The hook names each slot's root partition the way system.conf does (RAUC writes the root to
/// system.conf's device=; the firmware mounts cmdline.txt's root=): the two must not drift.
#[test]
fn the_root_partitions_agree_with_system_conf() {
    let conf =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("image/rauc/system.conf"))
            .unwrap();
    let hook = fs::read_to_string(hook()).unwrap();
    let mut slots = 0;
    for section in conf.split("[slot.rootfs.").skip(1) {
        let value = |key: &str| {
            section
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap()
                .to_string()
        };
        let device = value("device=");
        let partuuid = device.strip_prefix("/dev/disk/by-partuuid/").unwrap();
        let bootname = value("bootname=");
        let line = format!("{bootname}) partuuid={partuuid} ;;");
        assert!(hook.contains(&line), "the hook lacks '{line}'");
        slots += 1;
    }
    assert_eq!(slots, 2);
}

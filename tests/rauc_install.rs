//! A real install on the host: the RAUC 1.8 service (on a private D-Bus, in a mount namespace
//! whose /proc/cmdline says which slot "booted") with the image's system.conf pointed at files
//! standing for the two root partitions and a directory standing for the boot partition, and
//! `image/rauc/pispeaker-slot` as its bootloader backend. The boot partition starts as the
//! image's: slot A's files under slotA/, nothing for slot B. `pispeaker update` refuses a
//! tampered and a foreign bundle without writing anything, installs a good one into the other
//! slot, the bundle's hook (`image/rauc/pispeaker-bundle-hook`) puts the new root's kernel,
//! initramfs, device trees, overlays and a cmdline.txt into slotB/, and config.txt is switched to
//! it with its boot tries armed; after a "reboot" into it, `rauc status mark-good` makes it good.
//! A bundle whose root has no kernel fails in the hook and switches nothing.
//!
//! Needs root (mount namespace, loop devices), rauc, dbus-daemon and unshare; skipped with a
//! message otherwise. Where the kernel has no device-mapper (this CI's sandbox has none) the
//! bundle is RAUC's plain format instead of verity, and system.conf is told to accept it: that is
//! the one difference from the image, and the verity payload check is covered by
//! tests/rauc_bundle.rs (rauc extract) and, later, by the boot test in qemu.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn available() -> bool {
    let have = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = root
        && have("rauc", "--version")
        && have("dbus-daemon", "--version")
        && have("unshare", "--version")
        && have("mksquashfs", "-version");
    if !ok {
        eprintln!("SKIPPED: needs root, rauc, dbus-daemon, unshare and mksquashfs (apt-get install rauc squashfs-tools dbus)");
    }
    ok
}

fn check(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Kills what the test started, whatever happens.
struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Rig {
    dir: tempfile::TempDir,
    bus: String,
    service: Option<Killed>,
    _dbus: Killed,
}

impl Rig {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// (Re)starts `rauc service` as if the kernel had booted `slot`.
    fn boot(&mut self, slot: &str) {
        self.service = None; // the old one is killed first
        fs::write(
            self.path("cmdline"),
            format!("console=ttyAMA0 root=/dev/mmcblk0p2 rauc.slot={slot} rootwait\n"),
        )
        .unwrap();
        // Its own mount prefix (the unit's ExecStart has --mount=/run/rauc), not the default
        // /mnt/rauc shared by the tests running beside this one: RAUC creates and removes the
        // mount point directories there (rauc v1.8 src/mount.c r_create_mount_point, g_rmdir).
        let script = format!(
            "mount --bind {} /proc/cmdline && exec rauc --conf={} --mount={} service",
            self.path("cmdline").display(),
            self.path("system.conf").display(),
            self.path("mnt").display()
        );
        let log = fs::File::create(self.path(&format!("service-{slot}.log"))).unwrap();
        let child = Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus)
            // For the bundle's hook, which RAUC starts with the service's environment (RAUC
            // 1.8 src/update_handler.c run_slot_hook_extra_env: g_subprocess_launcher_new
            // inherits it); on the device it is the default /boot/firmware.
            .env("PISPEAKER_BOOT_DIR", self.path("boot"))
            // Both into the log, as the journal gets them on the device: the hook's messages
            // go to the service's stdout and stderr (RAUC 1.8 G_SUBPROCESS_FLAGS_NONE).
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.service = Some(Killed(child));
        // Ready when it answers on the bus (and says what booted: the new service, not the old).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.rauc(&["status", "--output-format=json"]);
            if out.status.success() {
                let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                if json["booted"] == slot {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "rauc service did not come up: {}",
                fs::read_to_string(self.path(&format!("service-{slot}.log"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn rauc(&self, args: &[&str]) -> Output {
        Command::new("rauc")
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus)
            .output()
            .unwrap()
    }

    fn update(&self, bundle: &Path) -> Output {
        Command::new(env!("CARGO_BIN_EXE_pispeaker"))
            .arg("update")
            .arg("--rauc-conf")
            .arg(self.path("system.conf"))
            .arg(bundle)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus)
            .output()
            .unwrap()
    }
}

const CONFIG: &str = "[all]\nkernel=vmlinuz\ninitramfs initrd.img followkernel\ninclude pispeaker-board.txt\nos_prefix=slotA/\n";

/// Slot A's command line as image/build.sh writes it (raspi-firmware's, root= by PARTUUID and
/// rauc.slot=A).
const CMDLINE_A: &str = "console=tty0 console=ttyS1,115200 console=ttyAMA0,115200 root=PARTUUID=7073706b-02 rw fsck.repair=yes net.ifnames=0 cma=32M rootwait rauc.slot=A\n";

/// The boot partition's slot A files, as on the image: kernel, initramfs, device trees, our
/// overlays and cmdline.txt.
const SLOT_A_FILES: [(&str, &str); 6] = [
    ("vmlinuz", "kernel of slot A"),
    ("initrd.img", "initramfs of slot A"),
    ("bcm2836-rpi-2-b.dtb", "Pi 2 tree of slot A"),
    ("bcm2837-rpi-3-b.dtb", "Pi 3 tree of slot A"),
    ("overlays/pispeaker-i2s-dac.dtbo", "overlay of slot A"),
    ("cmdline.txt", CMDLINE_A),
];

/// Every file under `dir`, by relative path, with its content.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                files.push((rel, fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

fn rig(verity: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    // As image/build.sh leaves the card: slot A's boot files, nothing for slot B (the first
    // update writes them), slot B marked bad.
    for (file, content) in SLOT_A_FILES {
        let path = p("boot/slotA").join(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
    // The single file images before the two-copy state shipped (read as generation 0): an
    // update from such a speaker starts from it.
    fs::write(p("boot/pispeaker-slots.txt"), "A=good\nB=bad\n").unwrap();
    for slot in ["A", "B"] {
        // The root partitions: 8 MiB of zeros each.
        fs::write(p(&format!("root{slot}.img")), vec![0u8; 8 << 20]).unwrap();
    }
    fs::write(p("boot/config.txt"), CONFIG).unwrap();
    fs::create_dir_all(p("data")).unwrap();
    let backend = p("backend.sh");
    fs::write(
        &backend,
        format!(
            "#!/bin/sh\nPISPEAKER_BOOT_DIR={} exec sh {} \"$@\"\n",
            p("boot").display(),
            repo().join("image/rauc/pispeaker-slot").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&backend, fs::Permissions::from_mode(0o755)).unwrap();

    // The image's system.conf, with this rig's paths.
    let mut conf = fs::read_to_string(repo().join("image/rauc/system.conf")).unwrap();
    for (from, to) in [
        ("/data/rauc", p("data")),
        ("/etc/rauc/keyring.pem", p("keys/development.cert.pem")),
        ("/usr/lib/pispeaker/pispeaker-slot", backend.clone()),
        ("/dev/disk/by-partuuid/7073706b-02", p("rootA.img")),
        ("/dev/disk/by-partuuid/7073706b-03", p("rootB.img")),
    ] {
        assert!(conf.contains(from), "system.conf no longer has {from}");
        conf = conf.replace(from, &to.display().to_string());
    }
    if !verity {
        conf = conf.replace("bundle-formats=-plain", "bundle-formats=plain verity");
    }
    fs::write(p("system.conf"), conf).unwrap();

    let mut dbus = Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--nosyslog"])
        .arg(format!("--address=unix:path={}", p("bus").display()))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p("bus").exists() {
        assert!(Instant::now() < deadline, "dbus-daemon did not start");
        assert!(dbus.try_wait().unwrap().is_none(), "dbus-daemon exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    Rig {
        bus: format!("unix:path={}", p("bus").display()),
        dir,
        service: None,
        _dbus: Killed(dbus),
    }
}

/// The boot files a root file system built by image/build.sh carries for its slot: the kernel
/// and initramfs in /boot (Debian's names), the device trees and overlays in
/// /usr/lib/pispeaker/boot/. Each file's content names the version.
fn root_boot_files(version: &str) -> Vec<(String, String)> {
    [
        ("boot/vmlinuz-6.1.0-99-armmp", "kernel"),
        ("boot/initrd.img-6.1.0-99-armmp", "initramfs"),
        ("usr/lib/pispeaker/boot/bcm2836-rpi-2-b.dtb", "Pi 2 tree"),
        ("usr/lib/pispeaker/boot/bcm2837-rpi-3-b.dtb", "Pi 3 tree"),
        (
            "usr/lib/pispeaker/boot/bcm2837-rpi-zero-2-w.dtb",
            "Zero 2 W tree",
        ),
        (
            "usr/lib/pispeaker/boot/overlays/pispeaker-i2s-dac.dtbo",
            "overlay",
        ),
        (
            "usr/lib/pispeaker/boot/overlays/pispeaker-pi2-i2s.dtbo",
            "Pi 2 overlay",
        ),
    ]
    .iter()
    .map(|(path, what)| (path.to_string(), format!("{what} of {version}")))
    .collect()
}

/// What slotB/ must hold after installing `version`: the root's boot files under config.txt's
/// names, and slot A's command line with slot B's root partition and name.
fn expected_slot_b(version: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = root_boot_files(version)
        .into_iter()
        .map(|(path, content)| {
            let name = match path.as_str() {
                "boot/vmlinuz-6.1.0-99-armmp" => "vmlinuz".to_string(),
                "boot/initrd.img-6.1.0-99-armmp" => "initrd.img".to_string(),
                other => other
                    .strip_prefix("usr/lib/pispeaker/boot/")
                    .unwrap()
                    .to_string(),
            };
            (name, content.into_bytes())
        })
        .collect();
    let cmdline = CMDLINE_A
        .replace("root=PARTUUID=7073706b-02", "root=PARTUUID=7073706b-03")
        .replace("rauc.slot=A", "rauc.slot=B");
    files.push(("cmdline.txt".to_string(), cmdline.into_bytes()));
    files.sort();
    files
}

/// A root image with recognisable content (with its boot files, or without a kernel), and a
/// bundle of it made by `make-bundle.sh` and signed with the rig's development key (RAUC's plain
/// format where this kernel has no device-mapper).
fn bundle(rig: &Rig, version: &str, verity: bool, with_kernel: bool) -> (PathBuf, Vec<u8>) {
    let content = rig.path("rootfs-content");
    let _ = fs::remove_dir_all(&content);
    for (path, text) in root_boot_files(version) {
        if !with_kernel && path.starts_with("boot/vmlinuz-") {
            continue;
        }
        let path = content.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    let mut noise = vec![0u8; 256 * 1024];
    let mut x: u32 = 0x9e37_79b9;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    fs::write(content.join("noise"), &noise).unwrap();
    let image = rig.path("rootfs.ext4");
    check(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&content)
            .arg(&image)
            .arg("4M")
            .output()
            .unwrap(),
        "mkfs.ext4",
    );
    check(
        Command::new("sh")
            .arg(repo().join("image/rauc/make-bundle.sh"))
            .arg(&image)
            .arg(version)
            .arg(rig.path("out"))
            .env("PISPEAKER_KEYS_DIR", rig.path("keys"))
            .env(
                "PISPEAKER_BUNDLE_FORMAT",
                if verity { "verity" } else { "plain" },
            )
            .output()
            .unwrap(),
        "make-bundle",
    );
    let path = rig.path(&format!("out/pispeaker-{version}-armhf.raucb"));
    (path, fs::read(&image).unwrap())
}

/// Device-mapper (for verity bundles) is there, or a note says the plain format is used.
fn verity() -> bool {
    let verity = Path::new("/dev/mapper/control").exists();
    if !verity {
        eprintln!(
            "note: no device-mapper in this kernel: installing a plain bundle instead of verity"
        );
    }
    verity
}

/// The entries at the top of the boot partition: no slotB.new/ or slotB.old/ left behind.
/// The slot state in force, as the backend reads it from its two copies (`show`).
fn slots(rig: &Rig) -> String {
    let out = Command::new("sh")
        .arg(repo().join("image/rauc/pispeaker-slot"))
        .arg("show")
        .env("PISPEAKER_BOOT_DIR", rig.path("boot"))
        .output()
        .unwrap();
    assert!(out.status.success(), "show: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn boot_entries(rig: &Rig) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(rig.path("boot"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn update_installs_into_the_other_slot_switches_config_txt_and_mark_good_settles_it() {
    if !available() {
        return;
    }
    let verity = verity();
    let mut rig = rig(verity);
    let (built, image) = bundle(&rig, "99.0.0", verity, true);
    // Kept aside: the foreign bundle below is built to the same path.
    let good = rig.path("good.raucb");
    fs::rename(&built, &good).unwrap();
    rig.boot("A");
    let zeros = vec![0u8; 8 << 20];
    let slot_a = tree(&rig.path("boot/slotA"));

    // Refused before anything is written: a tampered bundle and one signed by another key.
    let mut tampered = fs::read(&good).unwrap();
    let at = tampered.len() - 100;
    tampered[at] ^= 0x5a;
    let tampered_path = rig.path("tampered.raucb");
    fs::write(&tampered_path, &tampered).unwrap();
    let out = rig.update(&tampered_path);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not signed by a key this speaker trusts")
    );
    fs::rename(rig.path("keys"), rig.path("release-keys")).unwrap();
    let (foreign, _) = bundle(&rig, "99.0.0", verity, true); // a fresh key pair: not the keyring's
    fs::remove_dir_all(rig.path("keys")).unwrap();
    fs::rename(rig.path("release-keys"), rig.path("keys")).unwrap();
    let out = rig.update(&foreign);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("signature verification failed"));
    assert!(
        fs::read(rig.path("rootB.img")).unwrap() == zeros,
        "slot B was written"
    );
    assert_eq!(
        fs::read_to_string(rig.path("boot/config.txt")).unwrap(),
        CONFIG
    );
    assert!(!rig.path("boot/slotB").exists());

    // The good bundle: progress, slot B written, its boot files put in slotB/ by the bundle's
    // hook, config.txt switched with its tries armed.
    let started = Instant::now();
    let out = check(rig.update(&good), "pispeaker update");
    println!(
        "install of a {} byte bundle took {:.1} s",
        fs::metadata(&good).unwrap().len(),
        started.elapsed().as_secs_f64()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("100% Installing done."), "{stdout}");
    assert!(stdout.contains("installed pispeaker 99.0.0"), "{stdout}");
    let slot_b = fs::read(rig.path("rootB.img")).unwrap();
    assert!(slot_b[..image.len()] == image[..], "slot B holds the image");
    assert!(
        fs::read(rig.path("rootA.img")).unwrap() == zeros,
        "slot A untouched"
    );
    assert_eq!(tree(&rig.path("boot/slotB")), expected_slot_b("99.0.0"));
    assert!(
        tree(&rig.path("boot/slotA")) == slot_a,
        "slot A's boot files changed"
    );
    assert_eq!(
        boot_entries(&rig),
        [
            "config.txt",
            "pispeaker-slots.alt.txt",
            "pispeaker-slots.txt",
            "slotA",
            "slotB"
        ]
    );
    let config = fs::read_to_string(rig.path("boot/config.txt")).unwrap();
    assert_eq!(config, CONFIG.replace("slotA/", "slotB/"));
    // From the image's single file (generation 0, B bad already, so RAUC's "mark B bad" writes
    // nothing): B armed (generation 1, into the other copy).
    let state = slots(&rig);
    assert!(state.starts_with("A=good B=try:3 generation=1 "), "{state}");
    let status = rig.rauc(&["status", "--detailed", "--output-format=json"]);
    let json: serde_json::Value = serde_json::from_slice(&check(status, "status").stdout).unwrap();
    assert_eq!(json["boot_primary"], "rootfs.1");

    // A second update before the reboot: config.txt names slot B, which is rewritten, so the
    // hook first points config.txt back at the running slot A; the install ends with slot B
    // holding the newer version, switched to again.
    let (newer, newer_image) = bundle(&rig, "99.0.1", verity, true);
    let out = check(
        rig.update(&newer),
        "pispeaker update (second, before a reboot)",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("installed pispeaker 99.0.1"), "{stdout}");
    let slot_b = fs::read(rig.path("rootB.img")).unwrap();
    assert!(
        slot_b[..newer_image.len()] == newer_image[..],
        "slot B holds the newer image"
    );
    assert_eq!(tree(&rig.path("boot/slotB")), expected_slot_b("99.0.1"));
    assert!(tree(&rig.path("boot/slotA")) == slot_a);
    assert_eq!(
        fs::read_to_string(rig.path("boot/config.txt")).unwrap(),
        CONFIG.replace("slotA/", "slotB/")
    );
    let log = fs::read_to_string(rig.path("service-A.log")).unwrap();
    assert!(
        log.contains("config.txt boots the running slot A again while slotB/ is rewritten"),
        "{log}"
    );

    // "Reboot" into B; the unit ordered after READY runs mark-good.
    rig.boot("B");
    check(rig.rauc(&["status", "mark-good"]), "rauc status mark-good");
    let state = slots(&rig);
    assert!(state.starts_with("A=good B=good "), "{state}");
}

/// A bundle whose root cannot boot (no kernel in /boot): the hook fails, so RAUC fails the
/// install before it marks the slot primary: config.txt still boots slot A, slot B stays bad,
/// nothing of it is on the boot partition, slot A's files are untouched.
#[test]
fn a_bundle_whose_root_has_no_kernel_fails_to_install_and_switches_nothing() {
    if !available() {
        return;
    }
    let verity = verity();
    let mut rig = rig(verity);
    let (bundle, _) = bundle(&rig, "99.0.0", verity, false);
    rig.boot("A");
    let slot_a = tree(&rig.path("boot/slotA"));

    let out = rig.update(&bundle);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "pispeaker update said: {}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("journalctl -u rauc"), "{stderr}");
    let log = fs::read_to_string(rig.path("service-A.log")).unwrap();
    assert!(
        log.contains("the new root file system has 0 kernels in /boot"),
        "{log}"
    );
    assert_eq!(
        fs::read_to_string(rig.path("boot/config.txt")).unwrap(),
        CONFIG
    );
    let state = slots(&rig);
    assert!(state.starts_with("A=good B=bad "), "{state}");
    assert!(tree(&rig.path("boot/slotA")) == slot_a);
    // B was bad already: marking it bad wrote no second copy.
    assert_eq!(
        boot_entries(&rig),
        ["config.txt", "pispeaker-slots.txt", "slotA"]
    );
    let status = rig.rauc(&["status", "--detailed", "--output-format=json"]);
    let json: serde_json::Value = serde_json::from_slice(&check(status, "status").stdout).unwrap();
    assert_eq!(json["boot_primary"], "rootfs.0");
}

//! A real install on the host: the RAUC 1.8 service (on a private D-Bus, in a mount namespace
//! whose /proc/cmdline says which slot "booted") with the image's system.conf pointed at files
//! standing for the two root partitions and a directory standing for the boot partition, and
//! `image/rauc/pispeaker-slot` as its bootloader backend. `pispeaker update` refuses a tampered
//! and a foreign bundle without writing anything, installs a good one into the other slot and
//! switches config.txt to it with its boot tries armed; after a "reboot" into it,
//! `rauc status mark-good` makes it good.
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
        let script = format!(
            "mount --bind {} /proc/cmdline && exec rauc --conf={} service",
            self.path("cmdline").display(),
            self.path("system.conf").display()
        );
        let child = Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus)
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.path(&format!("service-{slot}.log"))).unwrap())
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

fn rig(verity: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    for slot in ["A", "B"] {
        let d = p(&format!("boot/slot{slot}"));
        fs::create_dir_all(&d).unwrap();
        for file in ["vmlinuz", "initrd.img", "bcm2710-rpi-3-b.dtb"] {
            fs::write(d.join(file), file).unwrap();
        }
        fs::write(d.join("cmdline.txt"), format!("rauc.slot={slot}\n")).unwrap();
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

/// A root image with recognisable content, and a bundle of it signed with the rig's
/// development key (`make-bundle.sh` for verity; rauc directly for a plain one).
fn bundle(rig: &Rig, version: &str, verity: bool) -> (PathBuf, Vec<u8>) {
    let content = rig.path("rootfs-content");
    fs::create_dir_all(&content).unwrap();
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
            .arg("2M")
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
            .output()
            .unwrap(),
        "make-bundle",
    );
    let mut path = rig.path(&format!("out/pispeaker-{version}-armhf.raucb"));
    if !verity {
        let plain = rig.path("plain");
        fs::create_dir_all(&plain).unwrap();
        fs::copy(&image, plain.join("rootfs.ext4")).unwrap();
        fs::write(
            plain.join("manifest.raucm"),
            format!("[update]\ncompatible=pispeaker-armhf\nversion={version}\n\n[image.rootfs]\nfilename=rootfs.ext4\n"),
        )
        .unwrap();
        path = rig.path(&format!("pispeaker-{version}-armhf-plain.raucb"));
        let _ = fs::remove_file(&path);
        check(
            Command::new("rauc")
                .arg("bundle")
                .arg(format!(
                    "--cert={}",
                    rig.path("keys/development.cert.pem").display()
                ))
                .arg(format!(
                    "--key={}",
                    rig.path("keys/development.key.pem").display()
                ))
                .arg(&plain)
                .arg(&path)
                .output()
                .unwrap(),
            "rauc bundle (plain)",
        );
    }
    (path, fs::read(&image).unwrap())
}

#[test]
fn update_installs_into_the_other_slot_switches_config_txt_and_mark_good_settles_it() {
    if !available() {
        return;
    }
    let verity = Path::new("/dev/mapper/control").exists();
    if !verity {
        eprintln!(
            "note: no device-mapper in this kernel: installing a plain bundle instead of verity"
        );
    }
    let mut rig = rig(verity);
    let (built, image) = bundle(&rig, "99.0.0", verity);
    // Kept aside: the foreign bundle below is built to the same path.
    let good = rig.path("good.raucb");
    fs::rename(&built, &good).unwrap();
    rig.boot("A");
    let zeros = vec![0u8; 8 << 20];

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
    let (foreign, _) = bundle(&rig, "99.0.0", verity); // a fresh key pair: not the keyring's
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

    // The good bundle: progress, slot B written, config.txt switched with its tries armed.
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
    let config = fs::read_to_string(rig.path("boot/config.txt")).unwrap();
    assert_eq!(config, CONFIG.replace("slotA/", "slotB/"));
    let state = fs::read_to_string(rig.path("boot/pispeaker-slots.txt")).unwrap();
    assert!(state.contains("\nA=good\nB=try:3\n"), "{state}");
    let status = rig.rauc(&["status", "--detailed", "--output-format=json"]);
    let json: serde_json::Value = serde_json::from_slice(&check(status, "status").stdout).unwrap();
    assert_eq!(json["boot_primary"], "rootfs.1");

    // "Reboot" into B; the unit ordered after READY runs mark-good.
    rig.boot("B");
    check(rig.rauc(&["status", "mark-good"]), "rauc status mark-good");
    let state = fs::read_to_string(rig.path("boot/pispeaker-slots.txt")).unwrap();
    assert!(state.contains("\nA=good\nB=good\n"), "{state}");
}

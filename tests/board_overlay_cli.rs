//! `pispeaker board-overlay` as the image's boot unit runs it: through the built binary, with a
//! real settings file and, as root, a real read-only mount standing in for the FAT partition.
//! (It is never given `--reboot-stamp` here: that is the switch that reboots the machine.)

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_pispeaker");

fn run(source: &Path, target: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .arg("board-overlay")
        .arg("--source")
        .arg(source)
        .arg("--target")
        .arg(target)
        .args(extra)
        .output()
        .expect("run pispeaker")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn writes_the_overlay_once_and_leaves_it_on_an_unknown_board() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("pispeaker.toml");
    let target = dir.path().join("pispeaker-board.txt");
    std::fs::write(
        &source,
        "name = \"Kitchen\"\nboard = \"hifiberry-dacplus\"\n",
    )
    .unwrap();

    let out = run(&source, &target, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("wrote"), "{}", stderr(&out));
    let written = std::fs::read_to_string(&target).unwrap();
    assert!(
        written.contains("\ndtoverlay=pispeaker-hifiberry-dacplus\n"),
        "{written}"
    );
    assert!(written.contains("[pi2]\ndtoverlay=pispeaker-pi2-i2s\n[all]\n"));

    let out = run(&source, &target, &[]);
    assert!(out.status.success());
    assert!(stderr(&out).contains("up to date"), "{}", stderr(&out));

    std::fs::write(&source, "board = \"hifiberry-dacplsu\"\n").unwrap();
    let out = run(&source, &target, &[]);
    assert!(
        out.status.success(),
        "an unknown board must not fail the boot"
    );
    let log = stderr(&out);
    assert!(
        log.contains("hifiberry-dacplsu") && log.contains("stays as it was"),
        "{log}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), written);
}

#[test]
fn a_read_only_mount_is_made_writable_for_the_write_only() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var_os("PISPEAKER_SKIP_ROOT_TESTS").is_some() {
            eprintln!("SKIPPED: needs root for a mount namespace (PISPEAKER_SKIP_ROOT_TESTS set)");
            return;
        }
        panic!("needs root for a mount namespace; run the tests as root (CI does) or set PISPEAKER_SKIP_ROOT_TESTS=1");
    }
    let dir = tempfile::tempdir().unwrap();
    let fat = dir.path().join("fat");
    std::fs::create_dir(&fat).unwrap();
    let source = dir.path().join("pispeaker.toml");
    std::fs::write(&source, "board = \"i2s-dac\"\n").unwrap();
    // A private mount namespace: the read-only tmpfs (the image mounts its FAT `ro`) vanishes
    // with the shell, whatever happens.
    let script = format!(
        r#"set -e
mount -t tmpfs -o ro,size=1M pispeaker-test "{fat}"
"{bin}" board-overlay --source "{source}" --target "{fat}/pispeaker-board.txt" --remount "{fat}"
cat "{fat}/pispeaker-board.txt"
if touch "{fat}/after" 2>/dev/null; then echo STILL-WRITABLE; fi
"#,
        fat = fat.display(),
        bin = BIN,
        source = source.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("dtoverlay=pispeaker-i2s-dac"), "{text}");
    assert!(
        !text.contains("STILL-WRITABLE"),
        "the mount must be read-only again"
    );
}

//! Files the speaker keeps between boots: credentials, device ids, tokens.
//!
//! Every write goes to a temporary file in the same directory, is fsynced, renamed over the
//! target and the directory is fsynced, so a power cut leaves either the old or the new file,
//! never a torn one. Secret files are created with mode 0600 before any byte is written.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Writes `contents` to `path` atomically with mode 0600.
pub fn write_secret_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_atomic_with_mode(path, contents, 0o600)
}

/// Writes `contents` to `path` atomically with the given permission bits.
pub fn write_atomic_with_mode(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_owned(path, contents, mode, None)
}

/// Like [`write_atomic_with_mode`], and the file belongs to `owner` (uid, gid) from the moment
/// it appears under its name: a root tool writing into a service's state directory hands the
/// file to the service (chown before the rename, so no reader ever sees it root-owned).
pub fn write_atomic_owned(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let dir = parent_dir(path);
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp_path = dir.join(&tmp_name);
    remove_stale_temp_files(dir, file_name);

    if owner.is_some() {
        // A root writer in someone else's directory: never follow a link planted at the
        // temporary name, and never reuse a file that is already there.
        let _ = fs::remove_file(&tmp_path);
    }
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .create_new(owner.is_some())
            .truncate(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp_path)?;
        fault::point(fault::Step::Created)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        let half = contents.len() / 2;
        file.write_all(&contents[..half])?;
        fault::point(fault::Step::HalfWritten)?;
        file.write_all(&contents[half..])?;
        fault::point(fault::Step::Written)?;
        file.sync_all()?;
        fault::point(fault::Step::Synced)?;
        drop(file);
        fs::rename(&tmp_path, path)?;
        fault::point(fault::Step::Renamed)?;
        // The rename is only durable once the directory entry is on disk.
        File::open(dir)?.sync_all()
    })();
    if result.is_err() && !fault::crashed() {
        let _ = fs::remove_file(&tmp_path);
    }
    result
}

/// Removes `.NAME.tmp-PID` files whose writer is gone (a crash or power cut mid-write), so they do
/// not pile up on a speaker that is unplugged now and then. The live target is never touched.
fn remove_stale_temp_files(dir: &Path, file_name: &std::ffi::OsStr) {
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(file_name);
    prefix.push(".tmp-");
    let Some(prefix) = prefix.to_str().map(str::to_owned) else {
        return;
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix.as_str())) else {
            continue;
        };
        let alive = pid.parse::<u32>().is_ok_and(|pid| {
            pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
        });
        if !alive {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Crash simulation for tests: makes the writer stop dead after a given step, leaving the disk as
/// a power cut at that moment would (minus the page cache, which `sync_all` ordering covers).
mod fault {
    use std::io;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[cfg_attr(not(test), allow(dead_code))]
    pub enum Step {
        Created,
        HalfWritten,
        Written,
        Synced,
        Renamed,
    }

    #[cfg(test)]
    thread_local! {
        pub static CRASH_AFTER: std::cell::Cell<Option<Step>> = const { std::cell::Cell::new(None) };
        static CRASHED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[cfg(test)]
    pub fn point(step: Step) -> io::Result<()> {
        if CRASH_AFTER.with(|c| c.get()) == Some(step) {
            CRASHED.with(|c| c.set(true));
            return Err(io::Error::other("simulated crash"));
        }
        Ok(())
    }

    #[cfg(test)]
    pub fn crashed() -> bool {
        CRASHED.with(|c| c.replace(false))
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub fn point(_: Step) -> io::Result<()> {
        Ok(())
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub fn crashed() -> bool {
        false
    }
}

/// Moves a file that could not be parsed out of the way as `<name>.corrupt-<time>` and returns
/// the new path, so the speaker can start afresh without destroying what a person may want to
/// inspect.
pub fn quarantine(path: &Path) -> io::Result<PathBuf> {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace(':', "");
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".corrupt-{stamp}"));
    let target = parent_dir(path).join(name);
    fs::rename(path, &target)?;
    Ok(target)
}

/// Reads a small state file; `Ok(None)` when it does not exist.
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secret_is_written_with_mode_0600_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.json");
        write_secret_atomic(&path, b"first").unwrap();
        write_secret_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file may be left behind");
    }

    #[test]
    fn a_crash_at_any_step_leaves_the_old_or_the_new_file_never_a_torn_one() {
        use fault::Step::*;
        let old = vec![b'o'; 4096];
        let new = vec![b'n'; 4096];
        for step in [Created, HalfWritten, Written, Synced, Renamed] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("credentials.json");
            write_secret_atomic(&path, &old).unwrap();
            fault::CRASH_AFTER.with(|c| c.set(Some(step)));
            assert!(write_secret_atomic(&path, &new).is_err());
            fault::CRASH_AFTER.with(|c| c.set(None));
            let now = fs::read(&path).unwrap();
            assert!(
                now == old || now == new,
                "torn file after a crash at {step:?}"
            );
            if step == Renamed {
                assert_eq!(now, new, "after the rename the new content is in place");
            } else {
                assert_eq!(now, old, "before the rename the old content is in place");
            }
            // The next boot's write works and sweeps the dead writer's temp file (its pid is ours
            // here, so rename it to a pid that cannot exist first).
            for entry in fs::read_dir(dir.path()).unwrap().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.contains(".tmp-") {
                    fs::rename(
                        entry.path(),
                        dir.path().join(".credentials.json.tmp-4294967295"),
                    )
                    .unwrap();
                }
            }
            write_secret_atomic(&path, &new).unwrap();
            assert_eq!(fs::read(&path).unwrap(), new);
            let names: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert_eq!(names.len(), 1, "no temp files left: {names:?}");
        }
    }

    /// Our writer in a real process, killed with SIGKILL at random moments while rewriting a
    /// file: every surviving state is one complete version.
    #[test]
    fn sigkill_mid_write_never_tears_the_file() {
        use std::process::{Command, Stdio};
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_secret_atomic(&path, &writer_loop_version(0)).unwrap();
        let versions: Vec<Vec<u8>> = (0..4).map(writer_loop_version).collect();
        let mut seen = std::collections::HashSet::new();
        for round in 0..20u64 {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--ignored",
                    "--exact",
                    "state::tests::writer_loop",
                    "--nocapture",
                ])
                .env("PISPEAKER_WRITER_LOOP", &path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // Kill it mid-stream, not before it started: under emulation (armv7 tests run in
            // qemu-user) a child takes far longer to start than the kill delay. Every atomic
            // write renames a new inode into place, so wait until the first one landed.
            use std::os::unix::fs::MetadataExt;
            let before = fs::metadata(&path).unwrap().ino();
            let started = std::time::Instant::now();
            while fs::metadata(&path).unwrap().ino() == before {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "round {round}: the writer never wrote"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(Duration::from_millis(5 + (round * 7) % 60));
            child.kill().unwrap();
            child.wait().unwrap();
            let now = fs::read(&path).unwrap();
            assert!(
                versions.contains(&now),
                "round {round}: torn file of {} bytes",
                now.len()
            );
            seen.insert(now[0]);
        }
        assert!(seen.len() > 1, "the killed writers really rewrote the file");
        // The next write sweeps the killed writers' temp files.
        write_secret_atomic(&path, &versions[1]).unwrap();
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "stale temp files swept: {names:?}");
    }

    fn writer_loop_version(i: usize) -> Vec<u8> {
        vec![b'a' + i as u8; 256 * 1024]
    }

    /// Not a test by itself: the writer process for `sigkill_mid_write_never_tears_the_file`.
    #[test]
    #[ignore = "run by sigkill_mid_write_never_tears_the_file as its child process"]
    fn writer_loop() {
        let Some(path) = std::env::var_os("PISPEAKER_WRITER_LOOP") else {
            return;
        };
        let path = std::path::PathBuf::from(path);
        for i in 0.. {
            write_secret_atomic(&path, &writer_loop_version(i % 4)).unwrap();
        }
    }

    #[test]
    fn quarantine_keeps_the_bad_file_beside_the_original() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, b"{not json").unwrap();
        let moved = quarantine(&path).unwrap();
        assert!(!path.exists());
        assert!(moved
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("state.json.corrupt-"));
        assert_eq!(fs::read(moved).unwrap(), b"{not json");
    }

    #[test]
    fn missing_file_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_optional(&dir.path().join("nope")).unwrap().is_none());
    }
}

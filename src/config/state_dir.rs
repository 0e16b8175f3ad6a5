//! The state directory must exist and be writable before anything else starts: credentials
//! received from the Spotify app would otherwise be lost at the next reboot.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The state directory cannot be used; the message says how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("state directory {path} is not usable: {cause}. Fix: create it writable for the user running pispeaker (sudo install -d -o \"$USER\" -m 700 {path}), or choose another with --cache DIR / cache = \"DIR\"")]
pub struct StateDirError {
    pub path: PathBuf,
    pub cause: String,
}

impl StateDirError {
    /// A problem with the machine rather than the config file.
    pub const EXIT_CODE: u8 = 1;
}

/// Creates `dir` (mode 0700) if needed and proves it writable with a probe file.
pub fn check_state_dir(dir: &Path) -> Result<(), StateDirError> {
    let fail = |cause: String| StateDirError {
        path: dir.to_path_buf(),
        cause,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail(format!("cannot create it ({})", describe(&e))))?;
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    fs::write(&probe, b"probe")
        .map_err(|e| fail(format!("cannot write in it ({})", describe(&e))))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EROFS) => "read-only file system".into(),
        Some(libc::EACCES) | Some(libc::EPERM) => "permission denied".into(),
        Some(libc::ENOTDIR) => "a part of the path is a file, not a directory".into(),
        Some(libc::ENOSPC) => "no space left on the device".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_missing_directory_with_mode_0700() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b");
        check_state_dir(&state).unwrap();
        let mode = fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn an_unusable_directory_names_path_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"").unwrap();
        let err = check_state_dir(&file.join("state"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&file.join("state").display().to_string()),
            "{err}"
        );
        assert!(err.contains("not a directory"), "{err}");
        assert!(err.contains("--cache"), "{err}");
    }
}

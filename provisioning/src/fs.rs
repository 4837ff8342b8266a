//! The station directory's files: atomic writes, one filesystem sync for many files, and the
//! writer lock that keeps one process at a time issuing from a directory.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{io, Busy, Error};

/// Opens `path` for writing (created or truncated); `secret` files get mode 0600.
fn create(path: &Path, secret: bool) -> Result<File, Error> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    options.open(path).map_err(io(path))
}

fn create_parent(path: &Path) -> Result<(), Error> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))
}

/// Writes a file atomically (temp file, fsync, rename); `secret` files get mode 0600.
pub fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), Error> {
    create_parent(path)?;
    let tmp = path.with_extension("tmp");
    let mut f = create(&tmp, secret)?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Writes a file without waiting for the disk; `secret` files get mode 0600. Callers make
/// it durable with [`sync_filesystem`] before relying on it.
pub(crate) fn write_file_unsynced(path: &Path, bytes: &[u8], secret: bool) -> Result<(), Error> {
    create_parent(path)?;
    create(path, secret)?.write_all(bytes).map_err(io(path))
}

/// Makes everything written to the filesystem holding `dir` durable: one `syncfs` instead of
/// an fsync per file (issuing thousands of devices a second depends on it).
pub(crate) fn sync_filesystem(dir: &Path) -> Result<(), Error> {
    let f = File::open(dir).map_err(io(dir))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: `f` is an open file descriptor for the duration of the call; syncfs only
        // reads it.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(io(dir)(std::io::Error::last_os_error()));
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        // Without syncfs: fsync every file in the directory, then the directory itself.
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            if path.is_file() {
                File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(io(&path))?;
            }
        }
        f.sync_all().map_err(io(dir))
    }
}

/// Removes a file; one that is already gone is fine.
pub(crate) fn remove_if_present(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

/// Reads a text file, naming it in the error.
pub(crate) fn read_to_string(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// The lock on `dir/station.lock`, held for as long as the returned file is open.
///
/// A lock held only for a moment (a process forked by this one between fork and exec shares
/// the descriptor) is waited out; a running `serve` or batch is not.
pub(crate) fn lock_station(dir: &Path) -> Result<File, Error> {
    let lock_path = dir.join("station.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    let mut waited = 0;
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(lock),
            Err(std::fs::TryLockError::WouldBlock) if waited < 50 => {
                waited += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Busy::Station {
                    dir: dir.to_owned(),
                }
                .into())
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/file.pem");
        write_file(&path, b"one", false).unwrap();
        write_file(&path, b"two", false).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!path.with_extension("tmp").exists());
    }

    #[cfg(unix)]
    #[test]
    fn secret_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for (path, write) in [
            (
                dir.path().join("k1.key"),
                write_file as fn(&Path, &[u8], bool) -> _,
            ),
            (dir.path().join("k2.key"), write_file_unsynced),
        ] {
            write(&path, b"secret", true).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
        sync_filesystem(dir.path()).unwrap();
    }

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_station(dir.path()).unwrap();
        let err = lock_station(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Busy(Busy::Station { .. })), "{err}");
        assert!(err.to_string().contains("in use"), "{err}");
        drop(first);
        lock_station(dir.path()).unwrap();
    }

    #[test]
    fn removing_a_missing_file_is_fine_and_reading_one_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone.bin");
        remove_if_present(&path).unwrap();
        let err = read_to_string(&path).unwrap_err();
        assert!(err.to_string().contains("gone.bin"), "{err}");
    }
}

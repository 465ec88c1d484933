//! systemd credentials for workers that run as another user than the master.
//!
//! systemd gives a service's credentials (`LoadCredential=`, `LoadCredentialEncrypted=`,
//! `SetCredential=`) to the unit's `User=` only: `$CREDENTIALS_DIRECTORY` is readable by root
//! when the master runs as root, not by the config's `user` its workers drop to. So a root
//! master copies them, once per worker user, into `RUNTIME/credentials/`: that folder is the
//! workers' user's, mode 0500, each file 0400, so no one else reads them, whoever may go
//! through the runtime directory (root and the workers' group, 0710; under systemd, which keeps
//! that directory root's, anyone: see [`crate::rundir::RuntimeDir::set_access`]). The workers get `CREDENTIALS_DIRECTORY` pointing
//! there; nothing else changes for them. The copy is made again (file by file, each written
//! aside and renamed into place, so a worker reading one never sees it missing or half written)
//! when the workers' user changes, and removed when the master stops; under systemd the runtime
//! directory goes with the unit anyway.
//!
//! A master that runs as its workers' user (`corral init --user`) copies nothing: its workers
//! inherit `$CREDENTIALS_DIRECTORY` and may read it as systemd made it.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The copy's folder in a pool's runtime directory.
pub const DIR: &str = "credentials";

/// systemd's own limit on one credential (`CREDENTIAL_SIZE_MAX`).
const MAX_CREDENTIAL: u64 = 1024 * 1024;

/// Copy every credential in `from` into `runtime/credentials`, for user `uid`:`gid`; return
/// the folder. Files there that `from` no longer has are removed.
pub fn copy_for(from: &Path, runtime: &Path, uid: u32, gid: u32) -> Result<PathBuf, String> {
    let dir = runtime.join(DIR);
    let fail = |what: &str, path: &Path, e: std::io::Error| format!("cannot {what} {}: {e}", path.display());
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail("create", &dir, e)),
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| fail("inspect", &dir, e))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory: remove it", dir.display()));
    }
    let owner = |path: &Path, mode: u32| -> Result<(), String> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| fail("give away", path, e))?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(|e| fail("set the mode of", path, e))
    };
    // Writable while it is filled (by root, or by the user itself in a test), 0500 after.
    owner(&dir, 0o700)?;
    let mut names = Vec::new();
    let entries = std::fs::read_dir(from).map_err(|e| fail("read", from, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let source = entry.path();
        if !std::fs::metadata(&source).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let mut bytes = Vec::new();
        std::fs::File::open(&source)
            .and_then(|f| f.take(MAX_CREDENTIAL + 1).read_to_end(&mut bytes))
            .map_err(|e| fail("read", &source, e))?;
        if bytes.len() as u64 > MAX_CREDENTIAL {
            return Err(format!("{} is over 1 MiB, systemd's limit for a credential", source.display()));
        }
        let target = dir.join(&name);
        let aside = dir.join(format!(".{}.new", name.to_string_lossy()));
        // Whatever is in the way (a leftover, or a link the workers' user made: the folder is
        // theirs) is removed, not followed; the new file is created, never opened.
        let _ = std::fs::remove_file(&aside);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&aside)
            .map_err(|e| fail("create", &aside, e))?;
        file.write_all(&bytes).map_err(|e| fail("write", &aside, e))?;
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|e| fail("give away", &aside, e))?;
        drop(file);
        std::fs::rename(&aside, &target).map_err(|e| fail("rename", &aside, e))?;
        names.push(name);
    }
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            if !names.contains(&entry.file_name()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    owner(&dir, 0o500)?;
    Ok(dir)
}

/// Remove the copy (at the master's stop).
pub fn remove(runtime: &Path) {
    let dir = runtime.join(DIR);
    let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn the_copy_is_the_users_and_follows_the_source() {
        let base = std::env::temp_dir().join(format!("corral-creds-{}", std::process::id()));
        let (from, runtime) = (base.join("from"), base.join("run"));
        std::fs::create_dir_all(&from).unwrap();
        std::fs::create_dir_all(&runtime).unwrap();
        std::fs::write(from.join("token"), "s3cret\n").unwrap();
        std::fs::write(from.join("old"), "x").unwrap();
        let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
        let dir = super::copy_for(&from, &runtime, uid, gid).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("token")).unwrap(), "s3cret\n");
        let meta = std::fs::metadata(dir.join("token")).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.uid()), (0o400, uid));
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o500);
        // Again, with one credential gone and one changed: the copy follows.
        std::fs::remove_file(from.join("old")).unwrap();
        std::fs::set_permissions(from.join("token"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(from.join("token"), "new\n").unwrap();
        super::copy_for(&from, &runtime, uid, gid).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("token")).unwrap(), "new\n");
        assert!(!dir.join("old").exists());
        super::remove(&runtime);
        assert!(!dir.exists());
        let _ = std::fs::remove_dir_all(base);
    }
}

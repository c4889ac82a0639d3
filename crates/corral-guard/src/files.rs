//! Private files under the data dir. The database holds password hashes and TOTP
//! secrets, `jwt-secret` signs every access token, and replica logs echo prompts: none
//! of it is for other local users. Modes are set when a file or directory is created
//! (so there is no moment at which it is readable); existing ones are not changed
//! behind the operator's back, only reported by [`loose_modes`].

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Directories Corral creates: the owner only.
pub const DIR_MODE: u32 = 0o700;
/// Files Corral creates: the owner only.
pub const FILE_MODE: u32 = 0o600;
/// At most this many entries are reported by [`loose_modes`]: an Ollama model store
/// written with a permissive umask could otherwise flood the start-up log.
pub const REPORT_MAX: usize = 20;

/// Creates `dir` and its missing parents with mode 0700 (less the umask). An existing
/// directory keeps its mode.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Options that create a missing file with mode 0600 (less the umask); add
/// `write`/`append`/`create` as needed. An existing file keeps its mode.
pub fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Replaces `path`'s contents, creating it 0600 if missing.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    private_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?
        .write_all(contents)
}

/// Whether `mode` gives the group or others any access.
pub fn is_loose(mode: u32) -> bool {
    mode & 0o077 != 0
}

/// A file or directory that others may read (or enter, or write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loose {
    pub path: PathBuf,
    /// Permission bits only (`0o644`).
    pub mode: u32,
}

/// Entries at or under `root` whose modes are looser than private, `root` first, then
/// depth-first; at most [`REPORT_MAX`] of them, and how many there were in all.
/// Symbolic links are not followed (their own mode means nothing, and what they point
/// to is not ours); a missing `root` has nothing loose.
pub fn loose_modes(root: &Path) -> io::Result<(Vec<Loose>, usize)> {
    let mut found = Vec::new();
    let mut total = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
        if is_loose(mode) {
            total += 1;
            if found.len() < REPORT_MAX {
                found.push(Loose {
                    path: path.clone(),
                    mode,
                });
            }
        }
        if meta.is_dir() {
            let mut children: Vec<_> = std::fs::read_dir(&path)?
                .map(|e| e.map(|e| e.path()))
                .collect::<io::Result<_>>()?;
            // Reverse order on the stack: reported in name order.
            children.sort_unstable_by(|a, b| b.cmp(a));
            pending.extend(children);
        }
    }
    Ok((found, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_private_dirs_and_files_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&tmp.path().join("a")), 0o700, "parents too");
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("secret");
        write_private(&file, b"x").unwrap();
        assert_eq!(mode(&file), 0o600);
        write_private(&file, b"yz").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"yz");
        assert_eq!(loose_modes(&tmp.path().join("a")).unwrap(), (vec![], 0));
    }

    #[test]
    fn reports_what_others_can_read() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(loose_modes(root).unwrap(), (vec![], 0));
        let db = root.join("corral.db");
        std::fs::write(&db, b"").unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let logs = root.join("logs");
        std::fs::create_dir(&logs).unwrap();
        std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o750)).unwrap();
        let private = logs.join("r.log");
        write_private(&private, b"").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let (loose, total) = loose_modes(root).unwrap();
        assert_eq!(
            loose,
            vec![
                Loose {
                    path: db,
                    mode: 0o644
                },
                Loose {
                    path: logs,
                    mode: 0o750
                },
            ]
        );
        assert_eq!(total, 2);
        assert_eq!(loose_modes(&root.join("missing")).unwrap(), (vec![], 0));
    }

    #[test]
    fn reports_a_bounded_number() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        for i in 0..REPORT_MAX + 5 {
            let p = tmp.path().join(format!("f{i:02}"));
            std::fs::write(&p, b"").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o604)).unwrap();
        }
        let (loose, total) = loose_modes(tmp.path()).unwrap();
        assert_eq!((loose.len(), total), (REPORT_MAX, REPORT_MAX + 5));
        assert!(loose[0].path.ends_with("f00"));
    }

    #[test]
    fn loose_means_any_group_or_other_bit() {
        assert!(!is_loose(0o700));
        assert!(!is_loose(0o600));
        assert!(is_loose(0o640));
        assert!(is_loose(0o601));
        assert!(is_loose(0o755));
    }
}

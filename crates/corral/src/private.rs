//! The data dir is private to the user running Corral: `corral.db` holds password hashes
//! and TOTP secrets, `jwt-secret` signs every token, and replica logs echo prompts.
//! New files and directories are created 0600/0700 where they are written; this module
//! creates the data dir and the SQLite file, and warns at start-up about anything there
//! that other local users can read (left by an older version, a restore or by hand).

use std::path::{Path, PathBuf};

use corral_guard::files::{self, Loose};

use crate::error::CliError;

/// Creates the data dir (0700) and warns about what in it, or in a SQLite database kept
/// elsewhere, is readable by others.
pub fn prepare_data_dir(data_dir: &Path, database_url: &str) -> Result<(), CliError> {
    files::create_private_dir(data_dir).map_err(CliError::io(format!(
        "creating data dir {}",
        data_dir.display()
    )))?;
    warn_loose(data_dir);
    if let Some(db) = sqlite_path(database_url)
        && !db.starts_with(data_dir)
    {
        warn_loose(&db);
    }
    Ok(())
}

/// The file a `sqlite://` (or plain path) database URL names; None for other stores
/// and for in-memory databases. Parsed as `corral_store::open` does.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    if url.starts_with("postgres://")
        || url.starts_with("postgresql://")
        || url.starts_with("dynamodb://")
    {
        return None;
    }
    let path = match url.split_once("://") {
        Some(("sqlite", path)) => path,
        Some(_) => return None,
        None => url.strip_prefix("sqlite:").unwrap_or(url),
    };
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| PathBuf::from(path))
}

/// Creates a missing SQLite database file 0600 (its folders 0700) before SQLite opens
/// it: SQLite would create it with the umask's mode (0644), and gives its `-wal` and
/// `-shm` files the mode of the database file. An existing file is left as it is.
pub fn prepare_sqlite(url: &str) -> Result<(), CliError> {
    let Some(path) = sqlite_path(url) else {
        return Ok(());
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        files::create_private_dir(dir)
            .map_err(CliError::io(format!("creating {}", dir.display())))?;
    }
    files::private_options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(CliError::io(format!("creating {}", path.display())))?;
    Ok(())
}

/// One warning per loose entry under `root` (bounded), naming the path and its mode.
fn warn_loose(root: &Path) {
    match files::loose_modes(root) {
        Ok((loose, total)) => {
            for Loose { path, mode } in &loose {
                tracing::warn!(
                    path = %path.display(),
                    mode = %format_args!("{mode:04o}"),
                    "readable by other local users: run chmod go-rwx on it"
                );
            }
            if total > loose.len() {
                tracing::warn!(
                    path = %root.display(),
                    "{} more entries under it are readable by other local users",
                    total - loose.len()
                );
            }
        }
        Err(e) => tracing::warn!(path = %root.display(), "cannot check file modes: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths_from_database_urls() {
        let p = |u: &str| sqlite_path(u);
        assert_eq!(
            p("sqlite:///srv/c/corral.db"),
            Some("/srv/c/corral.db".into())
        );
        assert_eq!(p("sqlite://rel/c.db"), Some("rel/c.db".into()));
        assert_eq!(p("sqlite:c.db"), Some("c.db".into()));
        assert_eq!(p("/srv/c.db"), Some("/srv/c.db".into()));
        assert_eq!(p("postgres://u@h/db"), None);
        assert_eq!(p("postgresql://u@h/db"), None);
        assert_eq!(p("dynamodb://table"), None);
        assert_eq!(p("sqlite::memory:"), None);
        assert_eq!(p("sqlite://"), None);
    }
}

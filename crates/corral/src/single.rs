//! SQLite serves one `corral serve` process: two would both reconcile the same
//! replicas and keep rate limits and credential caches apart. A second server on the
//! same file therefore refuses to start, naming the stores built for several processes.
//!
//! The guard is an exclusive `flock` on a file beside the database, held for the
//! process lifetime. The kernel drops it when the process ends however it ends
//! (`kill -9` included), so a crash never leaves a stale lock behind. Admin commands do
//! not take it: they are short and SQLite's own locking keeps their writes safe.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use crate::error::CliError;

/// Held while the server runs; dropping it (or exiting) releases the lock.
#[derive(Debug)]
pub struct ServeLock {
    _file: File,
}

/// The lock file for a SQLite database: the database's name plus `.serve-lock`.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".serve-lock");
    PathBuf::from(name)
}

/// Takes the lock for `database_url` when it is a SQLite file; other stores take
/// several processes and need none (`Ok(None)`).
pub fn lock_store(database_url: &str) -> Result<Option<ServeLock>, CliError> {
    if database_url.starts_with("dynamodb://") {
        return Ok(None);
    }
    let Some(db) = corral_store::sqlite_path(database_url)? else {
        return Ok(None);
    };
    let path = lock_path(db);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        corral_guard::files::create_private_dir(dir)
            .map_err(CliError::io(format!("creating {}", dir.display())))?;
    }
    // Private like every other file of the data dir (start-up warns about loose ones).
    let file = corral_guard::files::private_options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(CliError::io(format!("opening {}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(ServeLock { _file: file })),
        Err(TryLockError::WouldBlock) => Err(CliError::Invalid(already_served(db))),
        Err(TryLockError::Error(e)) => Err(CliError::io(format!("locking {}", path.display()))(e)),
    }
}

fn already_served(db: &Path) -> String {
    format!(
        "another `corral serve` is already using the SQLite database {}: SQLite serves one \
         process only. To run several `corral serve` processes on one store, use PostgreSQL \
         (--database-url postgres://…) or DynamoDB (--database-url dynamodb://TABLE)",
        db.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_file_sits_beside_the_database() {
        assert_eq!(
            lock_path(Path::new("/srv/corral/corral.db")),
            PathBuf::from("/srv/corral/corral.db.serve-lock")
        );
    }

    #[test]
    fn a_second_lock_on_one_database_is_refused_and_names_the_alternatives() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        let first = lock_store(&url).unwrap().expect("SQLite is locked");
        let err = lock_store(&url).unwrap_err().to_string();
        assert!(
            err.contains("PostgreSQL") && err.contains("DynamoDB"),
            "{err}"
        );
        drop(first);
        assert!(
            lock_store(&url).unwrap().is_some(),
            "released with its holder"
        );
    }

    #[test]
    fn lock_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        let _lock = lock_store(&format!("sqlite://{}", db.display())).unwrap();
        let mode = std::fs::metadata(lock_path(&db))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn multi_process_stores_take_no_lock() {
        assert!(lock_store("postgres://u@127.0.0.1/db").unwrap().is_none());
        assert!(lock_store("dynamodb://corral").unwrap().is_none());
    }
}

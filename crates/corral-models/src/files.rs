//! Local file chores: the GGUF magic, hashing, the JSON record beside each GGUF.

use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use corral_core::ModelSource;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::error::{Error, Result};

/// Every GGUF file starts with these four bytes.
const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const BUF: usize = 1 << 20;

/// Ok if `path` is a file starting with the GGUF magic; `Missing` if there is nothing
/// there, so callers can tell "not imported yet" from "wrong file".
pub(crate) async fn check_gguf(model: &str, path: &Path) -> Result<()> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Error::Missing {
                model: model.to_owned(),
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(Error::io(format!("opening {}", path.display()))(e)),
    };
    let mut magic = [0u8; 4];
    match file.read_exact(&mut magic).await {
        Ok(_) if &magic == GGUF_MAGIC => Ok(()),
        // Too short, a directory, or other bytes: not something llama.cpp can load.
        _ => Err(Error::NotGguf {
            path: path.to_owned(),
        }),
    }
}

/// SHA-256 of the first `len` bytes of `path` (the whole file when `None`), on a blocking
/// thread: this reads gigabytes for a real model.
pub(crate) async fn hash_file(path: &Path, len: Option<u64>) -> Result<(Sha256, u64)> {
    let path = path.to_owned();
    blocking(move || {
        let file = std::fs::File::open(&path)
            .map_err(Error::io(format!("opening {} to hash it", path.display())))?;
        let mut reader = file.take(len.unwrap_or(u64::MAX));
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; BUF];
        let mut total = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(Error::io(format!("reading {}", path.display())))?;
            if n == 0 {
                return Ok((hasher, total));
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
    })
    .await
}

/// Puts `src` at `dest` and returns its SHA-256 and size. A hard link when both are on one
/// filesystem (no second copy of gigabytes); otherwise a copy, hashed as it is written.
pub(crate) async fn link_or_copy(src: &Path, dest: &Path) -> Result<(String, u64)> {
    let (from_path, to_path) = (src.to_owned(), dest.to_owned());
    let copied = blocking(move || {
        if std::fs::hard_link(&from_path, &to_path).is_ok() {
            return Ok(None);
        }
        let ctx = |what: &str| {
            format!(
                "{what} while copying {} to {}",
                from_path.display(),
                to_path.display()
            )
        };
        let mut from =
            std::fs::File::open(&from_path).map_err(Error::io(ctx("opening the source")))?;
        let mut to = corral_guard::files::private_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&to_path)
            .map_err(Error::io(ctx("creating the copy")))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; BUF];
        let mut size = 0u64;
        loop {
            let n = from.read(&mut buf).map_err(Error::io(ctx("reading")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            to.write_all(&buf[..n]).map_err(Error::io(ctx("writing")))?;
            size += n as u64;
        }
        to.sync_all().map_err(Error::io(ctx("syncing")))?;
        Ok(Some((hex(hasher), size)))
    })
    .await?;
    match copied {
        Some(done) => Ok(done),
        None => {
            let (hasher, size) = hash_file(dest, None).await?;
            Ok((hex(hasher), size))
        }
    }
}

pub(crate) fn hex(hasher: Sha256) -> String {
    format!("{:x}", hasher.finalize())
}

/// What is known about a GGUF we put in the models dir: written only after its content
/// was verified (or, for an import, hashed), so its presence is the "verified" flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sidecar {
    pub model_id: String,
    pub source: ModelSource,
    pub sha256: String,
    pub size: u64,
}

pub(crate) async fn read_sidecar(path: &Path) -> Option<Sidecar> {
    let bytes = tokio::fs::read(path).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Written to a temporary name and renamed, so a crash never leaves half a record.
pub(crate) async fn write_sidecar(path: &Path, sidecar: &Sidecar) -> Result<()> {
    let json = serde_json::to_vec_pretty(sidecar).expect("the sidecar serializes");
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = tmp.clone();
    blocking(move || {
        corral_guard::files::write_private(&written, &json)
            .map_err(Error::io(format!("writing {}", written.display())))
    })
    .await?;
    rename(&tmp, path).await
}

pub(crate) async fn rename(from: &Path, to: &Path) -> Result<()> {
    tokio::fs::rename(from, to).await.map_err(Error::io(format!(
        "renaming {} to {}",
        from.display(),
        to.display()
    )))
}

/// Removes `path` if it is there.
pub(crate) async fn remove(path: &Path) -> Result<()> {
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(Error::io(format!("removing {}", path.display()))(e))
        }
        _ => Ok(()),
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Bytes available to this (unprivileged) process on the file system of `path`.
pub(crate) fn available_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statvfs only writes the struct it is given; all-zero is a valid value of it.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a pointer to a live statvfs struct.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

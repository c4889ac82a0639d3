//! One resumable, verified HTTP download into a `.partial` file.

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};

use crate::error::{Error, Result};
use crate::files::{self, hex};
use crate::progress::{Meter, Phase};

/// Attempts per download before a network problem is reported; each one resumes.
const MAX_ATTEMPTS: u32 = 5;
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(8);

pub(crate) struct Download<'a> {
    pub client: &'a reqwest::Client,
    pub url: &'a str,
    pub partial: &'a Path,
    pub model: &'a str,
    /// Expected SHA-256, 64 lowercase hex digits.
    pub sha256: &'a str,
    /// Expected size, when the source announces it (the registry's manifest does).
    pub size: Option<u64>,
}

struct Fetched {
    sha256: String,
    /// Whether bytes from an earlier attempt were kept.
    resumed: bool,
}

impl Download<'_> {
    /// Leaves the complete, verified file at `partial`; on a digest mismatch deletes it.
    pub(crate) async fn run(&self, meter: &mut Meter<'_>) -> Result<()> {
        let mut failures = 0;
        let mut restarted_after_mismatch = false;
        loop {
            match self.attempt(meter).await {
                Ok(got) if got.sha256 == self.sha256 => return Ok(()),
                Ok(got) => {
                    files::remove(self.partial).await?;
                    // A partial left by an older download of other content (the catalog
                    // entry changed meanwhile) hashes wrong once resumed: one fresh
                    // download before blaming the source.
                    if got.resumed && !restarted_after_mismatch {
                        restarted_after_mismatch = true;
                        tracing::warn!(
                            model = self.model,
                            "resumed weights did not match their SHA-256; downloading again from the start"
                        );
                        continue;
                    }
                    return Err(Error::DigestMismatch {
                        model: self.model.to_owned(),
                        expected: self.sha256.to_owned(),
                        actual: got.sha256,
                    });
                }
                Err(e) if e.is_transient() && failures + 1 < MAX_ATTEMPTS => {
                    failures += 1;
                    let delay = (RETRY_BASE * 2u32.pow(failures - 1)).min(RETRY_MAX);
                    tracing::warn!(
                        model = self.model,
                        "weights download interrupted ({e}); resuming in {delay:?} \
                         (attempt {} of {MAX_ATTEMPTS})",
                        failures + 1
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One request, appending to what an earlier attempt (or an earlier run of the
    /// server) left in `partial`. The hash always covers the whole file.
    async fn attempt(&self, meter: &mut Meter<'_>) -> Result<Fetched> {
        let mut offset = match tokio::fs::metadata(self.partial).await {
            Ok(m) => m.len(),
            Err(_) => 0,
        };
        if self.size.is_some_and(|size| offset > size) {
            files::remove(self.partial).await?;
            offset = 0;
        }
        // Interrupted between the last byte and the rename: only the hash is missing.
        if offset > 0 && Some(offset) == self.size {
            meter.phase(Phase::Verifying, offset, self.size);
            let (hasher, _) = files::hash_file(self.partial, None).await?;
            return Ok(Fetched {
                sha256: hex(hasher),
                resumed: true,
            });
        }

        let mut request = self.client.get(self.url);
        if offset > 0 {
            request = request.header(RANGE, format!("bytes={offset}-"));
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| Error::http(self.url, &e))?;
        let status = response.status();
        let total = match status {
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                let range = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(ContentRange::parse);
                match range {
                    Some(r) if r.start == offset => r
                        .total
                        .or_else(|| response.content_length().map(|len| offset + len)),
                    _ => {
                        // Not the bytes we asked for: drop ours and start over.
                        files::remove(self.partial).await?;
                        return Err(self.broken(format!(
                            "asked to resume at byte {offset} but the server sent {:?}",
                            response.headers().get(CONTENT_RANGE)
                        )));
                    }
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
                // What we have is not a prefix of what the server has now.
                files::remove(self.partial).await?;
                return Err(self.broken(format!(
                    "the server cannot resume at byte {offset}; starting over"
                )));
            }
            s if s.is_success() => {
                if offset > 0 {
                    tracing::info!(
                        model = self.model,
                        "the server ignored the Range request; downloading from the start"
                    );
                    offset = 0;
                }
                response.content_length()
            }
            s => {
                return Err(Error::Status {
                    url: self.url.to_owned(),
                    status: s.as_u16(),
                    hint: match s {
                        StatusCode::NOT_FOUND => ": no such file (check the catalog entry)",
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                            ": access denied (is the file public?)"
                        }
                        _ => "",
                    },
                });
            }
        };
        let total = self.size.or(total);

        let (file, mut hasher) = if offset > 0 {
            let (hasher, hashed) = files::hash_file(self.partial, Some(offset)).await?;
            if hashed != offset {
                return Err(
                    self.broken(format!("{} shrank while resuming", self.partial.display()))
                );
            }
            let file = tokio::fs::OpenOptions::new()
                .append(true)
                .open(self.partial)
                .await
                .map_err(Error::io(format!("opening {}", self.partial.display())))?;
            tracing::info!(
                model = self.model,
                "resuming weights download at byte {offset}"
            );
            (file, hasher)
        } else {
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(corral_guard::files::FILE_MODE)
                .open(self.partial)
                .await
                .map_err(Error::io(format!("creating {}", self.partial.display())))?;
            (file, Sha256::new())
        };
        meter.phase(Phase::Downloading, offset, total);

        let write_err = || Error::io(format!("writing {}", self.partial.display()));
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut done = offset;
        loop {
            match response.chunk().await {
                Ok(Some(bytes)) => {
                    hasher.update(&bytes);
                    out.write_all(&bytes).await.map_err(write_err())?;
                    done += bytes.len() as u64;
                    meter.bytes(done, total);
                }
                Ok(None) => break,
                Err(e) => {
                    // Keep every byte received so the next attempt resumes after them.
                    out.flush().await.map_err(write_err())?;
                    return Err(Error::http(self.url, &e));
                }
            }
        }
        out.flush().await.map_err(write_err())?;
        // On disk before the caller renames it into place.
        out.get_ref().sync_all().await.map_err(write_err())?;
        if let Some(total) = total.filter(|t| done < *t) {
            return Err(self.broken(format!(
                "the connection closed after {done} of {total} bytes"
            )));
        }
        Ok(Fetched {
            sha256: hex(hasher),
            resumed: offset > 0,
        })
    }

    /// A transfer that went wrong in a way the next attempt can fix.
    fn broken(&self, reason: String) -> Error {
        Error::Http {
            url: self.url.to_owned(),
            reason,
        }
    }
}

/// `Content-Range: bytes START-END/TOTAL` (TOTAL may be `*`).
#[derive(Debug, PartialEq, Eq)]
struct ContentRange {
    start: u64,
    total: Option<u64>,
}

impl ContentRange {
    fn parse(value: &str) -> Option<ContentRange> {
        let rest = value.trim().strip_prefix("bytes ")?;
        let (range, total) = rest.split_once('/')?;
        let (start, _end) = range.split_once('-')?;
        Some(ContentRange {
            start: start.trim().parse().ok()?,
            total: match total.trim() {
                "*" => None,
                t => Some(t.parse().ok()?),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(
            ContentRange::parse("bytes 100-199/200"),
            Some(ContentRange {
                start: 100,
                total: Some(200)
            })
        );
        assert_eq!(
            ContentRange::parse("bytes 5-9/*"),
            Some(ContentRange {
                start: 5,
                total: None
            })
        );
        for bad in ["", "bytes */200", "items 1-2/3", "bytes 1-2", "bytes x-2/3"] {
            assert_eq!(ContentRange::parse(bad), None, "{bad}");
        }
    }
}

//! The weights manager: every catalog model's GGUF on this machine.
//!
//! Downloaded and imported GGUFs live in `<data_dir>/models/<stem>.gguf`, where the stem
//! comes from the model id alone (`llama2:7b` → `llama2_7b`), never from a path a user
//! gave. Beside each one, `<stem>.json` records the model id, the source and the SHA-256
//! it was verified against; it is written only after verification, so "present locally"
//! means the file is there *and* that record matches the catalog entry.
//!
//! Downloads go to `<stem>.partial`, resume with a `Range` request after an interruption
//! (within one resolve, and across server restarts), are hashed as they stream, and are
//! renamed into place only once the digest matches. Concurrent resolves of one model wait
//! on a per-model lock, so there is never more than one writer per file.

mod download;
mod error;
mod files;
pub mod gc;
mod name;
mod ollama;
mod progress;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_core::catalog::normalize_model_id;
use corral_core::{CatalogModel, ModelSource};
use corral_guard::net;
use tokio::sync::watch;

pub use error::{Error, Result};
pub use name::{OllamaRef, file_stem, parse_digest};
pub use progress::{Phase, Progress};

use download::Download;
use files::Sidecar;
use progress::Meter;

/// What local weights must stay: the catalog and the model ids of the instances not
/// deleted (see [`gc`]). The server answers from its store when the disk runs low.
#[async_trait::async_trait]
pub trait WeightsNeeds: Send + Sync {
    async fn needs(&self) -> std::result::Result<(Vec<CatalogModel>, Vec<String>), String>;
}

/// Collect garbage before a download when the disk has less than `min_free` bytes free.
struct GcThreshold {
    min_free: u64,
    needs: Arc<dyn WeightsNeeds>,
}

/// Where `ollama pull` gets its models.
pub const DEFAULT_REGISTRY: &str = "https://registry.ollama.ai";

pub struct Weights {
    data_dir: PathBuf,
    models_dir: PathBuf,
    registry: String,
    client: reqwest::Client,
    allow_private: bool,
    /// One lock per file stem: the only writer of `<stem>.*` holds it.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Per normalized model id; kept for the server's life (one entry per catalog model).
    progress: Mutex<HashMap<String, watch::Sender<Progress>>>,
    gc: Option<GcThreshold>,
}

impl Weights {
    /// Weights under `<data_dir>/models`, pulled from [`DEFAULT_REGISTRY`]. Nothing is
    /// touched on disk until something is resolved or imported.
    pub fn new(data_dir: impl Into<PathBuf>) -> Weights {
        let data_dir = data_dir.into();
        Weights {
            models_dir: data_dir.join("models"),
            data_dir,
            registry: DEFAULT_REGISTRY.to_owned(),
            client: client(false),
            allow_private: false,
            locks: Mutex::default(),
            progress: Mutex::default(),
            gc: None,
        }
    }

    /// Before each download, if the models dir's file system has less than
    /// `min_free_bytes` available, deletes the weights `needs` says nothing needs (the
    /// `weights_gc_min_free_mib` setting). The model being fetched is always kept.
    pub fn with_gc_threshold(
        mut self,
        min_free_bytes: u64,
        needs: Arc<dyn WeightsNeeds>,
    ) -> Weights {
        self.gc = Some(GcThreshold {
            min_free: min_free_bytes,
            needs,
        });
        self
    }

    /// Another Ollama-protocol registry (a mirror, or a test server): its base URL.
    pub fn with_registry(mut self, base_url: impl Into<String>) -> Weights {
        self.registry = base_url.into().trim_end_matches('/').to_owned();
        self
    }

    /// Whether model URLs and the registry may be on loopback, link-local or private
    /// addresses (the `allow_private_model_sources` setting). Off by default: an admin's
    /// URL must not make the control plane fetch from its own network (the cloud
    /// metadata address, internal services).
    pub fn allow_private_sources(mut self, allow: bool) -> Weights {
        self.client = client(allow);
        self.allow_private = allow;
        self
    }

    pub fn models_dir(&self) -> &Path {
        &self.models_dir
    }

    /// Where a downloaded or imported model's GGUF goes; `InvalidId` for ids that could
    /// be paths.
    pub fn path_for(&self, model_id: &str) -> Result<PathBuf> {
        Ok(self
            .models_dir
            .join(format!("{}.gguf", file_stem(model_id)?)))
    }

    /// Follow a model's resolve (`done`/`total` bytes, phase). Valid before, during and
    /// after one; concurrent resolves of the model share it.
    pub fn progress(&self, model_id: &str) -> Result<watch::Receiver<Progress>> {
        let id = normalize_model_id(model_id).map_err(Error::InvalidId)?;
        Ok(self.progress_tx(&id).subscribe())
    }

    /// The catalog's "present locally": the GGUF is there and, for downloaded sources,
    /// its record says it was verified against this very source.
    pub async fn present(&self, model: &CatalogModel) -> bool {
        let Ok(id) = normalize_model_id(&model.id) else {
            return false;
        };
        match &model.source {
            ModelSource::File { path } => files::check_gguf(&id, &self.locate(path)).await.is_ok(),
            _ => self.verified(&id, &model.source).await.is_some(),
        }
    }

    /// The GGUF for `model`, downloading and verifying it first if it is not present.
    /// May take long; progress is on [`Weights::progress`].
    pub async fn resolve(&self, model: &CatalogModel) -> Result<PathBuf> {
        let id = normalize_model_id(&model.id).map_err(Error::InvalidId)?;
        let remote = match &model.source {
            ModelSource::File { path } => {
                let path = self.locate(path);
                files::check_gguf(&id, &path).await?;
                return Ok(path);
            }
            ModelSource::Url { url, sha256 } => Remote::Url { url, sha256 },
            ModelSource::Ollama { name } => Remote::Ollama { name },
        };
        let stem = file_stem(&id)?;
        let lock = self.lock(&stem);
        let _writer = lock.lock().await;
        let tx = self.progress_tx(&id);
        let mut meter = Meter::new(&tx, &id);
        if let Some(path) = self.verified(&id, &model.source).await {
            let size = tokio::fs::metadata(&path).await.ok().map(|m| m.len());
            meter.phase(Phase::Ready, size.unwrap_or(0), size);
            return Ok(path);
        }
        self.make_room(&id).await;
        match self
            .fetch(&id, &stem, &model.source, remote, &mut meter)
            .await
        {
            Ok((path, _)) => Ok(path),
            Err(e) => {
                tracing::warn!(model = %id, "weights: {e}");
                meter.failed(e.to_string());
                Err(e)
            }
        }
    }

    /// Puts a local GGUF into the models dir as model `name` and returns its catalog
    /// entry (source `File`, sizes estimated from the file; the caller may adjust them).
    pub async fn import(&self, file: &Path, name: &str) -> Result<CatalogModel> {
        let id = normalize_model_id(name).map_err(Error::InvalidId)?;
        let stem = file_stem(&id)?;
        // Checked first so a typo reads "No such file", not "weights not found".
        tokio::fs::metadata(file)
            .await
            .map_err(Error::io(format!("reading {}", file.display())))?;
        files::check_gguf(&id, file).await?;
        self.create_models_dir().await?;
        let lock = self.lock(&stem);
        let _writer = lock.lock().await;
        let (dest, partial, record) = self.paths(&stem);
        files::remove(&partial).await?;
        files::remove(&record).await?;
        let (sha256, size) = files::link_or_copy(file, &partial).await?;
        // Renamed over any older file of that name: a runner that has it open keeps
        // reading the old inode.
        files::rename(&partial, &dest).await?;
        // Re-importing the file already linked there: both names are one inode, and
        // rename(2) then leaves the source name in place.
        files::remove(&partial).await?;
        let source = ModelSource::File {
            path: format!("models/{stem}.gguf"),
        };
        files::write_sidecar(
            &record,
            &Sidecar {
                model_id: id.clone(),
                source: source.clone(),
                sha256: sha256.clone(),
                size,
            },
        )
        .await?;
        tracing::info!(model = %id, sha256, size, "imported {}", file.display());
        Ok(imported_entry(id, source, size))
    }

    /// The GGUF path if its record matches this model and source and the file is whole.
    async fn verified(&self, id: &str, source: &ModelSource) -> Option<PathBuf> {
        let (dest, _, record) = self.paths(&file_stem(id).ok()?);
        let sidecar = files::read_sidecar(&record).await?;
        let meta = tokio::fs::metadata(&dest).await.ok()?;
        let digest_ok = match source {
            ModelSource::Url { sha256, .. } => {
                parse_digest(sha256).is_ok_and(|d| d == sidecar.sha256)
            }
            // The registry names the digest only in the manifest; the record has the one
            // the file was verified against when it was pulled.
            _ => true,
        };
        (sidecar.model_id == id
            && &sidecar.source == source
            && digest_ok
            && meta.len() == sidecar.size)
            .then_some(dest)
    }

    async fn fetch(
        &self,
        id: &str,
        stem: &str,
        source: &ModelSource,
        remote: Remote<'_>,
        meter: &mut Meter<'_>,
    ) -> Result<(PathBuf, u64)> {
        let invalid = |reason: String| Error::InvalidSource {
            model: id.to_owned(),
            reason,
        };
        let (url, sha256, size) = match remote {
            Remote::Url { url, sha256 } => {
                self.check_target(url)?;
                (url.to_owned(), parse_digest(sha256).map_err(invalid)?, None)
            }
            Remote::Ollama { name } => {
                let reference = OllamaRef::parse(name).map_err(invalid)?;
                self.check_target(&self.registry)?;
                meter.phase(Phase::Manifest, 0, None);
                let layer =
                    ollama::model_layer(&self.client, &self.registry, name, &reference).await?;
                (
                    reference.blob_url(&self.registry, &layer.sha256),
                    layer.sha256,
                    Some(layer.size),
                )
            }
        };
        self.create_models_dir().await?;
        let (dest, partial, record) = self.paths(stem);
        // From here on, a GGUF without a matching record is unverified.
        files::remove(&record).await?;
        let sidecar = |size| Sidecar {
            model_id: id.to_owned(),
            source: source.clone(),
            sha256: sha256.clone(),
            size,
        };

        // A GGUF left without its record (a crash between rename and record, or an
        // entry edited back): hashing it is much cheaper than downloading it again.
        if let Ok(meta) = tokio::fs::metadata(&dest).await {
            meter.phase(Phase::Verifying, 0, Some(meta.len()));
            let (hasher, len) = files::hash_file(&dest, None).await?;
            if files::hex(hasher) == sha256 {
                files::check_gguf(id, &dest).await?;
                meter.phase(Phase::Ready, len, Some(len));
                files::write_sidecar(&record, &sidecar(len)).await?;
                tracing::info!(model = id, "weights already on disk, SHA-256 verified");
                return Ok((dest, len));
            }
        }

        tracing::info!(model = id, %url, "downloading weights");
        let started = std::time::Instant::now();
        Download {
            client: &self.client,
            url: &url,
            partial: &partial,
            model: id,
            sha256: &sha256,
            size,
        }
        .run(meter)
        .await?;
        if let Err(e) = files::check_gguf(id, &partial).await {
            files::remove(&partial).await?;
            return Err(e);
        }
        let len = tokio::fs::metadata(&partial)
            .await
            .map_err(Error::io(format!("reading {}", partial.display())))?
            .len();
        files::rename(&partial, &dest).await?;
        // Ready is announced before the record makes the model `present`, so whoever sees
        // it present and then reads the progress never sees a stale "verifying".
        meter.phase(Phase::Ready, len, Some(len));
        files::write_sidecar(&record, &sidecar(len)).await?;
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            model = id,
            "weights downloaded and verified: {:.1} MiB in {secs:.1} s",
            len as f64 / (1024.0 * 1024.0)
        );
        Ok((dest, len))
    }

    /// Deletes the weights no catalog entry or instance needs (see [`gc`]); with `dry_run`
    /// only says what it would free. `in_use`: model ids of the instances not deleted.
    /// Weights a download or import is writing right now (their lock is held) are left.
    pub async fn collect_garbage(
        &self,
        catalog: &[CatalogModel],
        in_use: &[String],
        dry_run: bool,
    ) -> Result<Vec<gc::Freed>> {
        let needed = gc::needed_stems(&self.models_dir, &self.data_dir, catalog, in_use);
        let on_disk = self.weights_on_disk().await?;
        let mut freed = Vec::new();
        for w in gc::unneeded(&on_disk, &needed) {
            let (gguf, _, record) = self.paths(&w.stem);
            if !dry_run {
                let lock = self.lock(&w.stem);
                let Ok(_writer) = lock.try_lock() else {
                    continue;
                };
                // The record first: a GGUF without one is never taken as verified.
                files::remove(&record).await?;
                files::remove(&gguf).await?;
                tracing::info!(stem = %w.stem, bytes = w.bytes, "weights collected");
            }
            freed.push(gc::Freed {
                stem: w.stem,
                path: gguf,
                bytes: w.bytes,
            });
        }
        Ok(freed)
    }

    /// The disk-space threshold's collection. Failing to collect does not fail the
    /// download (that may still fit); it is logged.
    async fn make_room(&self, fetching: &str) {
        let Some(gc) = &self.gc else { return };
        let probe = if self.models_dir.exists() {
            &self.models_dir
        } else {
            &self.data_dir
        };
        let free = match files::available_bytes(probe) {
            Ok(free) if free >= gc.min_free => return,
            Ok(free) => free,
            Err(e) => {
                tracing::warn!("weights gc: free space of {}: {e}", probe.display());
                return;
            }
        };
        let (catalog, mut in_use) = match gc.needs.needs().await {
            Ok(needs) => needs,
            Err(e) => {
                tracing::warn!("weights gc: what is needed: {e}");
                return;
            }
        };
        in_use.push(fetching.to_owned());
        match self.collect_garbage(&catalog, &in_use, false).await {
            Ok(freed) => tracing::info!(
                free,
                min_free = gc.min_free,
                freed = freed.iter().map(|f| f.bytes).sum::<u64>(),
                files = freed.len(),
                "weights gc: below the free-space threshold before downloading {fetching}"
            ),
            Err(e) => tracing::warn!("weights gc: {e}"),
        }
    }

    /// Every `<stem>.gguf` in the models dir with its size (none when there is no dir).
    async fn weights_on_disk(&self) -> Result<Vec<gc::OnDisk>> {
        let ctx = || format!("listing {}", self.models_dir.display());
        let mut dir = match tokio::fs::read_dir(&self.models_dir).await {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(ctx())(e)),
        };
        let mut found = Vec::new();
        while let Some(entry) = dir.next_entry().await.map_err(Error::io(ctx()))? {
            let path = entry.path();
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if path.extension().is_none_or(|e| e != "gguf") {
                continue;
            }
            let meta = entry.metadata().await.map_err(Error::io(ctx()))?;
            if meta.is_file() {
                found.push(gc::OnDisk {
                    stem: stem.to_owned(),
                    bytes: meta.len(),
                });
            }
        }
        found.sort_by(|a, b| a.stem.cmp(&b.stem));
        Ok(found)
    }

    /// `<stem>.gguf`, `<stem>.partial`, `<stem>.json`. No two stems share a file: the
    /// suffixes differ in their last characters.
    fn paths(&self, stem: &str) -> (PathBuf, PathBuf, PathBuf) {
        let at = |suffix: &str| self.models_dir.join(format!("{stem}.{suffix}"));
        (at("gguf"), at("partial"), at("json"))
    }

    /// A catalog `File` path: absolute, or relative to the data dir.
    fn locate(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.data_dir.join(path)
        }
    }

    /// IP literals never reach the client's guarded resolver: they are checked here.
    fn check_target(&self, url: &str) -> Result<()> {
        if self.allow_private {
            return Ok(());
        }
        net::check_url(url).map_err(|refused| Error::Refused {
            url: url.to_owned(),
            reason: refused.to_string(),
        })
    }

    /// Private to the server's user (weights may be licensed or fine-tuned in-house).
    async fn create_models_dir(&self) -> Result<()> {
        let dir = self.models_dir.clone();
        files::blocking(move || {
            corral_guard::files::create_private_dir(&dir)
                .map_err(Error::io(format!("creating {}", dir.display())))
        })
        .await
    }

    fn lock(&self, stem: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().expect("weights lock map poisoned");
        locks.entry(stem.to_owned()).or_default().clone()
    }

    fn progress_tx(&self, id: &str) -> watch::Sender<Progress> {
        let mut map = self.progress.lock().expect("progress map poisoned");
        map.entry(id.to_owned())
            .or_insert_with(|| watch::Sender::new(Progress::IDLE))
            .clone()
    }
}

/// The weights client; with `allow_private` false, it connects only to public addresses
/// (checked after DNS resolution, on every redirect too).
fn client(allow_private: bool) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .user_agent(concat!("corral/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        // No overall timeout (a pull may take an hour); a stalled transfer is retried.
        .read_timeout(Duration::from_secs(60));
    net::guard(builder, allow_private)
        .build()
        .expect("the HTTP client builds with the compiled-in TLS roots")
}

/// The sources `resolve` downloads, borrowed from the catalog entry.
enum Remote<'a> {
    Url { url: &'a str, sha256: &'a str },
    Ollama { name: &'a str },
}

/// A catalog entry for an imported GGUF. `llama.cpp` maps the whole file and adds a
/// KV cache and buffers, hence the memory estimate; the load time grows with the size.
fn imported_entry(id: String, source: ModelSource, size: u64) -> CatalogModel {
    const MIB: u64 = 1 << 20;
    let (family, tag) = id.split_once(':').unwrap_or((&id, "latest"));
    CatalogModel {
        family: family.to_owned(),
        size: tag.to_ascii_uppercase(),
        cpu_supported: true,
        gpu_supported: true,
        memory_required: u32::try_from(size.div_ceil(MIB) * 5 / 4 + 256).unwrap_or(u32::MAX),
        expected_deploy_seconds: u32::try_from(5 + size / (500 * MIB)).unwrap_or(u32::MAX),
        source,
        weights_bytes: Some(size),
        builtin: false,
        id,
    }
}

/// The reconciler fetches weights through this: provisioning an instance resolves (and,
/// for registry or URL sources, downloads and verifies) its model first.
#[async_trait::async_trait]
impl corral_control::WeightsResolver for Weights {
    async fn resolve(
        &self,
        model: &CatalogModel,
    ) -> std::result::Result<PathBuf, corral_control::WeightsError> {
        Weights::resolve(self, model).await.map_err(|e| match e {
            Error::Missing { model, path } => corral_control::WeightsError::Missing { model, path },
            e => corral_control::WeightsError::Fetch(e.to_string()),
        })
    }
}

//! Turning a catalog entry into a GGUF on this machine (the `provisioning` state).
//! `Control` takes any `WeightsResolver`, so the reconciler does not care whether the
//! weights were imported, downloaded from a URL or pulled from the Ollama registry.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use corral_core::{CatalogModel, ModelSource};

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("weights of {model} not found at {}: import the GGUF or fix the catalog entry", path.display())]
    Missing { model: String, path: PathBuf },
    #[error("weights of {model} come from {kind}, which this server cannot fetch")]
    Unsupported { model: String, kind: &'static str },
    /// A fetch that failed (registry, network, digest, disk): the resolver's own message.
    #[error("{0}")]
    Fetch(String),
}

#[async_trait]
pub trait WeightsResolver: Send + Sync + 'static {
    /// The local path of the model's GGUF, fetching it first if needed. May take long
    /// (a download); the reconciler calls it from the instance's own task.
    async fn resolve(&self, model: &CatalogModel) -> Result<PathBuf, WeightsError>;
}

/// Resolves `ModelSource::File` only: absolute, or relative to the data dir.
#[derive(Debug, Clone)]
pub struct FileWeights {
    data_dir: PathBuf,
}

impl FileWeights {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        FileWeights {
            data_dir: data_dir.into(),
        }
    }

    fn locate(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.data_dir.join(path)
        }
    }
}

#[async_trait]
impl WeightsResolver for FileWeights {
    async fn resolve(&self, model: &CatalogModel) -> Result<PathBuf, WeightsError> {
        let path = match &model.source {
            ModelSource::File { path } => self.locate(path),
            ModelSource::Url { .. } => return Err(unsupported(model, "a URL")),
            ModelSource::Ollama { .. } => return Err(unsupported(model, "the Ollama registry")),
        };
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(path),
            _ => Err(WeightsError::Missing {
                model: model.id.clone(),
                path,
            }),
        }
    }
}

fn unsupported(model: &CatalogModel, kind: &'static str) -> WeightsError {
    WeightsError::Unsupported {
        model: model.id.clone(),
        kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(source: ModelSource) -> CatalogModel {
        CatalogModel {
            id: "m:1b".into(),
            family: "M".into(),
            size: "1B".into(),
            cpu_supported: true,
            gpu_supported: false,
            memory_required: 512,
            expected_deploy_seconds: 5,
            source,
            weights_bytes: None,
            builtin: false,
        }
    }

    #[tokio::test]
    async fn files_relative_to_the_data_dir_or_absolute() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("models")).unwrap();
        let gguf = dir.path().join("models/m.gguf");
        std::fs::write(&gguf, b"GGUF").unwrap();
        let weights = FileWeights::new(dir.path());
        let rel = model(ModelSource::File {
            path: "models/m.gguf".into(),
        });
        assert_eq!(weights.resolve(&rel).await.unwrap(), gguf);
        let abs = model(ModelSource::File {
            path: gguf.display().to_string(),
        });
        assert_eq!(weights.resolve(&abs).await.unwrap(), gguf);
    }

    #[tokio::test]
    async fn explains_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let weights = FileWeights::new(dir.path());
        let err = weights
            .resolve(&model(ModelSource::File {
                path: "models/none.gguf".into(),
            }))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not found") && err.contains("none.gguf"),
            "{err}"
        );
        let err = weights
            .resolve(&model(ModelSource::Url {
                url: "https://example.test/m.gguf".into(),
                sha256: "00".into(),
            }))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("a URL"), "{err}");
    }
}

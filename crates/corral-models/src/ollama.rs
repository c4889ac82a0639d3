//! The Ollama registry's side of a pull: the OCI-style manifest names the GGUF blob.

use reqwest::StatusCode;
use reqwest::header::ACCEPT;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::name::{OllamaRef, parse_digest};

const MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MODEL_LAYER: &str = "application/vnd.ollama.image.model";
/// Real manifests are about a kilobyte; anything near this is not one.
const MANIFEST_MAX: usize = 1 << 20;

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Layer {
    media_type: String,
    digest: String,
    size: u64,
}

/// The GGUF blob of a model: its digest (64 lowercase hex) and size.
pub(crate) struct ModelLayer {
    pub sha256: String,
    pub size: u64,
}

pub(crate) async fn model_layer(
    client: &reqwest::Client,
    registry: &str,
    name: &str,
    reference: &OllamaRef,
) -> Result<ModelLayer> {
    let url = reference.manifest_url(registry);
    let mut response = client
        .get(&url)
        .header(ACCEPT, MANIFEST_V2)
        .send()
        .await
        .map_err(|e| Error::http(&url, &e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(Error::Status {
            url,
            status: status.as_u16(),
            hint: if status == StatusCode::NOT_FOUND {
                ": the registry has no such model or tag"
            } else {
                ""
            },
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| Error::http(&url, &e))? {
        body.extend_from_slice(&chunk);
        if body.len() > MANIFEST_MAX {
            return Err(manifest_err(name, "is too large to be a manifest"));
        }
    }
    let manifest: Manifest = serde_json::from_slice(&body)
        .map_err(|e| manifest_err(name, &format!("is not valid JSON ({e})")))?;
    let layer = manifest
        .layers
        .into_iter()
        .find(|l| l.media_type == MODEL_LAYER)
        .ok_or_else(|| manifest_err(name, &format!("has no {MODEL_LAYER} layer")))?;
    let sha256 = parse_digest(&layer.digest)
        .map_err(|e| manifest_err(name, &format!("has a bad model digest: {e}")))?;
    Ok(ModelLayer {
        sha256,
        size: layer.size,
    })
}

fn manifest_err(name: &str, reason: &str) -> Error {
    Error::Manifest {
        name: name.to_owned(),
        reason: reason.to_owned(),
    }
}

//! Garbage collection of local weights: which GGUFs under the models dir no catalog
//! entry or instance needs. The decision is pure ([`needed_stems`], [`unneeded`]); the
//! directory listing and the deletions are [`crate::Weights::collect_garbage`]'s.
//!
//! Needed are: the GGUF a catalog `File` source points at (an import: the only copy,
//! nothing could fetch it again) and the weights of every model an instance that is not
//! deleted uses (a sleeping or stopped one starts again from them). Weights of a registry
//! or URL model no instance uses are not needed: a later deploy downloads them again.
//! `.partial` files are never collected: they are downloads in progress or to resume.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use corral_core::{CatalogModel, ModelSource};
use serde::Serialize;

use crate::name::file_stem;

/// One model's weights on disk, found by the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnDisk {
    /// `<stem>` of `<stem>.gguf`.
    pub stem: String,
    /// Size of the GGUF.
    pub bytes: u64,
}

/// What a collection frees (or, dry, would free).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Freed {
    pub stem: String,
    /// The GGUF (its JSON record goes with it).
    pub path: PathBuf,
    pub bytes: u64,
}

/// The stems under `models_dir` that something needs. `in_use`: the model ids of the
/// instances that are not deleted.
pub fn needed_stems(
    models_dir: &Path,
    data_dir: &Path,
    catalog: &[CatalogModel],
    in_use: &[String],
) -> BTreeSet<String> {
    let imported = catalog.iter().filter_map(|m| match &m.source {
        ModelSource::File { path } => {
            let path = Path::new(path);
            let path = if path.is_absolute() {
                path.to_owned()
            } else {
                data_dir.join(path)
            };
            (path.parent() == Some(models_dir) && path.extension().is_some_and(|e| e == "gguf"))
                .then(|| path.file_stem()?.to_str().map(str::to_owned))
                .flatten()
        }
        ModelSource::Url { .. } | ModelSource::Ollama { .. } => None,
    });
    let used = in_use.iter().filter_map(|id| file_stem(id).ok());
    imported.chain(used).collect()
}

/// The weights on disk that nothing needs, in the listing's order.
pub fn unneeded(on_disk: &[OnDisk], needed: &BTreeSet<String>) -> Vec<OnDisk> {
    on_disk
        .iter()
        .filter(|w| !needed.contains(&w.stem))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(id: &str, source: ModelSource) -> CatalogModel {
        CatalogModel {
            id: id.into(),
            family: "test".into(),
            size: "1B".into(),
            cpu_supported: true,
            gpu_supported: false,
            memory_required: 1024,
            expected_deploy_seconds: 5,
            source,
            weights_bytes: None,
            builtin: false,
        }
    }

    fn disk(stems: &[&str]) -> Vec<OnDisk> {
        stems
            .iter()
            .map(|s| OnDisk {
                stem: (*s).into(),
                bytes: 10,
            })
            .collect()
    }

    #[test]
    fn imports_and_models_in_use_are_kept_registry_copies_are_not() {
        let data = Path::new("/data");
        let models = data.join("models");
        let catalog = vec![
            // Imported: relative to the data dir, and absolute.
            model(
                "mine:1b",
                ModelSource::File {
                    path: "models/mine_1b.gguf".into(),
                },
            ),
            model(
                "abs:1b",
                ModelSource::File {
                    path: "/data/models/abs_1b.gguf".into(),
                },
            ),
            // A file elsewhere names nothing under the models dir.
            model(
                "other:1b",
                ModelSource::File {
                    path: "/elsewhere/llama2_7b.gguf".into(),
                },
            ),
            model(
                "llama2:7b",
                ModelSource::Ollama {
                    name: "library/llama2:7b".into(),
                },
            ),
            model(
                "phi3:mini",
                ModelSource::Ollama {
                    name: "phi3:mini".into(),
                },
            ),
        ];
        let needed = needed_stems(&models, data, &catalog, &["phi3:mini".into()]);
        let on_disk = disk(&["mine_1b", "abs_1b", "llama2_7b", "phi3_mini", "gone_3b"]);
        let freed: Vec<_> = unneeded(&on_disk, &needed)
            .into_iter()
            .map(|w| w.stem)
            .collect();
        // llama2 (in the catalog, re-downloadable, unused) and a model no longer in the
        // catalog at all.
        assert_eq!(freed, ["llama2_7b", "gone_3b"]);
    }

    #[test]
    fn nothing_on_disk_frees_nothing() {
        assert!(unneeded(&[], &BTreeSet::new()).is_empty());
    }
}

//! Names that end up in file names and URLs: model ids, Ollama references, digests.
//! Everything is validated here so that nothing a user typed reaches a path or a URL raw.

use corral_core::catalog::normalize_model_id;

use crate::error::{Error, Result};

/// The file stem for a model id: `llama2:7b` → `llama2_7b`. `normalize_model_id` already
/// limits ids to `[a-z0-9._-]` plus one ':', with no leading '.', '-' or ':' and no "..",
/// so after replacing the ':' the stem cannot name a directory or leave the models dir.
pub fn file_stem(model_id: &str) -> Result<String> {
    let id = normalize_model_id(model_id).map_err(Error::InvalidId)?;
    Ok(id.replace(':', "_"))
}

/// `library/llama2:7b` split into what the registry's URLs need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OllamaRef {
    pub namespace: String,
    pub model: String,
    pub tag: String,
}

impl OllamaRef {
    /// Accepts `model`, `model:tag`, `namespace/model` and `namespace/model:tag`; the
    /// namespace defaults to `library` and the tag to `latest`, as with `ollama pull`.
    pub fn parse(name: &str) -> Result<OllamaRef, String> {
        let (path, tag) = match name.rsplit_once(':') {
            Some((path, tag)) => (path, tag),
            None => (name, "latest"),
        };
        let (namespace, model) = match path.split_once('/') {
            Some((ns, model)) => (ns, model),
            None => ("library", path),
        };
        for (what, part, upper_ok) in [
            ("namespace", namespace, false),
            ("model name", model, false),
            ("tag", tag, true),
        ] {
            let chars_ok = part.chars().all(|c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || matches!(c, '.' | '_' | '-')
                    || (upper_ok && c.is_ascii_uppercase())
            });
            if part.is_empty()
                || part.len() > 128
                || !chars_ok
                || part.starts_with(['.', '-'])
                || part.contains("..")
            {
                return Err(format!(
                    "{name:?} has an invalid {what} {part:?} (expected [namespace/]model[:tag], \
                     e.g. library/llama2:7b)"
                ));
            }
        }
        Ok(OllamaRef {
            namespace: namespace.to_owned(),
            model: model.to_owned(),
            tag: tag.to_owned(),
        })
    }

    pub fn manifest_url(&self, registry: &str) -> String {
        format!(
            "{registry}/v2/{}/{}/manifests/{}",
            self.namespace, self.model, self.tag
        )
    }

    /// `digest` must have been checked by [`parse_digest`].
    pub fn blob_url(&self, registry: &str, digest: &str) -> String {
        format!(
            "{registry}/v2/{}/{}/blobs/sha256:{digest}",
            self.namespace, self.model
        )
    }
}

/// A SHA-256 as catalogs and registries write it (`sha256:ABC…` or bare hex, any case)
/// → 64 lowercase hex digits, the form files are compared in.
pub fn parse_digest(raw: &str) -> Result<String, String> {
    let hex = raw.trim();
    let hex = hex.strip_prefix("sha256:").unwrap_or(hex);
    if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err(format!(
            "{raw:?} is not a SHA-256 digest (64 hex digits, optionally after 'sha256:')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_are_safe_file_names() {
        assert_eq!(file_stem("llama2:7b").unwrap(), "llama2_7b");
        assert_eq!(
            file_stem(" Mistral:7B-Instruct ").unwrap(),
            "mistral_7b-instruct"
        );
        assert_eq!(file_stem("smollm2-135m").unwrap(), "smollm2-135m");
        for bad in [
            "",
            "../x",
            "a/b",
            "/etc/passwd",
            "..",
            ".hidden",
            "a:b:c",
            "x\0y",
            "a\\b",
            "https://x",
        ] {
            assert!(
                matches!(file_stem(bad), Err(Error::InvalidId(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ollama_references() {
        let r = OllamaRef::parse("library/llama2:7b").unwrap();
        assert_eq!(
            (r.namespace.as_str(), r.model.as_str(), r.tag.as_str()),
            ("library", "llama2", "7b")
        );
        let r = OllamaRef::parse("mistral").unwrap();
        assert_eq!(
            (r.namespace.as_str(), r.model.as_str(), r.tag.as_str()),
            ("library", "mistral", "latest")
        );
        let r = OllamaRef::parse("someone/my-model:Q4_K_M").unwrap();
        assert_eq!(r.tag, "Q4_K_M");
        assert_eq!(
            r.manifest_url("http://r"),
            "http://r/v2/someone/my-model/manifests/Q4_K_M"
        );
        assert_eq!(
            r.blob_url("http://r", "ab"),
            "http://r/v2/someone/my-model/blobs/sha256:ab"
        );
        for bad in [
            "",
            "a/b/c",
            "../x",
            "library/../x",
            "x:",
            ":7b",
            "Llama2",
            "a b",
            "x:../y",
            "x?y",
            "x#y",
            "library/.x",
        ] {
            assert!(OllamaRef::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn digests() {
        let hex = "B179C9523D0E6A0F98A330C7562B682750A6F8C8C15E5BC70EA373728110DB53";
        let want = hex.to_ascii_lowercase();
        assert_eq!(parse_digest(hex).unwrap(), want);
        assert_eq!(parse_digest(&format!("sha256:{want}")).unwrap(), want);
        for bad in ["", "sha256:", "abc", &format!("{want}0"), &"g".repeat(64)] {
            assert!(parse_digest(bad).is_err(), "{bad:?}");
        }
    }
}

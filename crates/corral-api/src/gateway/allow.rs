//! Which replica paths `/i/{id}/{path}` forwards: the inference and read endpoints of the
//! Ollama API and of the OpenAI API under `v1/`, the same for every runtime. Anything
//! else is 403, so that an instance's owner cannot use the runtime's own management API
//! (Ollama's `api/pull`, `api/push`, `api/create`, `api/copy`, `api/delete`) to pull
//! models outside the catalog or delete a model other instances share.

/// Ollama's inference and read endpoints, and its root ("Ollama is running", which
/// clients read to check the server is up).
const OLLAMA: &[&str] = &[
    "",
    "api/generate",
    "api/chat",
    "api/embed",
    "api/embeddings",
    "api/show",
    "api/tags",
    "api/ps",
    "api/version",
];

/// OpenAI's, under `v1/` (`v1/models/{model}` is checked apart).
const OPENAI: &[&str] = &[
    "v1/chat/completions",
    "v1/completions",
    "v1/embeddings",
    "v1/models",
];

/// Whether `rest` (the replica path, without its leading `/`) may be forwarded. Exact
/// matches only, so that no `..`, empty or encoded segment can lead elsewhere once the
/// replica normalises the path.
pub fn forwardable(rest: &str) -> bool {
    if OLLAMA.contains(&rest) || OPENAI.contains(&rest) {
        return true;
    }
    // `v1/models/{model}`: a model name such as `smollm2:135m` or `library/llama2:7b`.
    rest.strip_prefix("v1/models/").is_some_and(|model| {
        !model.is_empty()
            && model.split('/').all(|segment| {
                !segment.is_empty()
                    && segment != "."
                    && segment != ".."
                    && segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
            })
    })
}

#[cfg(test)]
mod tests {
    use super::forwardable;

    #[test]
    fn inference_and_read_paths_pass() {
        for path in [
            "",
            "api/generate",
            "api/chat",
            "api/embed",
            "api/embeddings",
            "api/show",
            "api/tags",
            "api/ps",
            "api/version",
            "v1/chat/completions",
            "v1/completions",
            "v1/embeddings",
            "v1/models",
            "v1/models/smollm2:135m",
            "v1/models/library/llama2:7b",
        ] {
            assert!(forwardable(path), "{path}");
        }
    }

    #[test]
    fn management_and_unknown_paths_do_not() {
        for path in [
            "/",
            "api/pull",
            "api/push",
            "api/create",
            "api/copy",
            "api/delete",
            "api/blobs/sha256:abc",
            "api/generate/",
            "API/generate",
            "api/chat/../pull",
            "v1/models/",
            "v1/models/../../api/pull",
            "v1/models/a//b",
            "v1/models/%2e%2e/api/pull",
            "v1/files",
            "v1/fine_tuning/jobs",
            "health",
        ] {
            assert!(!forwardable(path), "{path}");
        }
    }
}

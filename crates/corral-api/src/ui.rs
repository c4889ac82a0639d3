//! The web UI: the files of `ui/dist` (built by `scripts/build-ui.sh`), served by the
//! router's fallback.
//!
//! Release builds embed the files in the binary; debug builds read them from `ui/dist` at
//! run time (rust-embed's behaviour), so `npm run build` shows up without recompiling.
//! Without `ui/dist` the crate still builds, and the UI's paths answer a page that says how
//! to build it.
//!
//! * API paths (`/api/...` and the gateway's) never get the UI: they keep the JSON 404.
//! * Any other GET that is not a file is a client-side route: it gets `index.html`.
//! * Vite's hashed `assets/` are cached for a year; `index.html` is revalidated (ETag).

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rust_embed::Embed;
use std::borrow::Cow;

#[derive(Embed)]
#[folder = "../../ui/dist/"]
#[allow_missing = true]
struct Dist;

/// Paths that belong to programs, not to the browser UI: an unknown one is a JSON 404.
const API_PREFIXES: &[&str] = &["/api", "/v1", "/ollama", "/i", "/metrics"];

/// Extensions of files that a missing path must not be answered with `index.html` for.
const FILE_EXTENSIONS: &[&str] = &[
    "js",
    "mjs",
    "css",
    "map",
    "json",
    "png",
    "jpg",
    "jpeg",
    "gif",
    "svg",
    "ico",
    "webp",
    "woff",
    "woff2",
    "ttf",
    "txt",
    "xml",
    "webmanifest",
    "wasm",
];

/// Vite names these files after their content's hash, so they never change.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `index.html` and other unhashed files: always revalidated, cheap with the ETag.
const REVALIDATE: &str = "no-cache";

/// For the HTML documents: scripts and connections only to this origin; inline styles
/// for MUI/Emotion; `data:` images for the MFA QR code; no framing; no referrer, since
/// verification and reset links carry their token in the query string.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; font-src 'self' data:; connect-src 'self'; \
                   object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'";

/// One file of the UI.
struct Asset {
    data: Cow<'static, [u8]>,
    sha256: [u8; 32],
}

fn embedded(path: &str) -> Option<Asset> {
    Dist::get(path).map(|f| Asset {
        sha256: f.metadata.sha256_hash(),
        data: f.data,
    })
}

/// The router's fallback: the UI for browser paths, the JSON 404 for API paths and for
/// methods other than GET and HEAD.
pub(crate) async fn fallback(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if !matches!(method, Method::GET | Method::HEAD) || is_api_path(uri.path()) {
        return super::not_found(uri).await.into_response();
    }
    respond(uri.path(), &headers, embedded)
}

fn is_api_path(path: &str) -> bool {
    API_PREFIXES.iter().any(|prefix| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

fn respond(path: &str, headers: &HeaderMap, lookup: impl Fn(&str) -> Option<Asset>) -> Response {
    let rel = path.trim_start_matches('/');
    let traversal = rel.split('/').any(|seg| seg == ".." || seg == ".");
    if !rel.is_empty() && !traversal {
        if let Some(asset) = lookup(rel) {
            return file(rel, asset, headers);
        }
        if rel.starts_with("assets/") || looks_like_file(rel) {
            // A stale tab asking for a chunk of a previous build: answering HTML would
            // only produce a confusing script error.
            return (
                StatusCode::NOT_FOUND,
                [(header::CACHE_CONTROL, "no-store")],
                "not found",
            )
                .into_response();
        }
    }
    match lookup("index.html") {
        Some(index) => file("index.html", index, headers),
        None => not_built(),
    }
}

fn looks_like_file(rel: &str) -> bool {
    let last = rel.rsplit('/').next().unwrap_or(rel);
    last.rsplit_once('.')
        .is_some_and(|(_, ext)| FILE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
}

fn file(rel: &str, asset: Asset, request: &HeaderMap) -> Response {
    let etag = format!("\"{}\"", hex(&asset.sha256[..16]));
    let cache = if rel.starts_with("assets/") {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    let html = rel.ends_with(".html");
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    if html {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    if let Ok(v) = HeaderValue::from_str(&content_type(rel)) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    (headers, asset.data.into_owned()).into_response()
}

fn content_type(rel: &str) -> String {
    let mime = mime_guess::from_path(rel).first_or_octet_stream();
    let text = mime.type_() == mime_guess::mime::TEXT
        || matches!(
            mime.subtype().as_str(),
            "javascript" | "json" | "manifest+json"
        )
        || mime.suffix().is_some_and(|s| s.as_str() == "xml");
    if text && mime.get_param("charset").is_none() {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const NOT_BUILT: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Corral: UI not built</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem; line-height: 1.5; color: #1d2733; }
code { background: #eef1f5; padding: 0.1rem 0.3rem; border-radius: 4px; }
</style>
</head>
<body>
<h1>UI not built</h1>
<p>This <code>corral</code> binary was compiled without the web UI (<code>ui/dist</code> was missing).
Run <code>make run</code>, or <code>scripts/build-ui.sh</code> and then build <code>corral</code> again.</p>
<p>The API works without it: <a href="/api/health">/api/health</a>, <a href="/api/openapi.json">/api/openapi.json</a>.</p>
<p lang="ja">Web UI がビルドされていません。<code>make run</code> を実行するか、<code>scripts/build-ui.sh</code> の後に <code>corral</code> を再ビルドしてください。</p>
</body>
</html>
"#;

fn not_built() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        NOT_BUILT,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    fn fake(path: &str) -> Option<Asset> {
        let data: &'static [u8] = match path {
            "index.html" => b"<!doctype html><div id=root></div>",
            "assets/index-abc123.js" => b"console.log(1)",
            "favicon.svg" => b"<svg/>",
            _ => return None,
        };
        Some(Asset {
            data: Cow::Borrowed(data),
            sha256: [path.len() as u8; 32],
        })
    }

    fn none(_: &str) -> Option<Asset> {
        None
    }

    async fn body(r: Response) -> String {
        String::from_utf8(to_bytes(r.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap()
    }

    fn get(r: &Response, name: header::HeaderName) -> &str {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    #[test]
    fn api_paths_are_recognised() {
        for p in [
            "/api",
            "/api/",
            "/api/nope",
            "/v1/models",
            "/ollama/api/tags",
            "/i/x/y",
            "/metrics",
        ] {
            assert!(is_api_path(p), "{p}");
        }
        for p in [
            "/",
            "/login",
            "/apis",
            "/india",
            "/verify",
            "/admin/users",
            "/v10",
        ] {
            assert!(!is_api_path(p), "{p}");
        }
    }

    #[tokio::test]
    async fn hashed_assets_are_immutable_with_their_type() {
        let r = respond("/assets/index-abc123.js", &HeaderMap::new(), fake);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(get(&r, header::CACHE_CONTROL), IMMUTABLE);
        assert!(get(&r, header::CONTENT_TYPE).contains("javascript"));
        assert!(get(&r, header::CONTENT_TYPE).ends_with("charset=utf-8"));
        assert_eq!(get(&r, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(body(r).await, "console.log(1)");
        let svg = respond("/favicon.svg", &HeaderMap::new(), fake);
        assert!(get(&svg, header::CONTENT_TYPE).starts_with("image/svg+xml"));
        assert_eq!(get(&svg, header::CACHE_CONTROL), REVALIDATE);
    }

    #[tokio::test]
    async fn client_routes_get_index_html_with_security_headers() {
        for path in ["/", "/login", "/verify", "/admin/users", "/deep/link/x"] {
            let r = respond(path, &HeaderMap::new(), fake);
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert_eq!(get(&r, header::CONTENT_TYPE), "text/html; charset=utf-8");
            assert_eq!(get(&r, header::CACHE_CONTROL), REVALIDATE);
            assert!(get(&r, header::CONTENT_SECURITY_POLICY).contains("frame-ancestors 'none'"));
            assert_eq!(get(&r, header::REFERRER_POLICY), "no-referrer");
            assert!(body(r).await.contains("id=root"));
        }
    }

    #[tokio::test]
    async fn missing_files_are_404_not_html() {
        for path in ["/assets/old-chunk.js", "/robots.txt", "/x/y.css"] {
            let r = respond(path, &HeaderMap::new(), fake);
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        }
        // Dots that are not file extensions are client routes.
        let r = respond("/models/llama3.2", &HeaderMap::new(), fake);
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn traversal_is_never_looked_up() {
        for path in [
            "/assets/../index.html",
            "/../../etc/passwd",
            "/./favicon.svg",
        ] {
            let r = respond(path, &HeaderMap::new(), |p| {
                assert!(p == "index.html", "looked up {p}");
                fake(p)
            });
            // Only ever the app's own index.html.
            assert_eq!(r.status(), StatusCode::OK);
            assert!(body(r).await.contains("id=root"));
        }
    }

    #[tokio::test]
    async fn etag_revalidation_answers_304() {
        let first = respond("/", &HeaderMap::new(), fake);
        let etag = get(&first, header::ETAG).to_string();
        assert!(etag.starts_with('"') && etag.len() == 34);
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&etag).unwrap());
        let again = respond("/login", &h, fake);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(body(again).await.is_empty());
    }

    #[tokio::test]
    async fn without_a_build_the_ui_paths_explain_how_to_build_it() {
        let r = respond("/login", &HeaderMap::new(), none);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get(&r, header::CACHE_CONTROL), "no-store");
        let text = body(r).await;
        assert!(text.contains("UI not built") && text.contains("scripts/build-ui.sh"));
    }

    #[tokio::test]
    async fn api_paths_and_other_methods_keep_the_json_404() {
        for (method, path) in [
            (Method::GET, "/api/nope"),
            (Method::GET, "/v1/nope"),
            (Method::POST, "/login"),
            (Method::DELETE, "/"),
        ] {
            let r = fallback(method.clone(), path.parse().unwrap(), HeaderMap::new()).await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {path}");
            assert!(get(&r, header::CONTENT_TYPE).starts_with("application/json"));
            assert!(body(r).await.contains("\"not_found\""));
        }
    }
}

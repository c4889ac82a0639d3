//! The weights manager against a real HTTP server on 127.0.0.1 that speaks the Ollama
//! registry protocol (manifest + blob) and serves a plain GGUF URL, with Range support.
//! The payload is the demo model when `scripts/fetch-model.sh` has fetched it, else a
//! generated file with the GGUF magic.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use corral_core::{CatalogModel, ModelSource};
use corral_models::{Error, Phase, Weights};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

struct Fixture {
    bytes: Bytes,
    sha256: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let demo =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.corral/models/smollm2-135m.gguf");
        let bytes = match std::fs::read(&demo) {
            Ok(b) => b,
            Err(_) => {
                // 3 MiB that no two offsets confuse: a resume at the wrong byte fails the hash.
                let mut b = b"GGUF\x03\0\0\0".to_vec();
                let mut x = 0x2545_f491_4f6c_dd1du64;
                while b.len() < 3 << 20 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    b.extend_from_slice(&x.to_le_bytes());
                }
                b
            }
        };
        let sha256 = format!("{:x}", Sha256::digest(&bytes));
        Fixture {
            bytes: Bytes::from(bytes),
            sha256,
        }
    })
}

/// What the server saw and how it should misbehave.
#[derive(Default)]
struct Server {
    base: String,
    blob_gets: AtomicUsize,
    manifest_gets: AtomicUsize,
    /// `Range` header of every blob or file request (`None` when absent).
    ranges: Mutex<Vec<Option<String>>>,
    manifest_accept: Mutex<Option<String>>,
    /// Close the connection halfway through the next body.
    cut_next: AtomicBool,
    /// Pause 1 ms between chunks, so a test can act in the middle of a download.
    slow: AtomicBool,
    /// Advertise this digest in the manifest instead of the real one.
    manifest_digest: Mutex<Option<String>>,
}

async fn serve() -> Arc<Server> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Arc::new(Server {
        base: format!("http://{}", listener.local_addr().unwrap()),
        ..Server::default()
    });
    let app = Router::new()
        .route("/v2/{ns}/{model}/manifests/{tag}", get(manifest))
        .route("/v2/{ns}/{model}/blobs/{digest}", get(blob))
        .route("/files/model.gguf", get(file))
        .route("/files/no-range.gguf", get(file_without_ranges))
        .with_state(server.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    server
}

async fn manifest(
    State(s): State<Arc<Server>>,
    UrlPath((ns, model, tag)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    s.manifest_gets.fetch_add(1, Ordering::SeqCst);
    *s.manifest_accept.lock().unwrap() = headers
        .get(header::ACCEPT)
        .map(|v| v.to_str().unwrap().to_owned());
    let f = fixture();
    let digest = s
        .manifest_digest
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| format!("sha256:{}", f.sha256));
    let layers = match (ns.as_str(), model.as_str(), tag.as_str()) {
        ("library", "smol", "135m") => serde_json::json!([
            {"mediaType": "application/vnd.ollama.image.license", "digest": format!("sha256:{}", "1".repeat(64)), "size": 11},
            {"mediaType": "application/vnd.ollama.image.model", "digest": digest, "size": f.bytes.len()},
            {"mediaType": "application/vnd.ollama.image.params", "digest": format!("sha256:{}", "2".repeat(64)), "size": 30},
        ]),
        ("library", "nolayer", "latest") => serde_json::json!([
            {"mediaType": "application/vnd.ollama.image.license", "digest": format!("sha256:{}", "1".repeat(64)), "size": 11},
        ]),
        _ => return (StatusCode::NOT_FOUND, "manifest unknown").into_response(),
    };
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": format!("sha256:{}", "3".repeat(64)), "size": 400},
        "layers": layers,
    });
    (
        [(
            header::CONTENT_TYPE,
            "application/vnd.docker.distribution.manifest.v2+json",
        )],
        body.to_string(),
    )
        .into_response()
}

async fn blob(
    State(s): State<Arc<Server>>,
    UrlPath((ns, model, digest)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let f = fixture();
    let advertised = s
        .manifest_digest
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| format!("sha256:{}", f.sha256));
    if (ns.as_str(), model.as_str()) != ("library", "smol") || digest != advertised {
        return (StatusCode::NOT_FOUND, "blob unknown").into_response();
    }
    s.blob_gets.fetch_add(1, Ordering::SeqCst);
    ranged(&s, &headers, f.bytes.clone(), true)
}

async fn file(State(s): State<Arc<Server>>, headers: HeaderMap) -> Response {
    ranged(&s, &headers, fixture().bytes.clone(), true)
}

async fn file_without_ranges(State(s): State<Arc<Server>>, headers: HeaderMap) -> Response {
    ranged(&s, &headers, fixture().bytes.clone(), false)
}

/// Same length as the fixture, other content: what a stale `.partial` would hold.
fn other_bytes() -> Bytes {
    let mut b = fixture().bytes.to_vec();
    for x in &mut b[4..] {
        *x = x.wrapping_add(1);
    }
    Bytes::from(b)
}

/// Serves `data` (or the tail a `Range: bytes=N-` asks for), in 64 KiB chunks so the
/// client sees progress; when `cut_next` is set, stops halfway and drops the connection.
fn ranged(s: &Server, headers: &HeaderMap, data: Bytes, ranges: bool) -> Response {
    let range = headers
        .get(header::RANGE)
        .map(|v| v.to_str().unwrap().to_owned());
    s.ranges.lock().unwrap().push(range.clone());
    let len = data.len();
    let (status, start) = match range.filter(|_| ranges) {
        Some(r) => {
            let start: usize = r
                .strip_prefix("bytes=")
                .and_then(|r| r.strip_suffix('-'))
                .unwrap()
                .parse()
                .unwrap();
            if start >= len {
                return StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            }
            (StatusCode::PARTIAL_CONTENT, start)
        }
        None => (StatusCode::OK, 0),
    };
    let body = data.slice(start..);
    let mut chunks: Vec<Result<Bytes, std::io::Error>> = (0..body.len())
        .step_by(64 << 10)
        .map(|at| Ok(body.slice(at..(at + (64 << 10)).min(body.len()))))
        .collect();
    if s.cut_next.swap(false, Ordering::SeqCst) {
        chunks.truncate(chunks.len() / 2);
        chunks.push(Err(std::io::Error::other("connection cut by the test")));
    }
    let stream = futures_util::stream::iter(chunks);
    let paced = if s.slow.load(Ordering::SeqCst) {
        Body::from_stream(stream.then(|chunk| async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            chunk
        }))
    } else {
        Body::from_stream(stream)
    };
    let mut response = Response::new(paced);
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{}/{len}", len - 1)).unwrap(),
        );
    }
    response
}

fn model(id: &str, source: ModelSource) -> CatalogModel {
    CatalogModel {
        id: id.into(),
        family: "SmolLM2".into(),
        size: "135M".into(),
        cpu_supported: true,
        gpu_supported: true,
        memory_required: 512,
        expected_deploy_seconds: 5,
        source,
        weights_bytes: None,
        builtin: false,
    }
}

fn ollama(name: &str) -> ModelSource {
    ModelSource::Ollama { name: name.into() }
}

fn url(server: &Server, path: &str, sha256: &str) -> ModelSource {
    ModelSource::Url {
        url: format!("{}{path}", server.base),
        sha256: sha256.into(),
    }
}

/// Compares bytes rather than hashing them again: SHA-256 is slow in debug builds, and
/// the manager's own hashing is what is under test.
fn assert_is_fixture(path: &Path) {
    let got = std::fs::read(path).unwrap();
    assert!(
        got == fixture().bytes,
        "{} differs from the served file",
        path.display()
    );
}

/// Every file in the models dir, by name.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir.join("models")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => vec![],
    };
    names.sort();
    names
}

/// Weights that may fetch from this test's servers, which listen on loopback.
fn local(data_dir: &Path) -> Weights {
    Weights::new(data_dir).allow_private_sources(true)
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    (dir, models)
}

#[tokio::test]
async fn pulls_from_the_ollama_registry_and_verifies() {
    let server = serve().await;
    let (dir, models) = setup();
    let weights = local(dir.path()).with_registry(format!("{}/", server.base));
    let m = model("smol:135m", ollama("library/smol:135m"));
    let progress = weights.progress("smol:135m").unwrap();
    assert_eq!(progress.borrow().phase, Phase::Idle);
    assert!(!weights.present(&m).await);

    let path = weights.resolve(&m).await.unwrap();
    assert_eq!(path, models.join("smol_135m.gguf"));
    assert_is_fixture(&path);
    assert!(weights.present(&m).await);
    assert_eq!(listing(dir.path()), ["smol_135m.gguf", "smol_135m.json"]);
    assert_eq!(
        server.manifest_accept.lock().unwrap().as_deref(),
        Some("application/vnd.docker.distribution.manifest.v2+json")
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(models.join("smol_135m.json")).unwrap()).unwrap();
    assert_eq!(record["sha256"], fixture().sha256.as_str());
    assert_eq!(record["model_id"], "smol:135m");
    assert_eq!(record["size"], fixture().bytes.len() as u64);

    let p = progress.borrow().clone();
    let len = fixture().bytes.len() as u64;
    assert_eq!(
        (p.phase, p.done, p.total, p.percent()),
        (Phase::Ready, len, Some(len), Some(100))
    );

    // Present now: no second request, to the registry or for the blob.
    assert_eq!(weights.resolve(&m).await.unwrap(), path);
    assert_eq!(server.manifest_gets.load(Ordering::SeqCst), 1);
    assert_eq!(server.blob_gets.load(Ordering::SeqCst), 1);
    // A fresh manager (a restarted server) trusts the record too.
    let again = local(dir.path()).with_registry(&server.base);
    assert!(again.present(&m).await);
    assert_eq!(again.resolve(&m).await.unwrap(), path);
    assert_eq!(server.blob_gets.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn registry_errors_are_explained() {
    let server = serve().await;
    let (dir, _) = setup();
    let weights = local(dir.path()).with_registry(&server.base);

    let err = weights
        .resolve(&model("nope:1b", ollama("library/nope:1b")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Status { status: 404, .. }), "{err:?}");
    assert!(err.to_string().contains("no such model or tag"), "{err}");

    let err = weights
        .resolve(&model("nolayer", ollama("nolayer")))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("has no application/vnd.ollama.image.model layer"),
        "{err}"
    );

    let err = weights
        .resolve(&model("bad", ollama("library/../../x")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSource { .. }), "{err:?}");
    assert_eq!(server.blob_gets.load(Ordering::SeqCst), 0);

    // Nothing listens there any more: a clear connection error after the retries.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let err = local(dir.path())
        .with_registry(&dead)
        .resolve(&model("smol:135m", ollama("library/smol:135m")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Http { .. }), "{err:?}");
    assert!(err.to_string().contains(&dead), "{err}");
}

#[tokio::test]
async fn pulls_from_a_url_and_tracks_the_digest() {
    let server = serve().await;
    let (dir, models) = setup();
    let weights = local(dir.path());
    // Catalogs write digests in any case, with or without the prefix.
    let sha = format!("sha256:{}", fixture().sha256.to_ascii_uppercase());
    let m = model("smollm2:135m", url(&server, "/files/model.gguf", &sha));
    assert!(!weights.present(&m).await);
    let path = weights.resolve(&m).await.unwrap();
    assert_eq!(path, models.join("smollm2_135m.gguf"));
    assert_is_fixture(&path);
    assert!(weights.present(&m).await);
    assert_eq!(*server.ranges.lock().unwrap(), [None]);

    // The entry now names other content: the file on disk is not its weights.
    let changed = model(
        "smollm2:135m",
        url(&server, "/files/model.gguf", &"0".repeat(64)),
    );
    assert!(!weights.present(&changed).await);
}

#[tokio::test]
async fn resumes_after_the_connection_drops() {
    let server = serve().await;
    let (dir, _) = setup();
    let weights = local(dir.path()).with_registry(&server.base);
    server.cut_next.store(true, Ordering::SeqCst);
    let m = model("smol:135m", ollama("library/smol:135m"));
    let path = weights.resolve(&m).await.unwrap();
    assert_is_fixture(&path);
    assert_eq!(server.blob_gets.load(Ordering::SeqCst), 2);
    let ranges = server.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 2);
    assert_eq!(ranges[0], None);
    let resumed_at: u64 = ranges[1]
        .as_deref()
        .expect("the second request resumes")
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        resumed_at > 0 && resumed_at < fixture().bytes.len() as u64,
        "{resumed_at}"
    );
    assert_eq!(listing(dir.path()), ["smol_135m.gguf", "smol_135m.json"]);
}

#[tokio::test]
async fn resumes_a_partial_left_by_an_earlier_run() {
    let server = serve().await;
    let (dir, models) = setup();
    let half = fixture().bytes.len() / 2;
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("smol_135m.partial"), &fixture().bytes[..half]).unwrap();

    let weights = local(dir.path());
    let m = model(
        "smol:135m",
        url(&server, "/files/model.gguf", &fixture().sha256),
    );
    let path = weights.resolve(&m).await.unwrap();
    assert_is_fixture(&path);
    assert_eq!(
        *server.ranges.lock().unwrap(),
        [Some(format!("bytes={half}-"))]
    );
    assert_eq!(listing(dir.path()), ["smol_135m.gguf", "smol_135m.json"]);
}

#[tokio::test]
async fn restarts_when_the_server_ignores_the_range() {
    let server = serve().await;
    let (dir, models) = setup();
    std::fs::create_dir_all(&models).unwrap();
    // Garbage: appending to it would fail the hash, so a 200 must start over.
    std::fs::write(models.join("smol_135m.partial"), vec![0xAA; 1000]).unwrap();

    let weights = local(dir.path());
    let m = model(
        "smol:135m",
        url(&server, "/files/no-range.gguf", &fixture().sha256),
    );
    let path = weights.resolve(&m).await.unwrap();
    assert_is_fixture(&path);
    assert_eq!(
        *server.ranges.lock().unwrap(),
        [Some("bytes=1000-".to_owned())]
    );
}

#[tokio::test]
async fn a_stale_partial_of_other_content_is_downloaded_again() {
    let server = serve().await;
    let (dir, models) = setup();
    let half = fixture().bytes.len() / 2;
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("smol_135m.partial"), &other_bytes()[..half]).unwrap();

    let weights = local(dir.path());
    let m = model(
        "smol:135m",
        url(&server, "/files/model.gguf", &fixture().sha256),
    );
    let path = weights.resolve(&m).await.unwrap();
    assert_is_fixture(&path);
    assert_eq!(
        *server.ranges.lock().unwrap(),
        [Some(format!("bytes={half}-")), None]
    );
}

#[tokio::test]
async fn a_digest_mismatch_leaves_nothing_behind() {
    let server = serve().await;
    let (dir, _) = setup();
    let weights = local(dir.path()).with_registry(&server.base);
    let wrong = "0123456789abcdef".repeat(4);

    let m = model("smol:135m", url(&server, "/files/model.gguf", &wrong));
    let progress = weights.progress("smol:135m").unwrap();
    let err = weights.resolve(&m).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("SHA-256 mismatch") && msg.contains(&wrong) && msg.contains(&fixture().sha256),
        "{msg}"
    );
    assert_eq!(listing(dir.path()), Vec::<String>::new());
    assert!(!weights.present(&m).await);
    let p = progress.borrow().clone();
    assert_eq!(p.phase, Phase::Failed);
    assert_eq!(p.error.as_deref(), Some(msg.as_str()));

    // A registry whose manifest names a digest its blob does not have is caught the same way.
    let advertised = "ab".repeat(32);
    *server.manifest_digest.lock().unwrap() = Some(format!("sha256:{advertised}"));
    let m = model("smol:135m", ollama("library/smol:135m"));
    let err = weights.resolve(&m).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains(&advertised), "{err}");
    assert_eq!(server.blob_gets.load(Ordering::SeqCst), 1);
    assert_eq!(listing(dir.path()), Vec::<String>::new());
}

#[tokio::test]
async fn a_cancelled_resolve_goes_idle_and_the_next_one_resumes() {
    let server = serve().await;
    let (dir, models) = setup();
    let weights = Arc::new(local(dir.path()).with_registry(&server.base));
    let m = model("smol:135m", ollama("library/smol:135m"));
    let mut progress = weights.progress("smol:135m").unwrap();
    let half = fixture().bytes.len() as u64 / 2;
    server.slow.store(true, Ordering::SeqCst);
    let task = tokio::spawn({
        let (weights, m) = (weights.clone(), m.clone());
        async move { weights.resolve(&m).await }
    });
    tokio::time::timeout(
        Duration::from_secs(30),
        progress.wait_for(|p| p.phase == Phase::Downloading && p.done >= half),
    )
    .await
    .expect("the download starts")
    .unwrap();
    // What the reconciler does when the instance is stopped while provisioning.
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let p = progress.borrow().clone();
    assert_eq!(p.phase, Phase::Idle);
    assert!(p.done >= half);
    // The last write the cancelled task started still lands; a later deploy comes long
    // after it (and a resume that raced it would fail the hash and start over).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let kept = std::fs::metadata(models.join("smol_135m.partial"))
        .unwrap()
        .len();
    assert!(kept > 0);

    server.slow.store(false, Ordering::SeqCst);
    let path = weights.resolve(&m).await.unwrap();
    assert_is_fixture(&path);
    assert_eq!(
        *server.ranges.lock().unwrap(),
        [None, Some(format!("bytes={kept}-"))]
    );
    assert_eq!(progress.borrow().phase, Phase::Ready);
}

#[tokio::test]
async fn concurrent_resolves_share_one_download() {
    let server = serve().await;
    let (dir, _) = setup();
    let weights = Arc::new(local(dir.path()).with_registry(&server.base));
    let m = model("smol:135m", ollama("library/smol:135m"));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (weights, m) = (weights.clone(), m.clone());
            tokio::spawn(async move { weights.resolve(&m).await.unwrap() })
        })
        .collect();
    let mut paths = vec![];
    for t in tasks {
        paths.push(t.await.unwrap());
    }
    assert!(paths.windows(2).all(|w| w[0] == w[1]));
    assert_is_fixture(&paths[0]);
    assert_eq!(server.blob_gets.load(Ordering::SeqCst), 1);
    assert_eq!(server.manifest_gets.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn imports_a_local_gguf() {
    let (dir, models) = setup();
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("my.gguf");
    std::fs::write(&src, &fixture().bytes).unwrap();

    let weights = local(dir.path());
    let entry = weights.import(&src, "My-Model:Q4").await.unwrap();
    assert_eq!(entry.id, "my-model:q4");
    assert_eq!(entry.family, "my-model");
    assert_eq!(
        entry.source,
        ModelSource::File {
            path: "models/my-model_q4.gguf".into()
        }
    );
    assert_eq!(entry.weights_bytes, Some(fixture().bytes.len() as u64));
    assert!(!entry.builtin);
    assert!(entry.memory_required as usize * (1 << 20) > fixture().bytes.len());
    let path = models.join("my-model_q4.gguf");
    assert_eq!(weights.resolve(&entry).await.unwrap(), path);
    assert!(weights.present(&entry).await);
    assert_is_fixture(&path);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(models.join("my-model_q4.json")).unwrap()).unwrap();
    assert_eq!(record["sha256"], fixture().sha256.as_str());
    assert_eq!(
        listing(dir.path()),
        ["my-model_q4.gguf", "my-model_q4.json"]
    );

    // Importing again under the same name replaces the file in place.
    weights.import(&src, "my-model:q4").await.unwrap();
    assert_eq!(
        listing(dir.path()),
        ["my-model_q4.gguf", "my-model_q4.json"]
    );
}

#[tokio::test]
async fn refuses_what_is_not_a_gguf() {
    let (dir, _) = setup();
    let weights = local(dir.path());
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello, not a model").unwrap();

    let err = weights.import(&text, "notes").await.unwrap_err();
    assert!(matches!(err, Error::NotGguf { .. }), "{err:?}");
    assert!(err.to_string().contains("is not a GGUF file"), "{err}");
    let err = weights
        .import(&dir.path().join("absent.gguf"), "absent")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains("absent.gguf: No such file"),
        "{err}"
    );
    assert_eq!(listing(dir.path()), Vec::<String>::new());

    // Catalog `File` entries: relative to the data dir or absolute, and checked too.
    let m = model(
        "notes",
        ModelSource::File {
            path: "notes.txt".into(),
        },
    );
    assert!(matches!(
        weights.resolve(&m).await,
        Err(Error::NotGguf { .. })
    ));
    assert!(!weights.present(&m).await);
    let m = model(
        "absent",
        ModelSource::File {
            path: dir.path().join("models/absent.gguf").display().to_string(),
        },
    );
    let err = weights.resolve(&m).await.unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}

#[tokio::test]
async fn path_like_model_ids_are_refused() {
    let server = serve().await;
    let (dir, _) = setup();
    let weights = local(dir.path()).with_registry(&server.base);
    let src = dir.path().join("ok.gguf");
    std::fs::write(&src, b"GGUF\x03\0\0\0").unwrap();
    for id in [
        "../evil",
        "a/b",
        "/etc/passwd",
        "..",
        "x:y:z",
        ".hidden",
        "c:\\x",
    ] {
        let m = model(id, url(&server, "/files/model.gguf", &fixture().sha256));
        assert!(
            matches!(weights.resolve(&m).await, Err(Error::InvalidId(_))),
            "{id}"
        );
        assert!(!weights.present(&m).await, "{id}");
        assert!(
            matches!(weights.import(&src, id).await, Err(Error::InvalidId(_))),
            "{id}"
        );
        assert!(weights.path_for(id).is_err(), "{id}");
        assert!(weights.progress(id).is_err(), "{id}");
    }
    assert!(server.ranges.lock().unwrap().is_empty());
    assert!(!dir.path().join("models").exists());
    assert!(!dir.path().parent().unwrap().join("evil.gguf").exists());
    assert_eq!(
        weights.path_for("llama2:7b").unwrap(),
        dir.path().join("models/llama2_7b.gguf")
    );
}

/// Issue 13 item 14: model sources inside the network. Without
/// `allow_private_model_sources`, neither a `url` source nor the registry may be on
/// loopback, link-local (the cloud metadata address) or private addresses: refused
/// before any byte is fetched, whether named by address or by a name resolving there,
/// and not retried.
#[tokio::test]
async fn model_sources_inside_the_network_are_refused() {
    let server = serve().await;
    let (dir, _) = setup();
    let guarded = Weights::new(dir.path());
    let sha = fixture().sha256.clone();
    let by_name = server.base.replace("127.0.0.1", "localhost");
    for (source, registry) in [
        (url(&server, "/files/model.gguf", &sha), None),
        (
            ModelSource::Url {
                url: format!("{by_name}/files/model.gguf"),
                sha256: sha.clone(),
            },
            None,
        ),
        (
            ModelSource::Url {
                url: "http://169.254.169.254/latest/meta-data/iam/x.gguf".into(),
                sha256: sha.clone(),
            },
            None,
        ),
        (
            ModelSource::Url {
                url: "http://[::ffff:169.254.169.254]/x.gguf".into(),
                sha256: sha.clone(),
            },
            None,
        ),
        (ollama("library/smol:135m"), Some(server.base.clone())),
        (ollama("library/smol:135m"), Some(by_name.clone())),
    ] {
        let weights = match &registry {
            Some(r) => Weights::new(dir.path()).with_registry(r),
            None => Weights::new(dir.path()),
        };
        let started = std::time::Instant::now();
        let err = weights
            .resolve(&model("smol:135m", source.clone()))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Refused { .. }),
            "{source:?} via {registry:?}: {err:?}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "refused at once, not retried"
        );
    }
    assert!(server.ranges.lock().unwrap().is_empty(), "no file request");
    assert_eq!(server.manifest_gets.load(Ordering::SeqCst), 0);
    assert_eq!(listing(dir.path()), Vec::<String>::new());
    // The setting allows them.
    let m = model("smol:135m", url(&server, "/files/model.gguf", &sha));
    assert!(guarded.resolve(&m).await.is_err());
    assert_is_fixture(&local(dir.path()).resolve(&m).await.unwrap());
}

/// Issue 13 item 11: file permissions. Downloaded weights, their records and the models
/// dir are private to the server's user, whatever the umask.
#[tokio::test]
async fn weights_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let server = serve().await;
    let (dir, models) = setup();
    let m = model(
        "smol:135m",
        url(&server, "/files/model.gguf", &fixture().sha256),
    );
    let path = local(dir.path()).resolve(&m).await.unwrap();
    assert_eq!(mode(&models), 0o700);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&models.join("smol_135m.json")), 0o600);
}

/// The store's answer, fixed: the catalog and the model ids of live instances.
struct FixedNeeds(Vec<CatalogModel>, Vec<String>);

#[async_trait::async_trait]
impl corral_models::WeightsNeeds for FixedNeeds {
    async fn needs(&self) -> Result<(Vec<CatalogModel>, Vec<String>), String> {
        Ok((self.0.clone(), self.1.clone()))
    }
}

/// Weights on disk as a pull leaves them: the GGUF and its record.
fn pulled(models: &Path, stem: &str) {
    std::fs::create_dir_all(models).unwrap();
    std::fs::write(models.join(format!("{stem}.gguf")), b"GGUF old weights").unwrap();
    std::fs::write(models.join(format!("{stem}.json")), b"{}").unwrap();
}

#[tokio::test]
async fn below_the_free_space_threshold_a_download_first_collects_unneeded_weights() {
    let server = serve().await;
    let (dir, models) = setup();
    pulled(&models, "llama2_7b"); // in the catalog, no instance uses it
    pulled(&models, "phi3_mini"); // an instance uses it
    pulled(&models, "gone_1b"); // no longer in the catalog
    let m = model(
        "smollm2:135m",
        url(&server, "/files/model.gguf", &fixture().sha256),
    );
    let catalog = vec![m.clone(), model("llama2:7b", ollama("library/llama2:7b"))];
    let needs = FixedNeeds(catalog, vec!["phi3:mini".into()]);
    // No disk has this much free: every download collects first.
    let weights = local(dir.path()).with_gc_threshold(u64::MAX, Arc::new(needs));
    let path = weights.resolve(&m).await.unwrap();
    assert_is_fixture(&path);
    assert_eq!(
        listing(dir.path()),
        [
            "phi3_mini.gguf",
            "phi3_mini.json",
            "smollm2_135m.gguf",
            "smollm2_135m.json"
        ]
    );

    // Weights already present are not a download: nothing is collected for them.
    pulled(&models, "gone_1b");
    weights.resolve(&m).await.unwrap();
    assert!(models.join("gone_1b.gguf").exists());
}

#[tokio::test]
async fn above_the_free_space_threshold_nothing_is_collected() {
    let server = serve().await;
    let (dir, models) = setup();
    pulled(&models, "gone_1b");
    let m = model(
        "smollm2:135m",
        url(&server, "/files/model.gguf", &fixture().sha256),
    );
    let needs = FixedNeeds(vec![m.clone()], vec![]);
    let weights = local(dir.path()).with_gc_threshold(0, Arc::new(needs));
    weights.resolve(&m).await.unwrap();
    assert!(models.join("gone_1b.gguf").exists());
}

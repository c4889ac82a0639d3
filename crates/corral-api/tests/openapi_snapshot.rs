//! The OpenAPI document against its checked-in snapshot, `crates/corral-api/openapi.json`,
//! so that every change to the API's contract shows up as a diff in review. The UI's
//! TypeScript types are generated from that file (`scripts/build-ui.sh`).
//!
//! After an intended change: `make openapi` (`UPDATE_SNAPSHOTS=1 cargo test -p corral-api
//! --test openapi_snapshot`, then the UI's `npm run api-types`); commit both files.

use std::path::Path;

const SNAPSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
const UPDATE: &str = "UPDATE_SNAPSHOTS=1 cargo test -p corral-api --test openapi_snapshot";

/// The document as the snapshot holds it: pretty JSON with a final newline.
fn render() -> String {
    let doc = corral_api::openapi_document();
    let mut text = serde_json::to_string_pretty(&doc).expect("the document serialises");
    text.push('\n');
    text
}

/// The first line where `want` and `got` part, with a few lines of context, for a failure
/// message that says where the contract changed (None when they are equal).
fn first_difference(want: &str, got: &str) -> Option<String> {
    if want == got {
        return None;
    }
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let at = w.iter().zip(&g).take_while(|(a, b)| a == b).count();
    let from = at.saturating_sub(3);
    let show = |lines: &[&str], sign: char| {
        lines
            .iter()
            .enumerate()
            .skip(from)
            .take(at - from + 4)
            .map(|(n, l)| format!("{sign}{:>6} {l}\n", n + 1))
            .collect::<String>()
    };
    Some(format!(
        "first difference at line {} (snapshot {} lines, code {} lines)\n\
         snapshot:\n{}code:\n{}",
        at + 1,
        w.len(),
        g.len(),
        show(&w, '-'),
        show(&g, '+'),
    ))
}

#[test]
fn openapi_document_matches_snapshot() {
    let got = render();
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        std::fs::write(SNAPSHOT, &got).expect("write the snapshot");
        eprintln!("updated {SNAPSHOT}");
        return;
    }
    let want = match std::fs::read_to_string(Path::new(SNAPSHOT)) {
        Ok(text) => text,
        Err(e) => panic!("cannot read {SNAPSHOT} ({e}); create it with `{UPDATE}`"),
    };
    if let Some(diff) = first_difference(&want, &got) {
        panic!(
            "the OpenAPI document differs from its snapshot {SNAPSHOT}.\n{diff}\n\
             If the change is intended: `make openapi` (runs `{UPDATE}`, then regenerates \
             ui/src/api/schema.gen.ts), and commit both files."
        );
    }
}

#[test]
fn first_difference_names_the_line() {
    assert_eq!(first_difference("a\nb\n", "a\nb\n"), None);
    let diff = first_difference("a\nb\nc\n", "a\nB\nc\n").unwrap();
    assert!(diff.starts_with("first difference at line 2 "), "{diff}");
    assert!(diff.contains("-     2 b\n"), "{diff}");
    assert!(diff.contains("+     2 B\n"), "{diff}");
    // A document that only grew: the difference is the first added line.
    let diff = first_difference("a\n", "a\nb\n").unwrap();
    assert!(diff.starts_with("first difference at line 2 "), "{diff}");
    assert!(diff.contains("+     2 b\n"), "{diff}");
}

//! Runs the shared conformance suite against every backend: SQLite in a temporary
//! folder, and PostgreSQL in a fresh database on the server named by
//! `CORRAL_TEST_PG_URL` (which `scripts/with-postgres.sh` starts and sets).

use std::sync::Arc;

use corral_store::{Error, Store, conformance};
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_conformance() {
    let dir = tempfile::tempdir().unwrap();
    // A missing parent folder is created.
    let path = dir.path().join("data").join("corral.db");
    let store = corral_store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    assert_eq!(store.backend(), "sqlite");
    assert!(dir.path().join("data/corral.db-wal").exists(), "WAL mode");
    conformance::run_all(store.as_ref()).await;

    // Reopening (as a plain path) keeps the data, and migrating again is a no-op.
    let count = store.count_users().await.unwrap();
    drop(store);
    let reopened = corral_store::open(path.to_str().unwrap()).await.unwrap();
    assert_eq!(reopened.count_users().await.unwrap(), count);
}

#[tokio::test]
async fn unknown_url_scheme_is_refused() {
    for url in ["mysql://localhost/corral", "dynamodb://table", "sqlite://"] {
        match corral_store::open(url).await {
            Err(Error::UnsupportedUrl(_)) => {}
            Err(other) => panic!("{url}: unexpected error {other}"),
            Ok(_) => panic!("{url}: opened"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_conformance() {
    let Ok(server_url) = std::env::var("CORRAL_TEST_PG_URL") else {
        if std::env::var("CORRAL_SKIP_PG").as_deref() == Ok("1") {
            eprintln!(
                "\n\n*** SKIPPED: PostgreSQL conformance (CORRAL_SKIP_PG=1). \
                 The PostgreSQL backend is NOT tested in this run. ***\n"
            );
            return;
        }
        panic!(
            "CORRAL_TEST_PG_URL is not set: run the tests through \
             `scripts/with-postgres.sh cargo test` (it starts a throwaway PostgreSQL 15), \
             or set CORRAL_SKIP_PG=1 to skip the PostgreSQL backend knowingly"
        );
    };

    // A fresh database per run: repeated or concurrent runs never see each other.
    let name = format!("corral_test_{}", Uuid::now_v7().simple());
    let mut admin = PgConnection::connect(&server_url)
        .await
        .expect("connect to CORRAL_TEST_PG_URL");
    admin
        .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
        .await
        .unwrap();

    let url = with_database(&server_url, &name);
    // Run in a task so that a failing check still lets the database be dropped below.
    let outcome = tokio::spawn(async move {
        let store: Arc<dyn Store> = corral_store::open(&url).await.unwrap();
        assert_eq!(store.backend(), "postgres");
        conformance::run_all(store.as_ref()).await;
    })
    .await;

    // FORCE closes the pool's connections, which may not have finished closing yet.
    admin
        .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
        .await
        .unwrap();
    if let Err(err) = outcome {
        std::panic::resume_unwind(err.into_panic());
    }
}

/// `server_url` with its database (path) replaced, keeping any `?query`.
fn with_database(server_url: &str, database: &str) -> String {
    let (base, query) = match server_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server_url, None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let mut url = format!("{}/{database}", &base[..path]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

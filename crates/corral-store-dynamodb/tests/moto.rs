//! The shared conformance suite on DynamoDB, against a real moto server (the AWS
//! emulator) through the real SDK.
//!
//! Run with `scripts/with-moto.sh cargo test -p corral-store-dynamodb`, which starts moto
//! and sets `AWS_ENDPOINT_URL`, test credentials and `AWS_REGION`. Without it these
//! tests fail, unless `CORRAL_SKIP_MOTO=1` says to skip them knowingly.

use std::sync::Arc;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

use corral_core::{Role, State, User};
use corral_store::{Store, conformance};
use corral_store_dynamodb::DynamoStore;
use uuid::Uuid;

/// Whether moto is there; panics when it is not and skipping was not asked for.
fn moto() -> bool {
    match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url) if !url.is_empty() => true,
        _ if std::env::var("CORRAL_SKIP_MOTO").as_deref() == Ok("1") => {
            eprintln!(
                "\n\n*** SKIPPED: DynamoDB store tests (CORRAL_SKIP_MOTO=1). \
                 The DynamoDB backend is NOT tested in this run. ***\n"
            );
            false
        }
        _ => panic!(
            "these tests need a moto server: run them as `scripts/with-moto.sh cargo test -p \
             corral-store-dynamodb` (moto comes from `scripts/venv.sh`), or set CORRAL_SKIP_MOTO=1"
        ),
    }
}

/// moto serves requests on parallel threads without a lock, and its TransactWriteItems
/// (snapshot the table, apply, restore on failure) and UpdateItem ADD are not atomic
/// across threads: concurrent transactions can resurrect or lose each other's writes.
/// DynamoDB itself applies each request atomically. So that the emulator keeps that
/// guarantee, requests from these tests reach moto one at a time: callers still race
/// between requests (read, decide, conditional write), which is what the store's
/// conditions, transactions and retries must handle.
#[derive(Debug)]
struct OneAtATime {
    inner: SharedHttpClient,
    turn: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug)]
struct OneAtATimeConnector {
    inner: SharedHttpConnector,
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl HttpClient for OneAtATime {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(OneAtATimeConnector {
            inner: self.inner.http_connector(settings, components),
            turn: self.turn.clone(),
        })
    }
}

impl HttpConnector for OneAtATimeConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let (inner, turn) = (self.inner.clone(), self.turn.clone());
        HttpConnectorFuture::new(async move {
            // moto has built the whole response before it sends the headers.
            let _turn = turn.lock().await;
            inner.call(request).await
        })
    }
}

/// A fresh table per test (runs never see each other's rows), created the way
/// `DynamoStore::open` creates a missing one.
async fn fresh_store() -> DynamoStore {
    let http = OneAtATime {
        inner: aws_smithy_http_client::Builder::new().build_http(),
        turn: Arc::default(),
    };
    // Endpoint (moto), region and credentials from the environment with-moto.sh sets.
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .load()
        .await;
    let table = format!("corral-test-{}", Uuid::now_v7().simple());
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), table);
    assert!(
        store
            .create_table_if_missing()
            .await
            .expect("create the table on moto")
    );
    store
}

/// Runs `check` on a fresh table, then deletes the table even if the check failed.
async fn with_store<F, Fut>(check: F)
where
    F: FnOnce(Arc<DynamoStore>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let store = Arc::new(fresh_store().await);
    let outcome = tokio::spawn(check(store.clone())).await;
    store.delete_table().await.expect("delete the test table");
    if let Err(err) = outcome {
        std::panic::resume_unwind(err.into_panic());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_conformance() {
    if !moto() {
        return;
    }
    with_store(|store| async move {
        assert_eq!(store.backend(), "dynamodb");
        conformance::run_all(store.as_ref()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_again_keeps_the_table_and_its_data() {
    if !moto() {
        return;
    }
    with_store(|store| async move {
        let user = User::new(
            "again@example.test",
            "h".into(),
            Role::User,
            chrono::Utc::now(),
        );
        store.create_user(&user).await.unwrap();
        // Opening an existing table creates nothing and sees the same rows.
        assert!(!store.create_table_if_missing().await.unwrap());
        let again = DynamoStore::open(&format!("dynamodb://{}", store.table()))
            .await
            .unwrap();
        assert_eq!(
            again.user_by_id(user.id).await.unwrap().unwrap().email,
            user.email
        );
        assert_eq!(again.count_users().await.unwrap(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_writers_race_one_instance() {
    if !moto() {
        return;
    }
    // Optimistic concurrency under real contention: activity touches, settings and
    // replica-count writes and a transition all hit one instance at once, and none of
    // their effects is lost.
    with_store(|store| async move {
        let owner = User::new(
            "racer@example.test",
            "h".into(),
            Role::User,
            chrono::Utc::now(),
        );
        store.create_user(&owner).await.unwrap();
        let model = corral_core::catalog::builtin_models().remove(0);
        store.upsert_model(&model).await.unwrap();
        let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let inst = corral_core::Instance {
            id: Uuid::now_v7(),
            owner_id: owner.id,
            model_id: model.id.clone(),
            driver: "local".into(),
            compute: corral_core::ComputeSpec {
                compute_type: corral_core::ComputeType::Local,
                cpu: 1.0,
                memory: 1024,
                gpu_count: 0,
                instance_type: None,
                spot: false,
            },
            settings: corral_core::InstanceSettings::default(),
            desired: corral_core::Desired::Running,
            state: State::Pending,
            state_reason: None,
            target_replicas: 1,
            created_at: t0,
            updated_at: t0,
            last_activity_at: t0,
            running_since: None,
            running_seconds: 0,
            team_id: None,
        };
        store
            .create_instance(&inst, &corral_core::Admission::unlimited())
            .await
            .unwrap();
        let latest = t0 + chrono::Duration::seconds(20);
        let touches = (1..=20).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let at = t0 + chrono::Duration::seconds(i);
                store.touch_activity(inst.id, at).await.unwrap();
            })
        });
        let moved = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .transition(inst.id, State::Pending, State::Provisioning, None, "go", t0)
                    .await
                    .unwrap()
            })
        };
        let target = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .set_target_replicas(inst.id, 1, &corral_core::Admission::unlimited(), t0)
                    .await
                    .unwrap()
            })
        };
        for touch in touches {
            touch.await.unwrap();
        }
        assert!(moved.await.unwrap());
        assert!(target.await.unwrap());
        let got = store.instance(inst.id).await.unwrap().unwrap();
        assert_eq!(got.state, State::Provisioning);
        assert_eq!(got.last_activity_at, latest);
        assert_eq!(store.list_events(inst.id, 10).await.unwrap().len(), 1);
        // The owner cannot be deleted while the instance exists, whatever raced.
        assert!(matches!(
            store.delete_user(owner.id).await,
            Err(corral_store::Error::InUse(_))
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_keys_are_bad_input_not_database_errors() {
    if !moto() {
        return;
    }
    // DynamoDB refuses keys over 2048 bytes; the store answers as for any bad value.
    with_store(|store| async move {
        let long = format!("{}@example.test", "a".repeat(3000));
        assert_eq!(store.user_by_email(&long).await.unwrap(), None);
        assert_eq!(store.login_failures(&long).await.unwrap(), None);
        store.clear_login_failures(&long).await.unwrap();
        let err = store
            .count_login_attempt(&long, 5, chrono::Duration::minutes(1), chrono::Utc::now())
            .await
            .unwrap_err();
        assert!(matches!(err, corral_store::Error::Invalid(_)), "{err:?}");
        let user = User::new(&long, "h".into(), Role::User, chrono::Utc::now());
        let err = store.create_user(&user).await.unwrap_err();
        assert!(matches!(err, corral_store::Error::Invalid(_)), "{err:?}");
        assert_eq!(store.count_users().await.unwrap(), 0);
    })
    .await;
}

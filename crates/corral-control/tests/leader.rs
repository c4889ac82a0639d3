//! Leader election through the store's lease, with two contenders on one real SQLite
//! file (the lease code is the same on every backend; the conformance suite checks the
//! store's side on all three): exactly one leads, a graceful stop hands over at once,
//! and a leader that vanishes without releasing is replaced once its lease expires.

use std::sync::Arc;
use std::time::Duration;

use corral_control::{LEADER_LEASE, Leadership, LeaseSettings};
use corral_core::AuditFilter;
use corral_store::{SqliteStore, Store};
use tokio::sync::watch;
use tokio::time::Instant;

const SETTINGS: LeaseSettings = LeaseSettings {
    ttl: Duration::from_millis(1500),
    renew_every: Duration::from_millis(200),
};

struct Contender {
    leadership: Leadership,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn contend(store: &Arc<dyn Store>) -> Contender {
    let leadership = Leadership::elected(store.clone(), SETTINGS);
    let (stop, mut rx) = watch::channel(false);
    let task = tokio::spawn(leadership.clone().run(async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    Contender {
        leadership,
        stop,
        task,
    }
}

/// Waits (bounded) until `c` leads; returns how long that took.
async fn leads_within(c: &Contender, bound: Duration) -> Duration {
    let start = Instant::now();
    let mut rx = c.leadership.subscribe();
    tokio::time::timeout(bound, rx.wait_for(|t| t.is_some()))
        .await
        .unwrap_or_else(|_| panic!("no leadership within {bound:?}"))
        .unwrap();
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_hand_over_on_stop_and_take_over_on_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("c.db")).await.unwrap());
    let a = contend(&store);
    leads_within(&a, Duration::from_secs(2)).await;
    let b = contend(&store);
    // b has had several renewal rounds: it must not lead while a holds the lease.
    tokio::time::sleep(SETTINGS.renew_every * 4).await;
    assert!(a.leadership.is_leader());
    assert!(!b.leadership.is_leader());
    assert_eq!(
        b.leadership.leader().as_deref(),
        Some(a.leadership.holder())
    );
    let first = store.lease(LEADER_LEASE).await.unwrap().unwrap();
    assert_eq!(first.holder, a.leadership.holder());

    // A graceful stop releases the lease: b takes over at its next try, well within
    // the lease time, with the next fencing token.
    a.stop.send(true).unwrap();
    a.task.await.unwrap();
    assert!(!a.leadership.is_leader());
    let took = leads_within(&b, SETTINGS.ttl).await;
    assert!(took < SETTINGS.ttl, "hand-over took {took:?}");
    let second = store.lease(LEADER_LEASE).await.unwrap().unwrap();
    assert_eq!(second.holder, b.leadership.holder());
    assert_eq!(second.token, first.token + 1);

    // b vanishes without releasing (as with kill -9): c waits for the lease to expire.
    let c = contend(&store);
    let vanished = Instant::now();
    b.task.abort();
    leads_within(&c, SETTINGS.ttl * 3).await;
    assert!(
        vanished.elapsed() >= SETTINGS.ttl - SETTINGS.renew_every,
        "took over a live lease after {:?}",
        vanished.elapsed()
    );
    let third = store.lease(LEADER_LEASE).await.unwrap().unwrap();
    assert_eq!(third.token, second.token + 1);
    assert!(c.leadership.renewals() > 0);

    let audited = store
        .list_audit(&AuditFilter {
            action: Some("control.leader.".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let acquired = audited
        .iter()
        .filter(|e| e.action == "control.leader.acquired")
        .count();
    assert_eq!(acquired, 3, "{audited:?}");
    c.stop.send(true).unwrap();
    c.task.await.unwrap();
}

//! A process that does not lead (another holds the store's leader lease) routes the
//! replicas the leader made ready, from the store, and launches nothing itself; when
//! the leader stops the instance, the follower drops the route.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::{Harness, MODEL_ID, SERIAL, local_driver, new_control, runner_and_model};
use corral_control::{LEADER_LEASE, Leadership, LeaseSettings};
use corral_core::{Desired, InstanceSettings, State};
use tokio::sync::watch;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_routes_what_the_leader_made_ready() {
    let Some((runner, model)) = runner_and_model() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let h = Harness::new(runner.clone(), model).await;
    let settings = InstanceSettings {
        idle_timeout_seconds: 0,
        min_replicas: 1,
        max_replicas: 1,
        wake_on_request: true,
    };
    let id = h.create_instance(MODEL_ID, settings).await;
    h.wait_state(id, State::Ready, Duration::from_secs(30))
        .await;
    let pids = h.pids(id).await;
    let endpoints = |c: &corral_control::Control| {
        c.routing().get(id).map(|r| {
            r.replicas
                .iter()
                .map(|r| r.endpoint.clone())
                .collect::<Vec<_>>()
        })
    };
    let leader_endpoints = endpoints(&h.control).expect("the leader routes it");

    // The lease is another process's for the whole test: this one only follows.
    let now = Utc::now();
    let held = h
        .store
        .acquire_lease(
            LEADER_LEASE,
            "another",
            now,
            now + chrono::Duration::hours(1),
        )
        .await
        .unwrap();
    assert!(held.is_some());
    let follower = new_control(&h.store, h.dir.path(), local_driver(h.dir.path(), &runner));
    let leadership = Leadership::elected(h.store.clone(), LeaseSettings::default());
    let (stop, rx) = watch::channel(false);
    let until = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let lease = tokio::spawn(leadership.clone().run(until(rx.clone())));
    let run = tokio::spawn(follower.clone().run_elected(leadership.clone(), until(rx)));

    let start = Instant::now();
    while endpoints(&follower).as_ref() != Some(&leader_endpoints) {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "the follower does not route {leader_endpoints:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The lease task's first look at the store may still be under way.
    let start = Instant::now();
    while leadership.leader().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "no look at the lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!leadership.is_leader());
    assert_eq!(leadership.leader().as_deref(), Some("another"));

    h.control.set_desired(id, Desired::Stopped).await.unwrap();
    h.wait_state(id, State::Stopped, Duration::from_secs(30))
        .await;
    let start = Instant::now();
    while endpoints(&follower).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "the follower still routes a stopped instance"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pids.len(), 1);

    stop.send(true).unwrap();
    run.await.unwrap();
    lease.await.unwrap();
    h.shutdown().await;
}

//! The reconciler end to end with real model servers: deploy, crash and restart, stop,
//! idle sleep and wake, adoption after a restart, autoscaling, giving up.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;

use common::{Harness, MODEL_ID, SERIAL, alive, generate, pid_of, runner_and_model};
use corral_control::Error;
use corral_core::{Desired, InstanceSettings, State};
use corral_drivers::{ComputeDriver, LaunchSpec, Runtime};
use uuid::Uuid;

fn settings() -> InstanceSettings {
    InstanceSettings {
        idle_timeout_seconds: 0,
        min_replicas: 1,
        max_replicas: 1,
        wake_on_request: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_crash_restart_and_stop() {
    let Some((runner, model)) = runner_and_model() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let h = Harness::new(runner, model).await;

    let t0 = Instant::now();
    let id = h.create_instance(MODEL_ID, settings()).await;
    let ready = h
        .wait_state(id, State::Ready, Duration::from_secs(30))
        .await;
    let took = t0.elapsed();
    println!("deploy to ready: {:.2} s", took.as_secs_f64());
    assert!(
        took < Duration::from_secs(5),
        "deploy took {took:?}\n{}",
        h.timeline(id).await
    );
    assert!(
        ready.running_since.is_some(),
        "running time is metered from ready"
    );

    let route = h.control.routing().get(id).expect("routed once ready");
    assert_eq!(route.replicas.len(), 1);
    let endpoint = route.replicas[0].endpoint.clone();
    assert!(generate(&endpoint).await.contains("\"done\":true"));
    let states: Vec<_> = h
        .events(id)
        .await
        .iter()
        .filter_map(|e| e.to_state)
        .collect();
    assert_eq!(states, [State::Provisioning, State::Starting, State::Ready]);
    let stats = h.control.stats();
    assert_eq!(stats.deploy_seconds.count, 1);
    assert!(stats.instances_by_state.contains(&(State::Ready, 1)));

    // Resource samples arrive within a couple of intervals.
    h.wait_until(
        "resources sampled",
        Duration::from_secs(5),
        id,
        async || {
            h.control
                .replica_resources(id)
                .first()
                .is_some_and(|(_, u)| u.memory_bytes > 0)
        },
    )
    .await;

    // kill -9: the reconciler sees it exit, records it, and launches it again.
    let pid = h.pids(id).await[0];
    let killed = Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    h.wait_until(
        "replica relaunched and serving",
        Duration::from_secs(20),
        id,
        async || {
            let pids = h.pids(id).await;
            pids.len() == 1
                && pids[0] != pid
                && h.control
                    .routing()
                    .get(id)
                    .is_some_and(|r| !r.replicas.is_empty())
        },
    )
    .await;
    println!(
        "kill -9 to serving again: {:.2} s",
        killed.elapsed().as_secs_f64()
    );
    let events = h.events(id).await;
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("exited") && e.message.contains("restarting")),
        "{}",
        h.timeline(id).await
    );
    assert_eq!(
        h.instance(id).await.state,
        State::Ready,
        "{}",
        h.timeline(id).await
    );
    let replica = h.store.list_replicas(id).await.unwrap().remove(0);
    assert_eq!(replica.restarts, 1);
    assert_eq!(h.control.stats().restarts_total, 1);
    // One run per launch of the replica: the killed one closed, the relaunch open,
    // both priced with the instance's compute and findable by their driver refs.
    let runs = h.store.runs_for_instance(id).await.unwrap();
    assert_eq!(runs.len(), 2, "{runs:#?}");
    let compute = h.instance(id).await.compute;
    assert!(runs.iter().all(|r| r.replica_id == replica.id
        && r.owner_id == h.owner.id
        && r.model_id == MODEL_ID
        && r.driver == "local"
        && r.compute == compute));
    let (killed_run, relaunched_run) = (&runs[0], &runs[1]);
    let killed_end = killed_run.ended_at.expect("the killed run is closed");
    assert!(killed_end >= killed_run.started_at);
    assert!(killed_run.driver_ref.contains(&format!("pid={pid}")));
    assert_eq!(relaunched_run.ended_at, None, "the relaunched run is open");
    assert_eq!(relaunched_run.started_at, replica.started_at);
    assert_eq!(relaunched_run.driver_ref, replica.driver_ref);
    assert!(relaunched_run.started_at >= killed_end);
    let endpoint = h.control.routing().get(id).unwrap().replicas[0]
        .endpoint
        .clone();
    assert!(generate(&endpoint).await.contains("\"done\":true"));

    // Stop: route gone first, then the process, then `stopped`.
    let pid = h.pids(id).await[0];
    h.control.set_desired(id, Desired::Stopped).await.unwrap();
    let stopped = h
        .wait_state(id, State::Stopped, Duration::from_secs(15))
        .await;
    assert!(!alive(pid), "runner {pid} still alive after stop");
    assert!(h.control.routing().get(id).is_none());
    assert!(h.store.list_replicas(id).await.unwrap().is_empty());
    assert!(stopped.running_since.is_none() && stopped.running_seconds >= 0);
    let runs = h.store.runs_for_instance(id).await.unwrap();
    assert_eq!(runs.len(), 2, "stopping starts no run: {runs:#?}");
    let stopped_at = runs[1].ended_at.expect("stopping closes the open run");
    assert!(stopped_at >= runs[1].started_at && stopped_at <= stopped.updated_at);
    assert_eq!(runs[0], killed_run.clone(), "a closed run is closed once");
    let states: Vec<_> = h
        .events(id)
        .await
        .iter()
        .filter_map(|e| e.to_state)
        .collect();
    assert!(
        states.ends_with(&[State::Stopping, State::Stopped]),
        "{states:?}"
    );
    assert!(matches!(
        h.control.wake(id, Duration::from_secs(1)).await,
        Err(Error::Stopped)
    ));

    // Started again from stopped: pending → ... → ready, with a new replica and run.
    h.control.start(id).await.unwrap();
    h.wait_state(id, State::Ready, Duration::from_secs(30))
        .await;
    let runs = h.store.runs_for_instance(id).await.unwrap();
    assert_eq!(runs.len(), 3);
    assert_ne!(runs[2].replica_id, replica.id);
    assert_eq!(runs[2].ended_at, None);
    println!("timeline:\n{}", h.timeline(id).await);

    // Deleted: the runs stay (closed) for cost, the log files go with the instance.
    let log_dir = h.dir.path().join("logs").join(id.to_string());
    assert_eq!(
        std::fs::read_dir(&log_dir).unwrap().count(),
        3,
        "one log per launch"
    );
    h.control.set_desired(id, Desired::Deleted).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while h.store.instance(id).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "not deleted:\n{}",
            h.timeline(id).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let runs = h.store.runs_for_instance(id).await.unwrap();
    assert_eq!(runs.len(), 3);
    assert!(runs.iter().all(|r| r.ended_at.is_some()), "{runs:#?}");
    assert!(!log_dir.exists(), "logs of a deleted instance are deleted");
    h.shutdown().await;
}

/// Issue 13 item 16 (the flaky gateway test `long_requests_are_activity`): the idle
/// clock starts when the instance is ready. It counted from the last activity before the
/// deploy, so a deploy or wake slower than the idle timeout was put to sleep the moment
/// it became ready, and its replica stopped under the request about to use it (which then
/// saw `IncompleteMessage` or a refused connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_idle_after_a_slow_deploy() {
    let Some((runner, model)) = runner_and_model() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let h = Harness::new(runner, model).await;
    let timeout = Duration::from_secs(3);
    let id = h
        .create_instance_idle_since(
            MODEL_ID,
            InstanceSettings {
                idle_timeout_seconds: 3,
                ..settings()
            },
            // As if the deploy had taken ten minutes.
            Utc::now() - chrono::Duration::minutes(10),
        )
        .await;
    h.wait_state(id, State::Ready, Duration::from_secs(30))
        .await;
    let ready = Instant::now();
    while ready.elapsed() < timeout / 3 {
        let inst = h.instance(id).await;
        assert_eq!(
            (inst.desired, inst.state),
            (Desired::Running, State::Ready),
            "idled as it became ready\n{}",
            h.timeline(id).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nobody calls it: it does go to sleep, a timeout after it became ready.
    h.wait_state(id, State::Sleeping, Duration::from_secs(15))
        .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sleep_then_wake_on_request() {
    let Some((runner, model)) = runner_and_model() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let h = Harness::new(runner, model).await;
    let id = h
        .create_instance(
            MODEL_ID,
            InstanceSettings {
                idle_timeout_seconds: 2,
                ..settings()
            },
        )
        .await;
    h.wait_state(id, State::Ready, Duration::from_secs(30))
        .await;
    let pid = h.pids(id).await[0];

    // A request through the routing table counts as activity and postpones sleep.
    let route = h.control.routing().get(id).unwrap();
    drop(route.acquire(None));
    let asleep = h
        .wait_state(id, State::Sleeping, Duration::from_secs(15))
        .await;
    assert_eq!(asleep.desired, Desired::Sleeping);
    assert!(!alive(pid), "runner still alive while sleeping");
    assert!(h.control.routing().get(id).is_none());
    assert!(
        h.events(id)
            .await
            .iter()
            .any(|e| e.message.starts_with("idle for")),
        "{}",
        h.timeline(id).await
    );
    assert_eq!(h.control.stats().idle_shutdowns_total, 1);

    let t0 = Instant::now();
    let route = h
        .control
        .wake(id, Duration::from_secs(120))
        .await
        .expect("woken");
    let woke = t0.elapsed();
    let reply = generate(&route.replicas[0].endpoint).await;
    println!(
        "wake to ready: {:.2} s; to first answer: {:.2} s",
        woke.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    assert!(reply.contains("\"done\":true"));
    assert!(woke < Duration::from_secs(5), "wake took {woke:?}");
    let inst = h.instance(id).await;
    assert_eq!((inst.desired, inst.state), (Desired::Running, State::Ready));
    assert!(
        h.events(id)
            .await
            .iter()
            .any(|e| e.message == "woken by a request")
    );
    assert_eq!(h.control.stats().wakes_total, 1);
    assert_eq!(
        h.control.stats().deploy_seconds.count,
        2,
        "the wake is timed too"
    );

    // Without wake-on-request an idle instance stops, and the gateway gets a clear error.
    let mut s = h.instance(id).await.settings;
    s.wake_on_request = false;
    h.store
        .update_instance_settings(
            id,
            &s,
            &corral_core::Admission::unlimited(),
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    h.wait_state(id, State::Stopped, Duration::from_secs(15))
        .await;
    assert!(matches!(
        h.control.wake(id, Duration::from_secs(1)).await,
        Err(Error::Stopped)
    ));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopts_running_replicas_after_a_restart_and_stops_orphans() {
    let Some((runner, model)) = runner_and_model() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let mut h = Harness::new(runner, model.clone()).await;
    let id = h.create_instance(MODEL_ID, settings()).await;
    h.wait_state(id, State::Ready, Duration::from_secs(30))
        .await;
    let before = h.store.list_replicas(id).await.unwrap();
    let pid = pid_of(&before[0].driver_ref).unwrap();

    // The server goes away; its replica keeps running. Meanwhile a process appears that
    // no row records (a launch whose bookkeeping was lost).
    h.stop_control().await;
    assert!(alive(pid), "replicas outlive the control loop");
    let orphan = h
        .driver
        .launch(&LaunchSpec {
            instance_id: id,
            replica_id: Uuid::now_v7(),
            launch: 0,
            model_id: MODEL_ID.into(),
            source: corral_core::ModelSource::File {
                path: model.display().to_string(),
            },
            model_path: Some(model.clone()),
            compute: h.instance(id).await.compute,
            runtime: Runtime::CorralRunner,
            parallel: 1,
            context: 256,
        })
        .await
        .unwrap();
    let orphan_pid = pid_of(&orphan.driver_ref).unwrap();
    assert!(alive(orphan_pid));

    let t0 = Instant::now();
    h.restart_control().await;
    h.wait_until(
        "adopted replica routed",
        Duration::from_secs(10),
        id,
        async || {
            h.control
                .routing()
                .get(id)
                .is_some_and(|r| !r.replicas.is_empty())
        },
    )
    .await;
    println!(
        "restart to routed again: {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let after = h.store.list_replicas(id).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].id, before[0].id, "same replica");
    assert_eq!(
        pid_of(&after[0].driver_ref),
        Some(pid),
        "same process, no relaunch"
    );
    assert_eq!(after[0].restarts, 0);
    assert_eq!(h.instance(id).await.state, State::Ready);
    let runs = h.store.runs_for_instance(id).await.unwrap();
    assert_eq!(runs.len(), 1, "adoption keeps the run going: {runs:#?}");
    assert_eq!(runs[0].ended_at, None);
    let endpoint = h.control.routing().get(id).unwrap().replicas[0]
        .endpoint
        .clone();
    assert!(generate(&endpoint).await.contains("\"done\":true"));
    h.wait_until("orphan stopped", Duration::from_secs(10), id, async || {
        !alive(orphan_pid)
    })
    .await;
    let timeline = h.timeline(id).await;
    assert!(timeline.contains("adopted replica"), "{timeline}");
    assert!(timeline.contains("without a record"), "{timeline}");

    // A replica that died while the server was down is recorded and replaced.
    h.stop_control().await;
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    h.wait_until("killed", Duration::from_secs(5), id, async || !alive(pid))
        .await;
    h.restart_control().await;
    h.wait_until(
        "replacement serving",
        Duration::from_secs(20),
        id,
        async || {
            h.control
                .routing()
                .get(id)
                .is_some_and(|r| !r.replicas.is_empty())
        },
    )
    .await;
    let timeline = h.timeline(id).await;
    assert!(
        timeline.contains("lost while the server was down"),
        "{timeline}"
    );
    assert_ne!(h.pids(id).await, vec![pid]);
    // The lost replica's run was closed at adoption; its replacement has its own.
    let runs = h.store.runs_for_instance(id).await.unwrap();
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert_eq!(pid_of(&runs[0].driver_ref), Some(pid));
    assert!(runs[0].ended_at.is_some());
    assert_ne!(runs[1].replica_id, runs[0].replica_id);
    assert_eq!(runs[1].ended_at, None);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscales_on_in_flight_requests() {
    let Some((runner, model)) = runner_and_model() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let h = Harness::new(runner, model).await;
    let id = h
        .create_instance(
            MODEL_ID,
            InstanceSettings {
                max_replicas: 2,
                ..settings()
            },
        )
        .await;
    h.wait_state(id, State::Ready, Duration::from_secs(30))
        .await;

    // Hold four request slots open: 4 in flight on one replica is over the threshold of 3.
    let route = h.control.routing().get(id).unwrap();
    let held: Vec<_> = (0..4).map(|_| route.acquire(None).unwrap()).collect();
    h.wait_until(
        "scaled to two serving replicas",
        Duration::from_secs(30),
        id,
        async || {
            h.control
                .routing()
                .get(id)
                .is_some_and(|r| r.replicas.len() == 2)
        },
    )
    .await;
    h.wait_state(id, State::Ready, Duration::from_secs(10))
        .await;
    assert_eq!(h.instance(id).await.target_replicas, 2);
    let timeline = h.timeline(id).await;
    assert!(timeline.contains("autoscale up"), "{timeline}");
    assert!(
        timeline.contains("Some(Ready) → Some(Scaling)")
            || timeline.contains("Ready) → Some(Scaling)"),
        "{timeline}"
    );

    // Quiet again: back to one replica after the down window.
    drop(held);
    h.wait_until(
        "scaled back to one",
        Duration::from_secs(30),
        id,
        async || h.store.list_replicas(id).await.unwrap().len() == 1,
    )
    .await;
    h.wait_state(id, State::Ready, Duration::from_secs(10))
        .await;
    assert_eq!(h.instance(id).await.target_replicas, 1);
    assert_eq!(h.control.routing().get(id).unwrap().replicas.len(), 1);
    let timeline = h.timeline(id).await;
    assert!(timeline.contains("autoscale down"), "{timeline}");
    println!("timeline:\n{timeline}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_serves_fails_the_instance_after_back_off() {
    let Some((runner, model)) = runner_and_model() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let h = Harness::new(runner, model).await;
    // Not a GGUF: the runner exits at once, every time.
    let junk = h.dir.path().join("junk.gguf");
    std::fs::write(&junk, b"not a model").unwrap();
    h.store
        .upsert_model(&common::catalog_entry("junk:1b", &junk))
        .await
        .unwrap();
    let id = h.create_instance("junk:1b", settings()).await;
    let failed = h
        .wait_state(id, State::Failed, Duration::from_secs(30))
        .await;
    let reason = failed.state_reason.unwrap_or_default();
    assert!(reason.contains("5 times in a row"), "{reason}");
    let restarts: Vec<_> = h
        .events(id)
        .await
        .into_iter()
        .filter(|e| e.message.contains("restarting in"))
        .map(|e| e.message)
        .collect();
    assert_eq!(restarts.len(), 5, "{restarts:#?}");
    assert!(
        restarts[1].contains("restarting in 0.4 s"),
        "back-off doubles: {restarts:#?}"
    );
    assert!(
        h.store.list_replicas(id).await.unwrap().is_empty(),
        "nothing left running"
    );
    assert!(h.control.routing().get(id).is_none());
    let err = h
        .control
        .wake(id, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Failed(_)), "{err}");

    // Failed stays failed until the user starts it again; then it is retried.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.instance(id).await.state, State::Failed);
    let restarted = h.control.start(id).await.unwrap();
    assert_eq!(restarted.state, State::Pending);
    h.wait_state(id, State::Failed, Duration::from_secs(30))
        .await;
    h.shutdown().await;
}

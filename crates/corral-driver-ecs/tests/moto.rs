//! The ECS driver against a real moto server (the AWS emulator) through the real SDK.
//!
//! Run with `scripts/with-moto.sh cargo test -p corral-driver-ecs`, which starts moto and
//! sets `AWS_ENDPOINT_URL`. Without it these tests fail, unless `CORRAL_SKIP_MOTO=1`.
//!
//! Moto keeps one state per server, so each test makes its own cluster and log group.
//! No cluster name may contain another: moto's ListTasks matches the cluster by substring.
//! Its task lifecycle is global: tasks are pinned RUNNING by the state manager (moto
//! otherwise moves a task on at every DescribeTasks), which suits every test here.

use std::time::Duration;

use aws_sdk_ecs::types::{Compatibility, NetworkMode, ResourceType, Task};
use corral_core::{ComputeSpec, ComputeType, ModelSource};
use corral_driver_ecs::{
    CONTAINER, EcsConfig, EcsDriver, LaunchMode, TAG_INSTANCE, TAG_REPLICA, service::service_name,
};
use corral_drivers::{ComputeDriver, LaunchSpec, Observed, ReplicaRef, Runtime};
use uuid::Uuid;

const REGION: &str = "us-east-1";

/// moto's endpoint, or None when the caller chose to skip these tests.
fn moto() -> Option<String> {
    match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url) if !url.is_empty() => Some(url.trim_end_matches('/').to_string()),
        _ if std::env::var("CORRAL_SKIP_MOTO").as_deref() == Ok("1") => {
            eprintln!("CORRAL_SKIP_MOTO=1: skipping the moto tests");
            None
        }
        _ => panic!(
            "these tests need a moto server: run them as `scripts/with-moto.sh cargo test -p \
             corral-driver-ecs` (moto comes from `scripts/venv.sh`), or set CORRAL_SKIP_MOTO=1"
        ),
    }
}

/// An EC2 Query API call with a well-formed but unsigned Authorization header: moto does
/// not check signatures, but routes the request by the service named in it. Returns the
/// XML response (pulling in an EC2 SDK crate for three calls would cost minutes of build).
async fn ec2(endpoint: &str, params: &str) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{endpoint}/"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header(
            "Authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential=test/20260101/{REGION}/ec2/aws4_request, \
                 SignedHeaders=host, Signature=0"
            ),
        )
        .body(format!("{params}&Version=2016-11-15"))
        .send()
        .await
        .expect("moto answers EC2 calls");
    let status = resp.status();
    let body = resp.text().await.expect("EC2 response body");
    assert!(status.is_success(), "EC2 {params}: {status}: {body}");
    body
}

/// Every `<tag>value</tag>` in an XML document, in order.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split(&close).next())
        .map(str::to_string)
        .collect()
}

struct Fixture {
    endpoint: String,
    cfg: EcsConfig,
    driver: EcsDriver,
    ecs: aws_sdk_ecs::Client,
    logs: aws_sdk_cloudwatchlogs::Client,
}

async fn fixture(name: &str, gpu: bool) -> Option<Fixture> {
    fixture_with(name, gpu, LaunchMode::Task, Duration::from_secs(60)).await
}

async fn fixture_with(
    name: &str,
    gpu: bool,
    launch: LaunchMode,
    service_start_timeout: Duration,
) -> Option<Fixture> {
    let endpoint = moto()?;
    // Keep RUNNING tasks RUNNING until StopTask (see the module docs).
    let pinned = reqwest::Client::new()
        .post(format!("{endpoint}/moto-api/state-manager/set-transition"))
        .body(r#"{"model_name": "ecs::task", "transition": {"progression": "manual", "times": 1000000}}"#)
        .send()
        .await
        .expect("moto's state manager answers");
    assert!(pinned.status().is_success(), "set-transition: {pinned:?}");

    let subnets = xml_values(&ec2(&endpoint, "Action=DescribeSubnets").await, "subnetId");
    let groups = xml_values(
        &ec2(
            &endpoint,
            "Action=DescribeSecurityGroups&Filter.1.Name=group-name&Filter.1.Value.1=default",
        )
        .await,
        "groupId",
    );
    assert!(
        !subnets.is_empty() && !groups.is_empty(),
        "moto's default VPC"
    );

    let cfg = EcsConfig {
        cluster: format!("corral-{name}"),
        subnets: vec![subnets[0].clone()],
        security_groups: vec![groups[0].clone()],
        assign_public_ip: false,
        runtime_image: EcsConfig::DEFAULT_RUNTIME_IMAGE.into(),
        runner_image: None,
        execution_role_arn: "arn:aws:iam::123456789012:role/corral-execution".into(),
        task_role_arn: None,
        log_group: format!("/corral/{name}"),
        region: REGION.into(),
        gpu_capacity_provider: None,
        gpu_instance_types: vec![],
        // One capacity provider per GPU type, as deploy/aws's compute stack makes them.
        gpu_capacity_providers: if gpu {
            [
                ("g5.xlarge".to_string(), "corral-gpu".to_string()),
                ("g5.12xlarge".to_string(), "corral-gpu-12".to_string()),
            ]
            .into()
        } else {
            Default::default()
        },
        endpoint_url: Some(endpoint.clone()),
        launch,
        service_start_timeout,
        missing_grace: EcsConfig::DEFAULT_MISSING_GRACE,
    };
    let driver = EcsDriver::new(cfg.clone()).await.expect("driver");
    let sdk = corral_driver_ecs::sdk_config(REGION, Some(&endpoint)).await;
    let ecs = aws_sdk_ecs::Client::new(&sdk);
    let logs = aws_sdk_cloudwatchlogs::Client::new(&sdk);
    ecs.create_cluster()
        .cluster_name(&cfg.cluster)
        .send()
        .await
        .expect("CreateCluster");
    logs.create_log_group()
        .log_group_name(&cfg.log_group)
        .send()
        .await
        .expect("CreateLogGroup");
    Some(Fixture {
        endpoint,
        cfg,
        driver,
        ecs,
        logs,
    })
}

fn spec(compute: ComputeSpec) -> LaunchSpec {
    LaunchSpec {
        instance_id: Uuid::now_v7(),
        replica_id: Uuid::now_v7(),
        launch: 0,
        model_id: "smollm2:135m".into(),
        source: ModelSource::Ollama {
            name: "smollm2:135m".into(),
        },
        model_path: None,
        compute,
        runtime: Runtime::Ollama,
        parallel: 2,
        context: 4096,
    }
}

fn fargate(cpu: f64, memory: u32, spot: bool) -> ComputeSpec {
    ComputeSpec {
        compute_type: ComputeType::Fargate,
        cpu,
        memory,
        gpu_count: 0,
        instance_type: None,
        spot,
    }
}

impl Fixture {
    async fn task(&self, r: &ReplicaRef) -> Task {
        self.ecs
            .describe_tasks()
            .cluster(&self.cfg.cluster)
            .tasks(&r.driver_ref)
            .include(aws_sdk_ecs::types::TaskField::Tags)
            .send()
            .await
            .expect("DescribeTasks")
            .tasks()
            .first()
            .cloned()
            .expect("the task exists")
    }

    async fn definition(&self, task: &Task) -> aws_sdk_ecs::types::TaskDefinition {
        self.ecs
            .describe_task_definition()
            .task_definition(task.task_definition_arn().expect("definition ARN"))
            .send()
            .await
            .expect("DescribeTaskDefinition")
            .task_definition()
            .cloned()
            .expect("definition")
    }

    /// The security groups of the task's ENI, from EC2.
    async fn eni_groups(&self, task: &Task) -> Vec<String> {
        let eni = task
            .attachments()
            .iter()
            .flat_map(|a| a.details())
            .find(|d| d.name() == Some("networkInterfaceId"))
            .and_then(|d| d.value())
            .expect("an ENI")
            .to_string();
        xml_values(
            &ec2(
                &self.endpoint,
                &format!("Action=DescribeNetworkInterfaces&NetworkInterfaceId.1={eni}"),
            )
            .await,
            "groupId",
        )
    }
}

fn subnet_of(task: &Task) -> Option<&str> {
    task.attachments()
        .iter()
        .flat_map(|a| a.details())
        .find(|d| d.name() == Some("subnetId"))
        .and_then(|d| d.value())
}

fn tag<'a>(task: &'a Task, key: &str) -> Option<&'a str> {
    task.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

#[tokio::test]
async fn fargate_replica_runs_logs_and_stops() {
    let Some(f) = fixture("fargate", false).await else {
        return;
    };
    let s = spec(fargate(0.5, 2048, false));
    let r = f.driver.launch(&s).await.expect("launch");
    assert!(r.driver_ref.starts_with("arn:aws:ecs:"), "{}", r.driver_ref);

    let task = f.task(&r).await;
    assert_eq!(task.capacity_provider_name(), Some("FARGATE"));
    assert_eq!(task.started_by(), Some(s.replica_id.to_string().as_str()));
    assert_eq!(
        tag(&task, TAG_REPLICA),
        Some(s.replica_id.to_string().as_str())
    );
    assert_eq!(
        tag(&task, TAG_INSTANCE),
        Some(s.instance_id.to_string().as_str())
    );
    assert_eq!(subnet_of(&task), Some(f.cfg.subnets[0].as_str()));
    assert_eq!(f.eni_groups(&task).await, f.cfg.security_groups);

    let td = f.definition(&task).await;
    assert_eq!(td.family(), Some("corral-smollm2-135m-512-2048"));
    assert_eq!(td.cpu(), Some("512"));
    assert_eq!(td.memory(), Some("2048"));
    assert_eq!(td.network_mode(), Some(&NetworkMode::Awsvpc));
    assert_eq!(td.requires_compatibilities(), [Compatibility::Fargate]);
    assert_eq!(
        td.execution_role_arn(),
        Some(f.cfg.execution_role_arn.as_str())
    );
    let c = &td.container_definitions()[0];
    assert_eq!(c.name(), Some(CONTAINER));
    assert_eq!(c.image(), Some("ollama/ollama:latest"));
    assert_eq!(c.memory(), Some(2048));
    assert_eq!(c.port_mappings()[0].container_port(), Some(11434));
    let env = |k: &str| {
        c.environment()
            .iter()
            .find(|kv| kv.name() == Some(k))
            .and_then(|kv| kv.value())
    };
    assert_eq!(env("OLLAMA_HOST"), Some("0.0.0.0:11434"));
    assert_eq!(env("CORRAL_MODEL"), Some("smollm2:135m"));
    assert_eq!(env("CORRAL_OLLAMA_PULL"), Some("smollm2:135m"));
    let log = c.log_configuration().expect("log configuration");
    assert_eq!(log.log_driver().as_str(), "awslogs");
    let opts = log.options().expect("awslogs options");
    assert_eq!(opts["awslogs-group"], f.cfg.log_group);
    assert_eq!(opts["awslogs-region"], REGION);
    assert_eq!(opts["awslogs-stream-prefix"], s.instance_id.to_string());

    // Running, at the ENI's private address.
    let endpoint = match f.driver.observe(&r).await.expect("observe") {
        Observed::Running { endpoint } => endpoint,
        other => panic!("expected Running, got {other:?}"),
    };
    let ip = endpoint
        .strip_prefix("http://")
        .and_then(|e| e.strip_suffix(":11434"))
        .unwrap_or_else(|| panic!("endpoint {endpoint}"));
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "{endpoint}");

    // No stream yet: nothing to read, and no error.
    let empty = f.driver.logs(&r, None, 10).await.expect("logs");
    assert!(empty.lines.is_empty());

    // What the awslogs driver would write, where it would write it.
    let task_id = r.driver_ref.rsplit('/').next().unwrap();
    let stream = format!("{}/{CONTAINER}/{task_id}", s.instance_id);
    f.logs
        .create_log_stream()
        .log_group_name(&f.cfg.log_group)
        .log_stream_name(&stream)
        .send()
        .await
        .expect("CreateLogStream");
    let put = |lines: Vec<&'static str>| {
        let now = chrono::Utc::now().timestamp_millis();
        f.logs
            .put_log_events()
            .log_group_name(&f.cfg.log_group)
            .log_stream_name(&stream)
            .set_log_events(Some(
                lines
                    .into_iter()
                    .enumerate()
                    .map(|(i, m)| {
                        aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                            .timestamp(now + i as i64)
                            .message(m)
                            .build()
                            .unwrap()
                    })
                    .collect(),
            ))
            .send()
    };
    put(vec!["one", "two", "three"])
        .await
        .expect("PutLogEvents");
    let page = f.driver.logs(&r, None, 2).await.expect("logs");
    let text: Vec<&str> = page.lines.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(text, ["two", "three"], "the last two lines");
    assert!(
        page.lines
            .iter()
            .all(|l| l.replica_id == s.replica_id && l.at.is_some())
    );
    let cursor = page.next.expect("a cursor to follow");
    put(vec!["four"]).await.expect("PutLogEvents");
    let page = f.driver.logs(&r, Some(&cursor), 100).await.expect("follow");
    let text: Vec<&str> = page.lines.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(text, ["four"], "only what came after the cursor");

    // Stop; again is fine.
    f.driver
        .stop(&r, Duration::from_secs(5))
        .await
        .expect("stop");
    f.driver
        .stop(&r, Duration::from_secs(5))
        .await
        .expect("stop again");
    match f.driver.observe(&r).await.expect("observe") {
        Observed::Exited { reason } => assert!(reason.contains("stopped by Corral"), "{reason}"),
        other => panic!("expected Exited, got {other:?}"),
    }

    // A task ECS does not list: starting until the grace is over (see
    // item2_missing_task_is_starting_within_the_grace_then_lost), lost after it.
    let lost = ReplicaRef {
        driver_ref: r
            .driver_ref
            .replace(task_id, "00000000000000000000000000000000"),
        ..r.clone()
    };
    assert_eq!(
        f.driver.observe(&lost).await.expect("observe"),
        Observed::Starting
    );
}

#[tokio::test]
async fn spot_reuses_the_definition_and_orphans_are_found() {
    let Some(f) = fixture("spot", false).await else {
        return;
    };
    let a = spec(fargate(0.25, 512, true));
    let b = LaunchSpec {
        replica_id: Uuid::now_v7(),
        ..a.clone()
    };
    let ra = f.driver.launch(&a).await.expect("launch a");
    let rb = f.driver.launch(&b).await.expect("launch b");
    let (ta, tb) = (f.task(&ra).await, f.task(&rb).await);
    assert_eq!(ta.capacity_provider_name(), Some("FARGATE_SPOT"));
    assert_eq!(
        ta.task_definition_arn(),
        tb.task_definition_arn(),
        "a replica of the same instance reuses the revision"
    );

    let orphans = f
        .driver
        .orphans(std::slice::from_ref(&ra))
        .await
        .expect("orphans");
    assert_eq!(orphans, std::slice::from_ref(&rb));
    f.driver.stop(&rb, Duration::ZERO).await.expect("stop");
    let orphans = f
        .driver
        .orphans(std::slice::from_ref(&ra))
        .await
        .expect("orphans");
    assert!(
        orphans.is_empty(),
        "stopped tasks are no orphans: {orphans:?}"
    );
}

#[tokio::test]
async fn gpu_replica_uses_the_capacity_provider() {
    let Some(f) = fixture("gpu", true).await else {
        return;
    };
    // A g5.xlarge for the capacity provider to have placed the task on.
    let run = ec2(
        &f.endpoint,
        "Action=RunInstances&ImageId=ami-12c6146b&MinCount=1&MaxCount=1&InstanceType=g5.xlarge",
    )
    .await;
    let instance = xml_values(&run, "instanceId").remove(0);
    f.ecs
        .register_container_instance()
        .cluster(&f.cfg.cluster)
        .instance_identity_document(format!(r#"{{"instanceId": "{instance}"}}"#))
        .send()
        .await
        .expect("RegisterContainerInstance");

    // Within moto's container instance (4096 CPU units, 7482 MiB).
    let s = spec(ComputeSpec {
        compute_type: ComputeType::Gpu,
        cpu: 4.0,
        memory: 6144,
        gpu_count: 1,
        instance_type: Some("g5.xlarge".into()),
        spot: false,
    });
    let r = f.driver.launch(&s).await.expect("launch");
    let task = f.task(&r).await;
    assert_eq!(task.capacity_provider_name(), Some("corral-gpu"));
    assert_eq!(subnet_of(&task), Some(f.cfg.subnets[0].as_str()));

    let td = f.definition(&task).await;
    assert_eq!(td.family(), Some("corral-smollm2-135m-g5-xlarge-1gpu"));
    assert_eq!(td.requires_compatibilities(), [Compatibility::Ec2]);
    assert_eq!(td.network_mode(), Some(&NetworkMode::Awsvpc));
    let placement = &td.placement_constraints()[0];
    assert_eq!(
        placement.expression(),
        Some("attribute:ecs.instance-type == g5.xlarge")
    );
    let c = &td.container_definitions()[0];
    let gpu = &c.resource_requirements()[0];
    assert_eq!(gpu.r#type(), &ResourceType::Gpu);
    assert_eq!(gpu.value(), "1");
    assert_eq!(c.memory(), Some(6144));
    assert_eq!(f.eni_groups(&task).await, f.cfg.security_groups);
    let log = c.log_configuration().expect("log configuration");
    assert_eq!(log.log_driver().as_str(), "awslogs");
    let opts = log.options().expect("awslogs options");
    assert_eq!(opts["awslogs-group"], f.cfg.log_group);
    assert_eq!(opts["awslogs-stream-prefix"], s.instance_id.to_string());

    let endpoint = match f.driver.observe(&r).await.expect("observe") {
        Observed::Running { endpoint } => endpoint,
        other => panic!("expected Running, got {other:?}"),
    };
    let ip = endpoint
        .strip_prefix("http://")
        .and_then(|e| e.strip_suffix(":11434"))
        .unwrap_or_else(|| panic!("endpoint {endpoint}"));
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "{endpoint}");
    let now = chrono::Utc::now().timestamp_millis();
    f.put_logs(
        s.instance_id,
        &r,
        &[(now, "corral: model smollm2:135m is ready".into())],
    )
    .await;
    let page = f.driver.logs(&r, None, 10).await.expect("logs");
    let text: Vec<&str> = page.lines.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(text, ["corral: model smollm2:135m is ready"]);
    f.driver.stop(&r, Duration::ZERO).await.expect("stop");
    assert!(matches!(
        f.driver.observe(&r).await.expect("observe"),
        Observed::Exited { .. }
    ));

    // Another type goes to its own capacity provider, with its GPU count.
    let s = spec(ComputeSpec {
        compute_type: ComputeType::Gpu,
        cpu: 4.0,
        memory: 6144,
        gpu_count: 4,
        instance_type: Some("g5.12xlarge".into()),
        spot: false,
    });
    let r = f.driver.launch(&s).await.expect("launch g5.12xlarge");
    let task = f.task(&r).await;
    assert_eq!(task.capacity_provider_name(), Some("corral-gpu-12"));
    let td = f.definition(&task).await;
    assert_eq!(td.family(), Some("corral-smollm2-135m-g5-12xlarge-4gpu"));
    assert_eq!(
        td.placement_constraints()[0].expression(),
        Some("attribute:ecs.instance-type == g5.12xlarge")
    );
    let gpu = &td.container_definitions()[0].resource_requirements()[0];
    assert_eq!((gpu.r#type(), gpu.value()), (&ResourceType::Gpu, "4"));
    f.driver.stop(&r, Duration::ZERO).await.expect("stop");
}

/// Plays the ECS service scheduler for one cluster until aborted, as moto does not:
/// its CreateService and UpdateService only record desiredCount, and no task ever starts
/// for a service. Every 100 ms, for each ACTIVE service, it starts tasks the way ECS does
/// (RunTask with the service's definition and network, `group` = `service:<name>`, the
/// service's tags when it propagates them) until desiredCount are to run, and stops the
/// newest ones above it (ECS picks which by its own rules; Corral never relies on which).
/// moto also drops a service's capacityProviderStrategy, so these tasks run on FARGATE.
fn scheduler(ecs: aws_sdk_ecs::Client, cluster: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Ok(list) = ecs.list_services().cluster(&cluster).send().await else {
                continue;
            };
            if list.service_arns().is_empty() {
                continue;
            }
            let Ok(out) = ecs
                .describe_services()
                .cluster(&cluster)
                .set_services(Some(list.service_arns().to_vec()))
                .include(aws_sdk_ecs::types::ServiceField::Tags)
                .send()
                .await
            else {
                continue;
            };
            for svc in out
                .services()
                .iter()
                .filter(|s| s.status() == Some("ACTIVE"))
            {
                let group = format!("service:{}", svc.service_name().unwrap_or_default());
                let live = service_tasks(&ecs, &cluster, &group).await;
                let desired = svc.desired_count() as usize;
                if live.len() < desired {
                    let tags = (svc.propagate_tags()
                        == Some(&aws_sdk_ecs::types::PropagateTags::Service))
                    .then(|| svc.tags().to_vec());
                    ecs.run_task()
                        .cluster(&cluster)
                        .task_definition(svc.task_definition().unwrap_or_default())
                        .count((desired - live.len()) as i32)
                        .group(&group)
                        .started_by("ecs-svc/1234567890")
                        .capacity_provider_strategy(
                            aws_sdk_ecs::types::CapacityProviderStrategyItem::builder()
                                .capacity_provider("FARGATE")
                                .build()
                                .unwrap(),
                        )
                        .set_network_configuration(svc.network_configuration().cloned())
                        .set_tags(tags)
                        .send()
                        .await
                        .expect("the scheduler's RunTask");
                }
                for extra in live.iter().rev().take(live.len().saturating_sub(desired)) {
                    ecs.stop_task()
                        .cluster(&cluster)
                        .task(extra.task_arn().unwrap())
                        .reason("scaling in")
                        .send()
                        .await
                        .expect("the scheduler's StopTask");
                }
            }
        }
    })
}

/// The tasks of a service (by group: moto's ListTasks ignores serviceName) not stopped.
async fn service_tasks(ecs: &aws_sdk_ecs::Client, cluster: &str, group: &str) -> Vec<Task> {
    let arns = ecs
        .list_tasks()
        .cluster(cluster)
        .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
        .send()
        .await
        .expect("ListTasks")
        .task_arns()
        .to_vec();
    if arns.is_empty() {
        return vec![];
    }
    ecs.describe_tasks()
        .cluster(cluster)
        .set_tasks(Some(arns))
        .include(aws_sdk_ecs::types::TaskField::Tags)
        .send()
        .await
        .expect("DescribeTasks")
        .tasks()
        .iter()
        .filter(|t| t.group() == Some(group) && t.last_status() != Some("STOPPED"))
        .cloned()
        .collect()
}

impl Fixture {
    /// The instance's service: (status, desiredCount), None when there is none.
    async fn service(&self, instance_id: Uuid) -> Option<(String, i32)> {
        self.ecs
            .describe_services()
            .cluster(&self.cfg.cluster)
            .services(service_name(instance_id))
            .send()
            .await
            .expect("DescribeServices")
            .services()
            .first()
            .map(|s| {
                (
                    s.status().unwrap_or_default().to_string(),
                    s.desired_count(),
                )
            })
    }

    /// Waits (5 s at most) until the instance's service has `n` tasks to run.
    async fn wait_for_tasks(&self, instance_id: Uuid, n: usize) -> Vec<Task> {
        let group = format!("service:{}", service_name(instance_id));
        for _ in 0..50 {
            let tasks = service_tasks(&self.ecs, &self.cfg.cluster, &group).await;
            if tasks.len() == n {
                return tasks;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the service never had {n} tasks");
    }
}

#[tokio::test]
async fn service_mode_scales_claims_and_deletes_the_service() {
    let Some(f) = fixture_with(
        "service",
        false,
        LaunchMode::Service,
        Duration::from_secs(20),
    )
    .await
    else {
        return;
    };
    let ecs_scheduler = scheduler(f.ecs.clone(), f.cfg.cluster.clone());
    let s1 = spec(fargate(0.5, 2048, false));
    let instance = s1.instance_id;
    let r1 = f.driver.launch(&s1).await.expect("launch 1");
    assert_eq!(f.service(instance).await, Some(("ACTIVE".into(), 1)));
    let t1 = f.task(&r1).await;
    let service = service_name(instance);
    assert_eq!(t1.group(), Some(format!("service:{service}").as_str()));
    assert_eq!(
        tag(&t1, TAG_REPLICA),
        Some(s1.replica_id.to_string().as_str()),
        "the replica claimed the task"
    );
    assert_eq!(tag(&t1, TAG_INSTANCE), Some(instance.to_string().as_str()));
    assert_eq!(subnet_of(&t1), Some(f.cfg.subnets[0].as_str()));
    let td = f.definition(&t1).await;
    assert_eq!(td.family(), Some("corral-smollm2-135m-512-2048"));
    assert_eq!(td.cpu(), Some("512"));
    match f.driver.observe(&r1).await.expect("observe") {
        Observed::Running { endpoint } => assert!(endpoint.ends_with(":11434"), "{endpoint}"),
        other => panic!("expected Running, got {other:?}"),
    }

    // A second replica: desiredCount 2, another task.
    let s2 = LaunchSpec {
        replica_id: Uuid::now_v7(),
        ..s1.clone()
    };
    let r2 = f.driver.launch(&s2).await.expect("launch 2");
    assert_ne!(r1.driver_ref, r2.driver_ref);
    assert_eq!(f.service(instance).await, Some(("ACTIVE".into(), 2)));
    // A launch repeated (after a crash) finds the replica's task; the count stays.
    let again = f.driver.launch(&s1).await.expect("launch 1 again");
    assert_eq!(again, r1);
    assert_eq!(f.service(instance).await, Some(("ACTIVE".into(), 2)));

    let orphans = f
        .driver
        .orphans(&[r1.clone(), r2.clone()])
        .await
        .expect("orphans");
    assert!(orphans.is_empty(), "{orphans:?}");
    let orphans = f
        .driver
        .orphans(std::slice::from_ref(&r1))
        .await
        .expect("orphans");
    assert_eq!(orphans, std::slice::from_ref(&r2));

    // A count raised by a launch that never claimed its task: the next launch takes
    // that task instead of asking for another.
    f.ecs
        .update_service()
        .cluster(&f.cfg.cluster)
        .service(&service)
        .desired_count(3)
        .send()
        .await
        .expect("UpdateService");
    let tasks = f.wait_for_tasks(instance, 3).await;
    let unclaimed = tasks
        .iter()
        .find(|t| tag(t, TAG_REPLICA).is_none())
        .and_then(|t| t.task_arn())
        .expect("an unclaimed task")
        .to_string();
    let s3 = LaunchSpec {
        replica_id: Uuid::now_v7(),
        ..s1.clone()
    };
    let r3 = f.driver.launch(&s3).await.expect("launch 3");
    assert_eq!(r3.driver_ref, unclaimed);
    assert_eq!(f.service(instance).await, Some(("ACTIVE".into(), 3)));

    // Stopping a replica stops its own task and lowers the count.
    f.driver.stop(&r1, Duration::ZERO).await.expect("stop 1");
    assert!(matches!(
        f.driver.observe(&r1).await.expect("observe"),
        Observed::Exited { .. }
    ));
    assert_eq!(f.service(instance).await, Some(("ACTIVE".into(), 2)));
    let left: Vec<String> = f
        .wait_for_tasks(instance, 2)
        .await
        .iter()
        .filter_map(|t| t.task_arn().map(String::from))
        .collect();
    assert!(left.contains(&r2.driver_ref) && left.contains(&r3.driver_ref));
    assert!(matches!(
        f.driver.observe(&r2).await.expect("observe"),
        Observed::Running { .. }
    ));

    // The last replica takes the service with it.
    f.driver.stop(&r2, Duration::ZERO).await.expect("stop 2");
    assert_eq!(f.service(instance).await, Some(("ACTIVE".into(), 1)));
    f.driver.stop(&r3, Duration::ZERO).await.expect("stop 3");
    assert_eq!(
        f.service(instance).await.map(|s| s.0),
        Some("INACTIVE".into())
    );
    f.driver
        .stop(&r3, Duration::ZERO)
        .await
        .expect("stop 3 again");
    ecs_scheduler.abort();
}

#[tokio::test]
async fn service_mode_gives_up_on_a_service_that_starts_nothing() {
    // No scheduler here: the service never starts a task, as when no capacity is there.
    let Some(f) = fixture_with("stuck", false, LaunchMode::Service, Duration::from_secs(2)).await
    else {
        return;
    };
    let s = spec(fargate(0.25, 512, true));
    let started = std::time::Instant::now();
    match f.driver.launch(&s).await {
        Err(corral_drivers::Error::Provider(why)) => {
            assert!(why.contains("started no task within 2 s"), "{why}")
        }
        other => panic!("expected a Provider error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        f.service(s.instance_id).await.map(|s| s.0),
        Some("INACTIVE".into()),
        "the service asked for nobody's task is gone"
    );

    // A service left by an instance Corral no longer knows is an orphan; stopping it
    // deletes it.
    let lost = Uuid::now_v7();
    let td = f
        .ecs
        .list_task_definitions()
        .send()
        .await
        .expect("ListTaskDefinitions")
        .task_definition_arns()
        .first()
        .cloned()
        .expect("the definition the launch registered");
    let created = f
        .ecs
        .create_service()
        .cluster(&f.cfg.cluster)
        .service_name(service_name(lost))
        .task_definition(td)
        .desired_count(1)
        .tags(
            aws_sdk_ecs::types::Tag::builder()
                .key(TAG_INSTANCE)
                .value(lost.to_string())
                .build(),
        )
        .send()
        .await
        .expect("CreateService");
    let arn = created.service().and_then(|s| s.service_arn()).unwrap();
    let orphans = f.driver.orphans(&[]).await.expect("orphans");
    let orphan = ReplicaRef {
        instance_id: lost,
        replica_id: Uuid::nil(),
        driver_ref: arn.to_string(),
    };
    assert_eq!(orphans, std::slice::from_ref(&orphan));
    f.driver.stop(&orphan, Duration::ZERO).await.expect("stop");
    assert_eq!(f.service(lost).await.map(|s| s.0), Some("INACTIVE".into()));
    assert!(f.driver.orphans(&[]).await.expect("orphans").is_empty());
}

impl Fixture {
    /// Writes lines to a task's stream as the awslogs driver would, at the given times.
    async fn put_logs(&self, instance_id: Uuid, r: &ReplicaRef, lines: &[(i64, String)]) {
        let stream = format!(
            "{instance_id}/{CONTAINER}/{}",
            r.driver_ref.rsplit('/').next().unwrap()
        );
        // Made on the first write, as the awslogs driver does.
        let _ = self
            .logs
            .create_log_stream()
            .log_group_name(&self.cfg.log_group)
            .log_stream_name(&stream)
            .send()
            .await;
        for batch in lines.chunks(5_000) {
            self.logs
                .put_log_events()
                .log_group_name(&self.cfg.log_group)
                .log_stream_name(&stream)
                .set_log_events(Some(
                    batch
                        .iter()
                        .map(|(at, m)| {
                            aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                                .timestamp(*at)
                                .message(m)
                                .build()
                                .unwrap()
                        })
                        .collect(),
                ))
                .send()
                .await
                .expect("PutLogEvents");
        }
    }
}

#[tokio::test]
async fn instance_logs_read_every_stream_of_the_instance() {
    let Some(f) = fixture("instance-logs", false).await else {
        return;
    };
    let a = spec(fargate(0.25, 512, false));
    let b = LaunchSpec {
        replica_id: Uuid::now_v7(),
        ..a.clone()
    };
    let other = spec(fargate(0.25, 512, false));
    let (ra, rb, ro) = (
        f.driver.launch(&a).await.expect("launch a"),
        f.driver.launch(&b).await.expect("launch b"),
        f.driver.launch(&other).await.expect("launch other"),
    );
    let instance = a.instance_id;
    let empty = f
        .driver
        .instance_logs(instance, None, 10)
        .await
        .expect("instance logs")
        .expect("the ecs driver reads instance logs");
    assert!(empty.lines.is_empty());

    // Replica a logs first and stops; b logs later; the other instance in between.
    let t0 = chrono::Utc::now().timestamp_millis() - 60_000;
    f.put_logs(instance, &ra, &[(t0, "a1".into()), (t0 + 2, "a2".into())])
        .await;
    f.put_logs(
        instance,
        &rb,
        &[(t0 + 1, "b1".into()), (t0 + 3, "b2".into())],
    )
    .await;
    f.put_logs(other.instance_id, &ro, &[(t0 + 1, "other".into())])
        .await;
    f.driver.stop(&ra, Duration::ZERO).await.expect("stop a");

    let page = f
        .driver
        .instance_logs(instance, None, 3)
        .await
        .expect("instance logs")
        .unwrap();
    let got: Vec<(&str, Uuid)> = page
        .lines
        .iter()
        .map(|l| (l.line.as_str(), l.replica_id))
        .collect();
    assert_eq!(
        got,
        [
            ("b1", b.replica_id),
            ("a2", a.replica_id),
            ("b2", b.replica_id)
        ],
        "the last three, in time order, the stopped replica's too"
    );
    let cursor = page.next.expect("a cursor");

    // Following: nothing new, then what came after, across both streams; more than one
    // page of FilterLogEvents (10,000 events each).
    let same = f
        .driver
        .instance_logs(instance, Some(&cursor), 10)
        .await
        .expect("follow")
        .unwrap();
    assert!(same.lines.is_empty(), "{:?}", same.lines);
    assert_eq!(same.next.as_deref(), Some(cursor.as_str()));
    let many: Vec<(i64, String)> = (0..10_050)
        .map(|i| (t0 + 10 + i / 100, format!("b-{i}")))
        .collect();
    f.put_logs(instance, &rb, &many).await;
    f.put_logs(
        instance,
        &ra,
        &[(t0 + 3, "a3, same millisecond as b2".into())],
    )
    .await;
    let page = f
        .driver
        .instance_logs(instance, Some(&cursor), 10)
        .await
        .expect("follow")
        .unwrap();
    assert_eq!(page.lines.len(), 10_000, "at most 10,000 lines a call");
    assert_eq!(page.lines[0].line, "a3, same millisecond as b2");
    assert_eq!(page.lines[1].line, "b-0");
    assert!(page.lines.iter().all(|l| l.line != "other"));
    let rest = f
        .driver
        .instance_logs(instance, page.next.as_deref(), 10)
        .await
        .expect("follow")
        .unwrap();
    let text: Vec<&str> = rest.lines.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(text.len(), 51, "{:?}", &text[..3.min(text.len())]);
    assert_eq!(text.last(), Some(&"b-10049"));

    // A cursor that is not one of ours is refused as bad input.
    assert!(matches!(
        f.driver
            .instance_logs(instance, Some("yesterday"), 10)
            .await,
        Err(corral_drivers::Error::Invalid(_))
    ));
}

#[tokio::test]
async fn service_mode_concurrent_launches_and_a_crashed_task() {
    let Some(f) = fixture_with("crash", false, LaunchMode::Service, Duration::from_secs(20)).await
    else {
        return;
    };
    let ecs_scheduler = scheduler(f.ecs.clone(), f.cfg.cluster.clone());
    let a = spec(fargate(0.25, 1024, false));
    let b = LaunchSpec {
        replica_id: Uuid::now_v7(),
        ..a.clone()
    };
    let instance = a.instance_id;
    // Launched together, they take turns: two tasks, one each.
    let (ra, rb) = tokio::join!(f.driver.launch(&a), f.driver.launch(&b));
    let (ra, rb) = (ra.expect("launch a"), rb.expect("launch b"));
    assert_ne!(ra.driver_ref, rb.driver_ref);
    assert_eq!(f.service(instance).await, Some(("ACTIVE".into(), 2)));

    // a's task dies; the service starts a replacement nobody has claimed.
    f.ecs
        .stop_task()
        .cluster(&f.cfg.cluster)
        .task(&ra.driver_ref)
        .reason("Essential container in task exited")
        .send()
        .await
        .expect("StopTask");
    match f.driver.observe(&ra).await.expect("observe") {
        Observed::Exited { reason } => assert!(reason.contains("Essential container"), "{reason}"),
        other => panic!("expected Exited, got {other:?}"),
    }
    let tasks = f.wait_for_tasks(instance, 2).await;
    assert!(tasks.iter().any(|t| tag(t, TAG_REPLICA).is_none()));

    // What the reconciler does next: stop the replica, then, after a back-off, launch it
    // again. The count goes back to the claimed tasks, so the service stops the extra
    // one (here the newest; ECS chooses by its own rules, see src/service.rs), then up
    // again, and the relaunch gets a live task.
    f.driver.stop(&ra, Duration::ZERO).await.expect("stop a");
    assert_eq!(f.service(instance).await, Some(("ACTIVE".into(), 1)));
    let left = f.wait_for_tasks(instance, 1).await;
    assert_eq!(left[0].task_arn(), Some(rb.driver_ref.as_str()));
    let again = f.driver.launch(&a).await.expect("relaunch a");
    assert_ne!(again.driver_ref, ra.driver_ref);
    assert!(matches!(
        f.driver.observe(&again).await.expect("observe"),
        Observed::Running { .. }
    ));
    assert_eq!(f.service(instance).await, Some(("ACTIVE".into(), 2)));
    let tasks = f.wait_for_tasks(instance, 2).await;
    let mut claimed: Vec<&str> = tasks.iter().filter_map(|t| tag(t, TAG_REPLICA)).collect();
    claimed.sort_unstable();
    let mut want = vec![a.replica_id.to_string(), b.replica_id.to_string()];
    want.sort_unstable();
    assert_eq!(claimed, want, "every live task is a replica's");

    f.driver.stop(&again, Duration::ZERO).await.expect("stop a");
    f.driver.stop(&rb, Duration::ZERO).await.expect("stop b");
    assert_eq!(
        f.service(instance).await.map(|s| s.0),
        Some("INACTIVE".into())
    );
    ecs_scheduler.abort();
}

/// A recording proxy in front of moto: every request's `X-Amz-Target` and JSON body are
/// kept, then the request is forwarded and moto's answer returned. It shows what the
/// driver sends where moto ignores it (RunTask's clientToken).
struct Recording {
    endpoint: String,
    calls: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

async fn recording(moto: &str) -> Recording {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (kept, moto) = (calls.clone(), moto.to_string());
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let (kept, moto, client) = (kept.clone(), moto.clone(), client.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                // One request after another on a kept-alive connection.
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 8192];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let mut lines = head.split("\r\n");
                    let path = lines
                        .next()
                        .and_then(|l| l.split(' ').nth(1))
                        .unwrap_or("/")
                        .to_string();
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let header = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v);
                    let len: usize = header("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 8192];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buf[head_end..head_end + len].to_vec();
                    buf.drain(..head_end + len);
                    let target = header("x-amz-target").cloned().unwrap_or_default();
                    kept.lock()
                        .unwrap()
                        .push((target, String::from_utf8_lossy(&body).to_string()));
                    let mut req = client.post(format!("{moto}{path}")).body(body);
                    for (k, v) in &headers {
                        if !matches!(k.as_str(), "host" | "content-length" | "connection") {
                            req = req.header(k.as_str(), v.as_str());
                        }
                    }
                    let resp = req.send().await.expect("moto answers");
                    let status = resp.status().as_u16();
                    let ctype = resp
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("application/x-amz-json-1.1")
                        .to_string();
                    let out = resp.bytes().await.unwrap_or_default();
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
                        out.len()
                    );
                    if conn.write_all(head.as_bytes()).await.is_err()
                        || conn.write_all(&out).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Recording { endpoint, calls }
}

impl Recording {
    /// The `clientToken` of every RunTask so far.
    fn run_task_tokens(&self) -> Vec<Option<String>> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(target, _)| target.ends_with(".RunTask"))
            .map(|(_, body)| {
                body.split("\"clientToken\":\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .map(str::to_string)
            })
            .collect()
    }
}

/// Issue 13 item 2: RunTask carries an idempotency token naming the replica and its
/// launch, so an SDK retry of the same call cannot start a twin, while a relaunch does
/// start a new task.
#[tokio::test]
async fn item2_run_task_carries_a_client_token_per_launch() {
    let Some(f) = fixture("token", false).await else {
        return;
    };
    let proxy = recording(&f.endpoint).await;
    let driver = EcsDriver::new(EcsConfig {
        endpoint_url: Some(proxy.endpoint.clone()),
        ..f.cfg.clone()
    })
    .await
    .expect("driver");
    let first = spec(fargate(0.25, 512, false));
    let r0 = driver.launch(&first).await.expect("launch 0");
    let again = LaunchSpec {
        launch: 1,
        ..first.clone()
    };
    let r1 = driver.launch(&again).await.expect("launch 1");
    assert_ne!(r0.driver_ref, r1.driver_ref);
    let id = first.replica_id.simple();
    assert_eq!(
        proxy.run_task_tokens(),
        [Some(format!("{id}-0")), Some(format!("{id}-1"))]
    );
    for r in [&r0, &r1] {
        driver.stop(r, Duration::ZERO).await.expect("stop");
    }
}

/// Issue 13 item 2: a task DescribeTasks does not list is starting for the grace
/// (ECS is eventually consistent right after RunTask), and lost only after it.
#[tokio::test]
async fn item2_missing_task_is_starting_within_the_grace_then_lost() {
    let Some(f) = fixture("missing", false).await else {
        return;
    };
    let grace = Duration::from_secs(2);
    let driver = EcsDriver::new(EcsConfig {
        missing_grace: grace,
        ..f.cfg.clone()
    })
    .await
    .expect("driver");
    let unlisted = ReplicaRef {
        instance_id: Uuid::now_v7(),
        replica_id: Uuid::now_v7(),
        driver_ref: format!(
            "arn:aws:ecs:{REGION}:123456789012:task/{}/{}",
            f.cfg.cluster,
            Uuid::now_v7().simple()
        ),
    };
    assert_eq!(
        driver.observe(&unlisted).await.expect("observe"),
        Observed::Starting
    );
    tokio::time::sleep(grace).await;
    assert_eq!(
        driver.observe(&unlisted).await.expect("observe"),
        Observed::Lost
    );
    // A listed task is what ECS says it is, grace or not.
    let r = driver
        .launch(&spec(fargate(0.25, 512, false)))
        .await
        .expect("launch");
    assert!(matches!(
        driver.observe(&r).await.expect("observe"),
        Observed::Running { .. }
    ));
    driver.stop(&r, Duration::ZERO).await.expect("stop");
}

/// Issue 13 item 2: the orphan sweep compares task ARNs, not only replica ids: the task
/// of an earlier launch of a known replica (a lost one, or a retried launch's twin) is
/// an orphan; the one the replica's row names is not.
#[tokio::test]
async fn item2_a_second_task_of_a_known_replica_is_an_orphan() {
    let Some(f) = fixture("twin", false).await else {
        return;
    };
    let first = spec(fargate(0.25, 512, false));
    let old = f.driver.launch(&first).await.expect("launch 0");
    let current = f
        .driver
        .launch(&LaunchSpec {
            launch: 1,
            ..first.clone()
        })
        .await
        .expect("launch 1");
    let orphans = f
        .driver
        .orphans(std::slice::from_ref(&current))
        .await
        .expect("orphans");
    assert_eq!(orphans, std::slice::from_ref(&old));
    // While the replica's launch is in flight (no ARN recorded) both are its own.
    let in_flight = ReplicaRef {
        driver_ref: String::new(),
        ..current.clone()
    };
    assert!(f.driver.orphans(&[in_flight]).await.unwrap().is_empty());
    for r in [&old, &current] {
        f.driver.stop(r, Duration::ZERO).await.expect("stop");
    }
}

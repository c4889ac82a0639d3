//! The ECS driver against a real moto server (the AWS emulator) through the real SDK.
//!
//! Run with `scripts/with-moto.sh cargo test -p corral-driver-ecs`, which starts moto and
//! sets `AWS_ENDPOINT_URL`. Without it these tests fail, unless `CORRAL_SKIP_MOTO=1`.
//!
//! Moto keeps one state per server, so each test makes its own cluster and log group.
//! Its task lifecycle is global: tasks are pinned RUNNING by the state manager (moto
//! otherwise moves a task on at every DescribeTasks), which suits every test here.

use std::time::Duration;

use aws_sdk_ecs::types::{Compatibility, NetworkMode, ResourceType, Task};
use corral_core::{ComputeSpec, ComputeType, ModelSource};
use corral_driver_ecs::{CONTAINER, EcsConfig, EcsDriver, TAG_INSTANCE, TAG_REPLICA};
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
            [("g5.xlarge".to_string(), "corral-gpu".to_string())].into()
        } else {
            Default::default()
        },
        endpoint_url: Some(endpoint.clone()),
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

    // Unknown task: Lost.
    let lost = ReplicaRef {
        driver_ref: r
            .driver_ref
            .replace(task_id, "00000000000000000000000000000000"),
        ..r.clone()
    };
    assert_eq!(
        f.driver.observe(&lost).await.expect("observe"),
        Observed::Lost
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

    let orphans = f.driver.orphans(&[a.replica_id]).await.expect("orphans");
    assert_eq!(orphans, std::slice::from_ref(&rb));
    f.driver.stop(&rb, Duration::ZERO).await.expect("stop");
    let orphans = f.driver.orphans(&[a.replica_id]).await.expect("orphans");
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

    assert!(matches!(
        f.driver.observe(&r).await.expect("observe"),
        Observed::Running { .. }
    ));
    f.driver.stop(&r, Duration::ZERO).await.expect("stop");
    assert!(matches!(
        f.driver.observe(&r).await.expect("observe"),
        Observed::Exited { .. }
    ));
}

//! Service mode (`[ecs] launch = "service"`): one ECS service per instance, named
//! `corral-<instance id>` and tagged with it, whose desiredCount is the number of the
//! instance's replicas. The reconciler stays per replica; this module maps its calls:
//!
//! - `launch` sets desiredCount to the replicas already claimed plus one (creating the
//!   service for the first), waits for the service scheduler to start a task, and claims
//!   it by tagging it with the replica id (`corral:replica-id`). A live task already
//!   claimed by the replica is returned as it is (a launch repeated after a crash), and a
//!   task nobody claimed (one the service started in place of a task that died, or for a
//!   launch that failed half-way) is claimed at once, the count being set so that the
//!   service keeps it. The `driver_ref` is the task ARN, so `observe` and `logs` are
//!   those of task mode.
//! - `stop` stops exactly the replica's task, then sets desiredCount to the tasks still
//!   claimed; at zero the service is deleted.
//! - `orphans` adds the service tasks nobody claimed for longer than a launch waits, and
//!   services with no task at all, to the claimed tasks of unknown replicas (which are
//!   found as in task mode). Their `ReplicaRef` has the nil replica id (they belong to
//!   no replica) and `stop` settles the service as above.
//!
//! Launches and stops of one instance take turns (a lock per instance), so two launches
//! cannot both count the same tasks or claim the same one. ECS picks which task a lower
//! desiredCount stops, not Corral: `stop` therefore stops its task first and lowers the
//! count right after. Should the scheduler start a replacement in between, the lower
//! count makes it stop one task, normally that new one; should it stop a claimed task
//! instead, the reconciler sees that replica exit and relaunches it, and the relaunch
//! claims whatever task is left unclaimed. Either way the counts converge.
//!
//! The service's tasks are found with ListTasks by service name and, as well, by their
//! `group` (`service:<name>`, which ECS gives every task of a service): moto (the AWS
//! emulator the tests use) ignores ListTasks' service filter.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ecs::types::{DesiredStatus, PropagateTags, SchedulingStrategy, Service, Task};
use chrono::Utc;
use corral_drivers::{Error, LaunchSpec, ReplicaRef, Result};
use uuid::Uuid;

use crate::{DESCRIBE_BATCH, EcsDriver, Placement, TAG_INSTANCE, TAG_REPLICA, provider, tag};

/// How often `launch` looks for the task it asked the service for.
const POLL: Duration = Duration::from_millis(500);
/// DescribeServices takes at most this many services per call.
const DESCRIBE_SERVICES_BATCH: usize = 10;

/// The service of an instance.
pub fn service_name(instance_id: Uuid) -> String {
    format!("corral-{instance_id}")
}

/// The service name in a service ARN (`arn:aws:ecs:…:service/<cluster>/<name>`).
fn service_of_arn(driver_ref: &str) -> Option<&str> {
    let (_, path) = driver_ref.split_once(":service/")?;
    path.rsplit('/').next().filter(|n| !n.is_empty())
}

fn group(service: &str) -> String {
    format!("service:{service}")
}

fn claimed_by(task: &Task) -> Option<&str> {
    tag(task, TAG_REPLICA)
}

impl EcsDriver {
    /// The lock that makes launches and stops of one instance take turns.
    async fn instance_lock(&self, instance_id: Uuid) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            // Locks nobody holds or waits for are dropped on the way.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(instance_id).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// The service if it is ACTIVE (INACTIVE is a deleted one; DRAINING is being deleted).
    async fn describe_service(&self, name: &str) -> Result<Option<Service>> {
        let out = self
            .ecs
            .describe_services()
            .cluster(&self.cfg.cluster)
            .services(name)
            .send()
            .await
            .map_err(provider("DescribeServices"))?;
        Ok(out
            .services()
            .iter()
            .find(|s| s.status() == Some("ACTIVE"))
            .cloned())
    }

    /// The service's tasks that are to run (PROVISIONING to RUNNING), with their tags.
    async fn service_tasks(&self, service: &str) -> Result<Vec<Task>> {
        let mut arns = Vec::new();
        let mut pages = self
            .ecs
            .list_tasks()
            .cluster(&self.cfg.cluster)
            .service_name(service)
            .desired_status(DesiredStatus::Running)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            match page {
                Ok(page) => arns.extend(page.task_arns().to_vec()),
                // ECS refuses the filter for a service that does not exist (yet).
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_service_not_found_exception()) =>
                {
                    return Ok(vec![]);
                }
                Err(e) => return Err(provider("ListTasks")(e)),
            }
        }
        let group = group(service);
        let mut tasks = Vec::new();
        for batch in arns.chunks(DESCRIBE_BATCH) {
            tasks.extend(
                self.describe(batch.to_vec())
                    .await?
                    .into_iter()
                    .filter(|t| t.group() == Some(group.as_str()))
                    .filter(|t| t.last_status() != Some("STOPPED")),
            );
        }
        Ok(tasks)
    }

    pub(crate) async fn launch_in_service(
        &self,
        spec: &LaunchSpec,
        placement: Placement,
    ) -> Result<ReplicaRef> {
        let name = service_name(spec.instance_id);
        let replica = spec.replica_id.to_string();
        let found = |task: &Task| ReplicaRef {
            instance_id: spec.instance_id,
            replica_id: spec.replica_id,
            driver_ref: task.task_arn().unwrap_or_default().to_string(),
        };
        let _turn = self.instance_lock(spec.instance_id).await;
        let tasks = self.service_tasks(&name).await?;
        if let Some(task) = tasks.iter().find(|t| claimed_by(t) == Some(&replica)) {
            return Ok(found(task));
        }
        // The count is always the claimed tasks plus this one. An unclaimed task may be
        // one a lower count is about to stop; at this count the service keeps one.
        let desired = tasks.iter().filter(|t| claimed_by(t).is_some()).count() as i32 + 1;
        match self.describe_service(&name).await? {
            Some(service)
                if service.desired_count() == desired
                    && service.task_definition() == Some(placement.task_definition.as_str()) => {}
            Some(service) => {
                let mut update = self
                    .ecs
                    .update_service()
                    .cluster(&self.cfg.cluster)
                    .service(&name)
                    .desired_count(desired);
                // A changed definition (new image, settings) starts a deployment that
                // replaces the running tasks; the reconciler relaunches their replicas.
                if service.task_definition() != Some(placement.task_definition.as_str()) {
                    update = update.task_definition(&placement.task_definition);
                }
                update.send().await.map_err(provider("UpdateService"))?;
            }
            None => {
                self.ecs
                    .create_service()
                    .cluster(&self.cfg.cluster)
                    .service_name(&name)
                    .task_definition(&placement.task_definition)
                    .desired_count(desired)
                    .scheduling_strategy(SchedulingStrategy::Replica)
                    .capacity_provider_strategy(placement.strategy)
                    .network_configuration(placement.network)
                    .tags(
                        aws_sdk_ecs::types::Tag::builder()
                            .key(TAG_INSTANCE)
                            .value(spec.instance_id.to_string())
                            .build(),
                    )
                    // The instance tag on every task: unclaimed ones are Corral's too.
                    .propagate_tags(PropagateTags::Service)
                    .enable_ecs_managed_tags(true)
                    .send()
                    .await
                    .map_err(provider("CreateService"))?;
                tracing::info!(service = %name, "created ECS service");
            }
        }
        let deadline = tokio::time::Instant::now() + self.cfg.service_start_timeout;
        let mut tasks = tasks;
        loop {
            if let Some(task) = tasks.iter().find(|t| claimed_by(t).is_none()) {
                self.claim(spec, &name, task).await?;
                return Ok(found(task));
            }
            if tokio::time::Instant::now() >= deadline {
                // Back to the tasks that are claimed, so no task starts for nobody.
                let events = self
                    .describe_service(&name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|s| {
                        s.events()
                            .first()
                            .and_then(|e| e.message())
                            .map(String::from)
                    });
                self.settle(&name, None).await?;
                return Err(Error::Provider(format!(
                    "ECS service {name} started no task within {} s{}",
                    self.cfg.service_start_timeout.as_secs(),
                    events
                        .map(|e| format!(" (last event: {e})"))
                        .unwrap_or_default()
                )));
            }
            tokio::time::sleep(POLL).await;
            tasks = self.service_tasks(&name).await?;
        }
    }

    async fn claim(&self, spec: &LaunchSpec, service: &str, task: &Task) -> Result<()> {
        let arn = task
            .task_arn()
            .ok_or_else(|| Error::Provider("DescribeTasks returned a task without ARN".into()))?;
        self.ecs
            .tag_resource()
            .resource_arn(arn)
            .set_tags(Some(crate::replica_tags(spec.instance_id, spec.replica_id)))
            .send()
            .await
            .map_err(provider("TagResource"))?;
        tracing::info!(replica = %spec.replica_id, task = arn, %service, "claimed ECS service task");
        Ok(())
    }

    /// desiredCount := the tasks claimed by replicas (not counting `stopped`); the
    /// service is deleted when none are left. Nothing to do when it is gone already.
    async fn settle(&self, service: &str, stopped: Option<&str>) -> Result<()> {
        let Some(current) = self.describe_service(service).await? else {
            return Ok(());
        };
        let claimed = self
            .service_tasks(service)
            .await?
            .iter()
            .filter(|t| claimed_by(t).is_some() && t.task_arn() != stopped)
            .count() as i32;
        if claimed == 0 {
            // Forced: ECS stops whatever unclaimed task is left with the service.
            self.ecs
                .delete_service()
                .cluster(&self.cfg.cluster)
                .service(service)
                .force(true)
                .send()
                .await
                .map_err(provider("DeleteService"))?;
            tracing::info!(%service, "deleted ECS service: no replica left");
        } else if current.desired_count() != claimed {
            self.ecs
                .update_service()
                .cluster(&self.cfg.cluster)
                .service(service)
                .desired_count(claimed)
                .send()
                .await
                .map_err(provider("UpdateService"))?;
        }
        Ok(())
    }

    /// `stop` for a replica of service mode, or for an orphaned service (its ARN as
    /// `driver_ref`). Returns false when the replica is none of these (task mode).
    pub(crate) async fn stop_in_service(&self, replica: &ReplicaRef) -> Result<bool> {
        if let Some(service) = service_of_arn(&replica.driver_ref) {
            let _turn = self.instance_lock(replica.instance_id).await;
            self.settle(service, None).await?;
            return Ok(true);
        }
        let task = self
            .describe(vec![replica.driver_ref.clone()])
            .await?
            .into_iter()
            .find(|t| t.task_arn() == Some(replica.driver_ref.as_str()));
        let service = match task.as_ref().and_then(|t| t.group()) {
            Some(g) => match g.strip_prefix("service:") {
                Some(s) => s.to_string(),
                None => return Ok(false),
            },
            // ECS forgets stopped tasks after a while; the instance's service may still
            // count it.
            None if self.cfg.launch == crate::LaunchMode::Service => {
                service_name(replica.instance_id)
            }
            None => return Ok(false),
        };
        let _turn = self.instance_lock(replica.instance_id).await;
        self.stop_task(replica).await?;
        self.settle(&service, Some(&replica.driver_ref)).await?;
        Ok(true)
    }

    /// Corral's services (tagged with an instance id): their unclaimed tasks older than
    /// a launch waits, and the services that have no task at all, as orphans.
    pub(crate) async fn service_orphans(&self) -> Result<Vec<ReplicaRef>> {
        let mut arns = Vec::new();
        let mut pages = self
            .ecs
            .list_services()
            .cluster(&self.cfg.cluster)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            arns.extend(
                page.map_err(provider("ListServices"))?
                    .service_arns()
                    .to_vec(),
            );
        }
        let settled_since = Utc::now()
            - chrono::Duration::from_std(self.cfg.service_start_timeout * 2)
                .unwrap_or(chrono::Duration::MAX);
        let mut orphans = Vec::new();
        for batch in arns.chunks(DESCRIBE_SERVICES_BATCH) {
            let out = self
                .ecs
                .describe_services()
                .cluster(&self.cfg.cluster)
                .set_services(Some(batch.to_vec()))
                .include(aws_sdk_ecs::types::ServiceField::Tags)
                .send()
                .await
                .map_err(provider("DescribeServices"))?;
            for service in out.services() {
                let instance_id = service
                    .tags()
                    .iter()
                    .find(|t| t.key() == Some(TAG_INSTANCE))
                    .and_then(|t| t.value())
                    .and_then(|v| v.parse::<Uuid>().ok());
                let (Some(instance_id), Some(name), Some(arn), Some("ACTIVE")) = (
                    instance_id,
                    service.service_name(),
                    service.service_arn(),
                    service.status(),
                ) else {
                    continue;
                };
                let tasks = self.service_tasks(name).await?;
                let orphan = |driver_ref: &str| ReplicaRef {
                    instance_id,
                    replica_id: Uuid::nil(),
                    driver_ref: driver_ref.to_string(),
                };
                for task in &tasks {
                    match claimed_by(task).map(|r| r.parse::<Uuid>()) {
                        // Claimed tasks carry both tags: those of unknown replicas are
                        // found with the tasks of task mode.
                        Some(_) => {}
                        None => {
                            let old = task
                                .created_at()
                                .is_some_and(|at| at.secs() < settled_since.timestamp());
                            if old && let Some(arn) = task.task_arn() {
                                orphans.push(orphan(arn));
                            }
                        }
                    }
                }
                if tasks.is_empty() {
                    orphans.push(orphan(arn));
                }
            }
        }
        Ok(orphans)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_arns_name_their_service() {
        assert_eq!(
            service_of_arn("arn:aws:ecs:us-east-1:123456789012:service/corral/corral-x"),
            Some("corral-x")
        );
        assert_eq!(
            service_of_arn("arn:aws:ecs:us-east-1:123456789012:task/corral/0123abcd"),
            None
        );
        let id = Uuid::nil();
        assert_eq!(
            service_name(id),
            "corral-00000000-0000-0000-0000-000000000000"
        );
    }
}

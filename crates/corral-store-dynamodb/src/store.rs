//! The `Store` trait on DynamoDB: how each operation keeps the guarantees the SQL
//! backends get from transactions and constraints (see the crate docs).

use async_trait::async_trait;
use aws_sdk_dynamodb::types::TransactWriteItem;
use chrono::{DateTime, Utc};
use corral_core::quota::Charge;
use corral_core::{
    Admission, Allocation, ApiKey, AuditEntry, AuditFilter, CatalogModel, Desired, Instance,
    InstanceEvent, InstanceSettings, LoginFailures, Membership, NewAuditEntry, OutboxMessage,
    Quota, RefreshSession, Refusal, Replica, Resource, State, Subject, Team, TeamMember,
    TokenPurpose, UsageRow, UsageSample, User,
};
use corral_store::{
    ActionToken, DesiredChange, Error, JobOutcome, JobStatus, Lease, LoginAttempt, OutboundJob,
    ReplicaRun, Result, Store, TEAM_IN_USE, UsageCounts, UserPatch, apply_desired,
    check_desired_change, check_settings, clamp_target,
};
use uuid::Uuid;

use crate::item::{self, Builder, Item, b, key, n, s, t, tkey};
use crate::{ATTEMPTS, DynamoStore, Query, backoff, contended, values};

const MODEL_IN_USE: &str = "the model is deployed by instances: delete them first";
const USER_IN_USE: &str = "the user still owns instances: stop and delete them first";

/// Conditions used throughout.
const NEW: &str = "attribute_not_exists(#PK)";
const EXISTS: &str = "attribute_exists(#PK)";

/// The key (`PK`, `SK`) of an item.
fn pointer_key(it: &Item) -> Item {
    it.iter()
        .filter(|(name, _)| *name == "PK" || *name == "SK")
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// Whether the transaction item at `index` failed its condition.
fn failed(codes: &[String], index: usize) -> bool {
    codes
        .get(index)
        .is_some_and(|c| c == "ConditionalCheckFailed")
}

fn page_limit(limit: u32) -> usize {
    limit.clamp(1, 500) as usize
}

/// Whether an instance in this state is running (billed): the cost clock runs from
/// entering one of these until entering a `stops_clock` state (as the SQL backends).
fn starts_clock(state: State) -> bool {
    matches!(state, State::Ready | State::Scaling)
}

fn stops_clock(state: State) -> bool {
    matches!(
        state,
        State::Stopping | State::Stopped | State::Sleeping | State::Failed
    )
}

/// The start of the hour `at` falls in (UTC), the key of the usage roll-up.
fn hour_start(at: DateTime<Utc>) -> Result<DateTime<Utc>> {
    const HOUR_MICROS: i64 = 3_600_000_000;
    let micros = at.timestamp_micros();
    DateTime::from_timestamp_micros(micros - micros.rem_euclid(HOUR_MICROS))
        .ok_or_else(|| Error::Invalid(format!("usage time {at} is out of range")))
}

/// An admin who can act: the last one must stay.
fn active_admin(role: corral_core::Role, disabled: bool) -> bool {
    role.is_admin() && !disabled
}

/// The item holding the ids of the active admins (a string set).
fn admins_key() -> Item {
    key("ADMINS".into(), "ADMINS")
}

fn ss(id: Uuid) -> aws_sdk_dynamodb::types::AttributeValue {
    aws_sdk_dynamodb::types::AttributeValue::Ss(vec![id.to_string()])
}

impl DynamoStore {
    async fn load_instance(&self, id: Uuid) -> Result<Option<(Instance, i64)>> {
        self.get(item::instance_pk(id), "INSTANCE")
            .await?
            .map(|it| item::instance(&it))
            .transpose()
    }

    /// Read-modify-write of one instance under its `version`: `change` edits the
    /// instance and says whether to write (`Some(extra)`, with more items for the same
    /// transaction) or to stop (`None`, nothing written). Retried when another writer
    /// got in between. None if there is no such instance; else the instance as it is
    /// now and whether this call wrote it.
    ///
    /// The allocation difference is charged to the counters of the subjects
    /// `admission` names in the same transaction (`Error::Refused` when one would pass
    /// its limit; nothing is written).
    async fn modify_instance<F>(
        &self,
        id: Uuid,
        admission: &Admission,
        mut change: F,
    ) -> Result<Option<(Instance, bool)>>
    where
        F: FnMut(&mut Instance) -> Result<Option<Vec<TransactWriteItem>>>,
    {
        for attempt in 0..ATTEMPTS {
            let Some((mut inst, version)) = self.load_instance(id).await? else {
                return Ok(None);
            };
            let old = inst.clone();
            let Some(extra) = change(&mut inst)? else {
                return Ok(Some((inst, false)));
            };
            let charges = admission.charges(Some(&old), Some(&inst));
            let mut writes = vec![self.tx_put(
                item::instance_item(&inst, version + 1)?,
                Some("#version = :version"),
                values(&[(":version", n(version))]),
            )?];
            writes.extend(self.charge_writes(&charges).await?);
            writes.extend(extra);
            match self.transact(writes).await? {
                Ok(()) => return Ok(Some((inst, true))),
                Err(codes) if failed(&codes, 0) => backoff(attempt).await,
                Err(codes) => match self.refusal(&charges, &codes, 1).await? {
                    Some(refusal) => return Err(Error::Refused(refusal)),
                    // The counters moved between the refusal and this read: try again.
                    None if (1..=charges.len()).any(|i| failed(&codes, i)) => {
                        backoff(attempt).await
                    }
                    None => {
                        return Err(Error::Backend(format!(
                            "DynamoDB: instance write refused: {codes:?}"
                        )));
                    }
                },
            }
        }
        Err(contended("instance update"))
    }

    /// One conditional `ADD` per charge: the counters change by the delta, and a
    /// counter that grows must stay within its limit (`counter <= limit - delta`
    /// before). A missing item is a subject that holds nothing yet. DynamoDB cannot
    /// clamp at zero, so unlike the SQL stores a release of more than is held (a host
    /// renamed in the configuration) leaves a negative count; `allocation` reads it
    /// as zero.
    async fn charge_writes(&self, charges: &[Charge]) -> Result<Vec<TransactWriteItem>> {
        let mut writes = Vec::with_capacity(charges.len());
        for c in charges {
            let mut terms = Vec::new();
            let mut vals = vec![];
            for r in Resource::ALL {
                let (attr, short) = counter_attr(r);
                let delta = c.delta.get(r);
                vals.push((format!(":d{short}"), n(delta)));
                if delta <= 0 {
                    continue;
                }
                let Some(limit) = c.limits.get(r) else {
                    continue;
                };
                if delta > limit {
                    // Refused whatever is held: no need to ask DynamoDB.
                    let in_use = self.allocation(&c.subject).await?;
                    if let Some(refusal) = Refusal::new(c.kind, c.limits, in_use, c.delta) {
                        return Err(Error::Refused(refusal));
                    }
                }
                terms.push(format!(
                    "(attribute_not_exists(#{attr}) OR #{attr} <= :l{short})"
                ));
                vals.push((format!(":l{short}"), n(limit - delta)));
            }
            let condition = (!terms.is_empty()).then(|| terms.join(" AND "));
            let vals: Item = vals.into_iter().collect();
            writes.push(self.tx_update(
                item::allocation_key(&c.subject.key()),
                "ADD #instances :di, #replicas :dr, #milli_vcpu :dv, #memory_mib :dm, #gpus :dg",
                condition.as_deref(),
                vals,
            )?);
        }
        Ok(writes)
    }

    /// After a cancelled transaction whose charge items start at index `first`: the
    /// refusal of the first charge whose condition failed, from its counters as they
    /// are now (None if none failed, or they no longer refuse).
    async fn refusal(
        &self,
        charges: &[Charge],
        codes: &[String],
        first: usize,
    ) -> Result<Option<Refusal>> {
        for (i, c) in charges.iter().enumerate() {
            if failed(codes, first + i) {
                let in_use = self.allocation(&c.subject).await?;
                return Ok(Refusal::new(c.kind, c.limits, in_use, c.delta));
            }
        }
        Ok(None)
    }

    /// The keys of a deleted user's credentials: the sessions and API keys in the user's
    /// collection (read consistently) with the items that point at them, and the
    /// action tokens (through GSI1; one missed by the index's lag is harmless, since
    /// consuming a token checks that its user exists, and TTL removes it).
    async fn credential_keys(&self, user_id: Uuid) -> Result<Vec<Item>> {
        let mut keys = Vec::new();
        let own = self
            .query(Query::new(
                None,
                "#PK = :pk",
                values(&[(":pk", s(item::user_pk(user_id)))]),
            ))
            .await?;
        for it in &own {
            let sk = item::Reader::new(it, "user item").string("SK")?;
            if sk.starts_with("SESSION#") {
                let session = item::session(it)?;
                keys.extend(item::session_pointers(&session).map(|p| pointer_key(&p)));
            } else if sk.starts_with("APIKEY#") {
                let api_key = item::api_key(it)?;
                keys.extend(item::api_key_pointers(&api_key).map(|p| pointer_key(&p)));
            } else if sk.starts_with("TEAM#") {
                let member = item::team_member(it)?;
                let [in_team, _] = item::member_items(&member);
                keys.push(pointer_key(&in_team));
            }
            keys.push(key(item::user_pk(user_id), &sk));
        }
        let tokens = self
            .query(Query::new(
                Some("GSI1"),
                "#GSI1PK = :pk AND begins_with(#GSI1SK, :sk)",
                values(&[(":pk", s(item::user_pk(user_id))), (":sk", s("TOKEN#"))]),
            ))
            .await?;
        for it in &tokens {
            keys.push(pointer_key(it));
        }
        // A family's items are shared by its sessions: delete each once.
        keys.sort_by_key(|k| format!("{:?}", (k.get("PK"), k.get("SK"))));
        keys.dedup();
        Ok(keys)
    }

    /// Deletes both items of each membership (after the team or the user is gone).
    async fn delete_memberships(&self, members: &[TeamMember]) -> Result<()> {
        let keys = members
            .iter()
            .flat_map(|m| item::member_items(m).map(|it| pointer_key(&it)))
            .collect();
        self.delete_all(keys).await
    }

    /// The sessions of one user, read consistently from the user's collection.
    async fn sessions_of(&self, user_id: Uuid) -> Result<Vec<RefreshSession>> {
        self.query(Query::new(
            None,
            "#PK = :pk AND begins_with(#SK, :sk)",
            values(&[(":pk", s(item::user_pk(user_id))), (":sk", s("SESSION#"))]),
        ))
        .await?
        .iter()
        .map(item::session)
        .collect()
    }

    /// Sets `revoked_at` on each live session among `sessions`; returns how many.
    async fn revoke(&self, sessions: Vec<RefreshSession>, now: DateTime<Utc>) -> Result<u64> {
        let mut revoked = 0;
        for session in sessions {
            if session.replaced_at.is_some() || session.revoked_at.is_some() {
                continue;
            }
            // Conditional: a rotation or revocation that got in first keeps its mark.
            let done = self
                .update(
                    key(
                        item::user_pk(session.user_id),
                        &format!("SESSION#{}", session.id),
                    ),
                    "SET #revoked_at = :now",
                    Some(
                        "attribute_exists(#PK) AND attribute_not_exists(#replaced_at) \
                         AND attribute_not_exists(#revoked_at)",
                    ),
                    values(&[(":now", t(now))]),
                )
                .await?;
            revoked += u64::from(done.is_some());
        }
        Ok(revoked)
    }

    /// `update_user` for a patch that sets the role or the disabled flag: written only
    /// if both are still as read, in one transaction with the change to the set of
    /// active admins, whose removal condition keeps one. Retried when the user changed
    /// in between.
    async fn update_user_guarded(
        &self,
        id: Uuid,
        patch: &UserPatch,
        expression: &str,
        vals: Vec<(&str, aws_sdk_dynamodb::types::AttributeValue)>,
    ) -> Result<Option<User>> {
        for attempt in 0..ATTEMPTS {
            let Some(before) = self.user_by_id(id).await? else {
                return Ok(None);
            };
            let was = active_admin(before.role, before.disabled);
            let will = active_admin(
                patch.role.unwrap_or(before.role),
                patch.disabled.unwrap_or(before.disabled),
            );
            let mut guarded = vals.clone();
            guarded.push((":was_role", s(before.role.as_str())));
            guarded.push((":was_disabled", b(before.disabled)));
            let mut writes = vec![self.tx_update(
                key(item::user_pk(id), "USER"),
                expression,
                Some("attribute_exists(#PK) AND #role = :was_role AND #disabled = :was_disabled"),
                values(&guarded),
            )?];
            if was && !will {
                writes.push(self.admins_remove(id)?);
            } else if will && !was {
                writes.push(self.admins_add(id)?);
            }
            match self.transact(writes).await? {
                Ok(()) => return self.user_by_id(id).await,
                Err(codes) if failed(&codes, 1) => {
                    if !self.rebuild_admins().await? {
                        return Err(Error::LastAdmin);
                    }
                }
                Err(codes) if failed(&codes, 0) => backoff(attempt).await,
                Err(codes) => {
                    return Err(Error::Backend(format!(
                        "DynamoDB: user update refused: {codes:?}"
                    )));
                }
            }
        }
        Err(contended("update_user"))
    }

    /// Adds a user to the set of active admins (creating the item if needed).
    fn admins_add(&self, id: Uuid) -> Result<aws_sdk_dynamodb::types::TransactWriteItem> {
        self.tx_update(
            admins_key(),
            "ADD #ids :id",
            None,
            values(&[(":id", ss(id))]),
        )
    }

    /// Takes a user out of the set of active admins, only if the set is complete and
    /// holds another admin: the write that would remove the last one fails.
    fn admins_remove(&self, id: Uuid) -> Result<aws_sdk_dynamodb::types::TransactWriteItem> {
        self.tx_update(
            admins_key(),
            "DELETE #ids :id",
            Some("#complete = :yes AND contains(#ids, :member) AND size(#ids) > :one"),
            values(&[
                (":id", ss(id)),
                (":member", s(id.to_string())),
                (":yes", b(true)),
                (":one", n(1)),
            ]),
        )
    }

    /// Makes the set of active admins complete from the user list, if it is not yet
    /// (a table from before the set existed, or one where only `admins_add` wrote it).
    /// True if it was rebuilt (the caller tries again), false if it was complete (a
    /// refused removal really was of the last admin).
    async fn rebuild_admins(&self) -> Result<bool> {
        let complete = aws_sdk_dynamodb::types::AttributeValue::Bool(true);
        if let Some(found) = self.get("ADMINS".into(), "ADMINS").await?
            && found.get("complete") == Some(&complete)
        {
            return Ok(false);
        }
        let users = self
            .query(Query::new(
                Some("GSI2"),
                "#GSI2PK = :pk",
                values(&[(":pk", s("USERS"))]),
            ))
            .await?;
        let mut ids = Vec::new();
        for it in &users {
            let user = item::user(it)?;
            if active_admin(user.role, user.disabled) {
                ids.push(user.id.to_string());
            }
        }
        let row = Builder::keys("ADMINS".into(), "ADMINS")
            .opt(
                "ids",
                (!ids.is_empty()).then_some(aws_sdk_dynamodb::types::AttributeValue::Ss(ids)),
            )
            .set("complete", b(true))
            .build();
        // A concurrent rebuild that got in first is as good as this one.
        self.put(
            row,
            Some("attribute_not_exists(#PK) OR attribute_not_exists(#complete)"),
            Item::new(),
        )
        .await?;
        Ok(true)
    }

    /// Spends every unused reset-password token of the user (after a password change),
    /// found through the pointers in the user's collection.
    async fn spend_reset_tokens(&self, user_id: Uuid, now: DateTime<Utc>) -> Result<()> {
        let pointers = self
            .query(Query::new(
                None,
                "#PK = :pk AND begins_with(#SK, :sk)",
                values(&[(":pk", s(item::user_pk(user_id))), (":sk", s("TOKEN#"))]),
            ))
            .await?;
        for pointer in &pointers {
            let r = item::Reader::new(pointer, "token pointer");
            if r.str("purpose")? != TokenPurpose::ResetPassword.as_str() {
                continue;
            }
            self.update(
                key(item::token_pk(r.str("token_hash")?), "TOKEN"),
                "SET #used_at = :now",
                Some("attribute_exists(#PK) AND attribute_not_exists(#used_at)"),
                values(&[(":now", t(now))]),
            )
            .await?;
        }
        Ok(())
    }

    fn event_write(
        &self,
        event: &InstanceEvent,
    ) -> Result<aws_sdk_dynamodb::types::TransactWriteItem> {
        self.tx_put(item::event_item(event), Some(NEW), Item::new())
    }
}

#[async_trait]
impl Store for DynamoStore {
    fn backend(&self) -> &'static str {
        "dynamodb"
    }

    async fn ping(&self) -> Result<()> {
        self.client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(crate::backend("DescribeTable"))?;
        Ok(())
    }

    // --- users ---

    async fn create_user(&self, user: &User) -> Result<()> {
        let email = Builder::keys(item::email_pk(&user.email), "EMAIL")
            .set("user_id", s(user.id.to_string()))
            .build();
        let mut writes = vec![
            self.tx_put(item::user_item(user)?, Some(NEW), Item::new())?,
            self.tx_put(email, Some(NEW), Item::new())?,
        ];
        if active_admin(user.role, user.disabled) {
            writes.push(self.admins_add(user.id)?);
        }
        match self.transact(writes).await? {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::Conflict("user")),
        }
    }

    async fn user_by_id(&self, id: Uuid) -> Result<Option<User>> {
        self.get(item::user_pk(id), "USER")
            .await?
            .map(|it| item::user(&it))
            .transpose()
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        let Some(pointer) = self.get(item::email_pk(email), "EMAIL").await? else {
            return Ok(None);
        };
        let id = item::Reader::new(&pointer, "email").uuid("user_id")?;
        self.user_by_id(id).await
    }

    async fn list_users(&self, offset: u32, limit: u32) -> Result<Vec<User>> {
        let want = offset as usize + page_limit(limit);
        let found = self
            .query(
                Query::new(
                    Some("GSI2"),
                    "#GSI2PK = :pk",
                    values(&[(":pk", s("USERS"))]),
                )
                .want(want),
            )
            .await?;
        found.iter().skip(offset as usize).map(item::user).collect()
    }

    async fn count_users(&self) -> Result<u64> {
        self.count(Query::new(
            Some("GSI2"),
            "#GSI2PK = :pk",
            values(&[(":pk", s("USERS"))]),
        ))
        .await
    }

    async fn update_user(
        &self,
        id: Uuid,
        patch: &UserPatch,
        now: DateTime<Utc>,
    ) -> Result<Option<User>> {
        let mut set = vec!["#updated_at = :updated_at".to_string()];
        let mut remove = Vec::new();
        let mut vals = vec![(":updated_at", t(now))];
        let mut field = |name: &'static str, placeholder: &'static str, value| {
            set.push(format!("#{name} = {placeholder}"));
            vals.push((placeholder, value));
        };
        if let Some(v) = &patch.display_name {
            field("display_name", ":display_name", s(v));
        }
        if let Some(v) = &patch.password_hash {
            field("password_hash", ":password_hash", s(v));
        }
        if let Some(v) = patch.role {
            field("role", ":role", s(v.as_str()));
        }
        if let Some(v) = patch.email_verified {
            field("email_verified", ":email_verified", b(v));
        }
        if let Some(v) = patch.disabled {
            field("disabled", ":disabled", b(v));
        }
        if let Some(Some(v)) = &patch.totp_secret {
            field("totp_secret", ":totp_secret", s(v));
        }
        if let Some(v) = patch.totp_enabled {
            field("totp_enabled", ":totp_enabled", b(v));
        }
        if let Some(v) = patch.last_login_at {
            field("last_login_at", ":last_login_at", t(v));
        }
        if let Some(None) = patch.totp_secret {
            remove.push("#totp_secret");
        }
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        let updated = if patch.role.is_some() || patch.disabled.is_some() {
            self.update_user_guarded(id, patch, &expression, vals)
                .await?
        } else {
            self.update(
                key(item::user_pk(id), "USER"),
                &expression,
                Some(EXISTS),
                values(&vals),
            )
            .await?
            .map(|it| item::user(&it))
            .transpose()?
        };
        if updated.is_some() && patch.password_hash.is_some() {
            self.spend_reset_tokens(id, now).await?;
        }
        Ok(updated)
    }

    async fn delete_user(&self, id: Uuid) -> Result<bool> {
        for attempt in 0..ATTEMPTS {
            let Some(user) = self.user_by_id(id).await? else {
                return Ok(false);
            };
            // The count of owned instances is checked in the same transaction that
            // deletes the user, and create_instance raises it in the transaction that
            // checks the user exists: an instance can neither be orphaned nor keep a
            // deleted owner. Role and flag as read: the admin set is kept in step.
            let mut writes = vec![
                self.tx_delete(
                    key(item::user_pk(id), "USER"),
                    Some(
                        "attribute_exists(#PK) AND #instances = :zero \
                         AND #role = :role AND #disabled = :disabled",
                    ),
                    values(&[
                        (":zero", n(0)),
                        (":role", s(user.role.as_str())),
                        (":disabled", b(user.disabled)),
                    ]),
                )?,
                self.tx_delete(key(item::email_pk(&user.email), "EMAIL"), None, Item::new())?,
            ];
            if active_admin(user.role, user.disabled) {
                writes.push(self.admins_remove(id)?);
            }
            match self.transact(writes).await? {
                Ok(()) => {
                    // Credentials go after the user: new ones check (in their
                    // transaction) that the user exists, so none can appear now.
                    let keys = self.credential_keys(id).await?;
                    self.delete_all(keys).await?;
                    return Ok(true);
                }
                Err(codes) if failed(&codes, 2) => {
                    if !self.rebuild_admins().await? {
                        return Err(Error::LastAdmin);
                    }
                }
                Err(codes) if failed(&codes, 0) => match self.user_by_id(id).await? {
                    None => return Ok(false),
                    Some(now) if (now.role, now.disabled) == (user.role, user.disabled) => {
                        return Err(Error::InUse(USER_IN_USE));
                    }
                    Some(_) => backoff(attempt).await,
                },
                Err(codes) => {
                    return Err(Error::Backend(format!(
                        "DynamoDB: user delete refused: {codes:?}"
                    )));
                }
            }
        }
        Err(contended("delete_user"))
    }

    async fn consume_totp_step(&self, user_id: Uuid, step: i64) -> Result<bool> {
        let done = self
            .update(
                key(item::user_pk(user_id), "USER"),
                "SET #totp_last_step = :step",
                Some(
                    "attribute_exists(#PK) AND \
                     (attribute_not_exists(#totp_last_step) OR #totp_last_step < :step)",
                ),
                values(&[(":step", n(step))]),
            )
            .await?;
        Ok(done.is_some())
    }

    // --- lockout ---

    async fn count_login_attempt(
        &self,
        email: &str,
        max_failures: u32,
        lock_for: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<LoginAttempt> {
        // Read, decide, write back only if nobody counted in between (`version`).
        for attempt in 0..ATTEMPTS {
            let current = self.get(item::loginfail_pk(email), "LOGINFAIL").await?;
            let (count, locked_until, version) = match &current {
                Some(it) => {
                    let r = item::Reader::new(it, "login failures");
                    (
                        r.i64("count")?,
                        r.opt_time("locked_until")?,
                        r.i64("version")?,
                    )
                }
                None => (0, None, 0),
            };
            if let Some(until) = locked_until.filter(|&until| until > now) {
                return Ok(LoginAttempt::Locked { until });
            }
            let next = count + 1;
            let (count, locked_until) = if next >= i64::from(max_failures) {
                (0, Some(now + lock_for))
            } else {
                (next, locked_until)
            };
            let row = Builder::keys(item::loginfail_pk(email), "LOGINFAIL")
                .set("email", s(email))
                .set("count", n(count))
                .opt("locked_until", locked_until.map(t))
                .set("updated_at", t(now))
                .set("version", n(version + 1))
                .build();
            let written = match current {
                Some(_) => {
                    self.put(
                        row,
                        Some("#version = :version"),
                        values(&[(":version", n(version))]),
                    )
                    .await?
                }
                None => self.put(row, Some(NEW), Item::new()).await?,
            };
            if written {
                let state = LoginFailures {
                    email: email.to_string(),
                    count,
                    locked_until,
                };
                return Ok(LoginAttempt::counted(&state, now));
            }
            backoff(attempt).await;
        }
        Err(contended("count_login_attempt"))
    }

    async fn login_failures(&self, email: &str) -> Result<Option<LoginFailures>> {
        self.get(item::loginfail_pk(email), "LOGINFAIL")
            .await?
            .map(|it| item::login_failures(&it))
            .transpose()
    }

    async fn clear_login_failures(&self, email: &str) -> Result<()> {
        self.delete(key(item::loginfail_pk(email), "LOGINFAIL"))
            .await?;
        Ok(())
    }

    // --- one-time e-mail tokens ---

    async fn create_action_token(&self, token: &ActionToken) -> Result<()> {
        let row = Builder::keys(item::token_pk(&token.token_hash), "TOKEN")
            .set("GSI1PK", s(item::user_pk(token.user_id)))
            .set("GSI1SK", s(format!("TOKEN#{}", token.token_hash)))
            .set("token_hash", s(&token.token_hash))
            .set("user_id", s(token.user_id.to_string()))
            .set("purpose", s(token.purpose.as_str()))
            .set("created_at", t(token.created_at))
            .set("expires_at", t(token.expires_at))
            .set("ttl", n(token.expires_at.timestamp()))
            .build();
        let writes = vec![
            self.tx_put(row, Some(NEW), Item::new())?,
            self.tx_check(
                key(item::user_pk(token.user_id), "USER"),
                EXISTS,
                Item::new(),
            )?,
            // In the user's collection too, so a password change finds every reset
            // token of the user with a consistent read (`spend_reset_tokens`).
            self.tx_put(item::token_pointer(token), None, Item::new())?,
        ];
        match self.transact(writes).await? {
            Ok(()) => Ok(()),
            Err(codes) if failed(&codes, 0) => Err(Error::Conflict("action token")),
            Err(_) => Err(Error::UnknownReference("user")),
        }
    }

    async fn consume_action_token(
        &self,
        token_hash: &str,
        purpose: TokenPurpose,
        now: DateTime<Utc>,
    ) -> Result<Option<Uuid>> {
        let Some(token) = self.get(item::token_pk(token_hash), "TOKEN").await? else {
            return Ok(None);
        };
        let user_id = item::Reader::new(&token, "action token").uuid("user_id")?;
        // Spent only if unused, of that purpose, unexpired, and its user still exists
        // (the user's deletion removes tokens through an index that may lag).
        let writes = vec![
            self.tx_update(
                key(item::token_pk(token_hash), "TOKEN"),
                "SET #used_at = :now",
                Some(
                    "attribute_exists(#PK) AND #purpose = :purpose \
                     AND attribute_not_exists(#used_at) AND #expires_at > :now",
                ),
                values(&[(":now", t(now)), (":purpose", s(purpose.as_str()))]),
            )?,
            self.tx_check(key(item::user_pk(user_id), "USER"), EXISTS, Item::new())?,
        ];
        Ok(self.transact(writes).await?.is_ok().then_some(user_id))
    }

    // --- refresh sessions ---

    async fn create_session(&self, session: &RefreshSession) -> Result<()> {
        let [by_id, by_hash, family] = item::session_pointers(session);
        let writes = vec![
            self.tx_put(item::session_item(session), Some(NEW), Item::new())?,
            self.tx_put(by_id, Some(NEW), Item::new())?,
            self.tx_put(by_hash, Some(NEW), Item::new())?,
            // A family belongs to one user; its item points at the newest session.
            self.tx_put(
                family,
                Some("attribute_not_exists(#PK) OR #user_id = :user"),
                values(&[(":user", s(session.user_id.to_string()))]),
            )?,
            self.tx_check(
                key(item::user_pk(session.user_id), "USER"),
                EXISTS,
                Item::new(),
            )?,
        ];
        match self.transact(writes).await? {
            Ok(()) => Ok(()),
            Err(codes) if failed(&codes, 4) => Err(Error::UnknownReference("user")),
            Err(_) => Err(Error::Conflict("session")),
        }
    }

    async fn session_by_hash(&self, token_hash: &str) -> Result<Option<RefreshSession>> {
        let Some(pointer) = self.get(item::rtoken_pk(token_hash), "RTOKEN").await? else {
            return Ok(None);
        };
        let r = item::Reader::new(&pointer, "session hash");
        let (user_id, id) = (r.uuid("user_id")?, r.uuid("session_id")?);
        self.get(item::user_pk(user_id), &format!("SESSION#{id}"))
            .await?
            .map(|it| item::session(&it))
            .transpose()
    }

    async fn rotate_session(
        &self,
        old_id: Uuid,
        next: &RefreshSession,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let Some(pointer) = self.get(item::session_pk(old_id), "SESSION").await? else {
            return Ok(false);
        };
        let old_user = item::Reader::new(&pointer, "session id").uuid("user_id")?;
        let [by_id, by_hash, family] = item::session_pointers(next);
        // One transaction: the old link is spent only if it is live, and the new one
        // exists only if the old one was spent.
        let writes = vec![
            self.tx_update(
                key(item::user_pk(old_user), &format!("SESSION#{old_id}")),
                "SET #replaced_at = :now",
                Some(
                    "attribute_exists(#PK) AND attribute_not_exists(#replaced_at) \
                     AND attribute_not_exists(#revoked_at)",
                ),
                values(&[(":now", t(now))]),
            )?,
            self.tx_put(item::session_item(next), Some(NEW), Item::new())?,
            self.tx_put(by_id, Some(NEW), Item::new())?,
            self.tx_put(by_hash, Some(NEW), Item::new())?,
            self.tx_put(
                family,
                Some("attribute_not_exists(#PK) OR #user_id = :user"),
                values(&[(":user", s(next.user_id.to_string()))]),
            )?,
        ];
        match self.transact(writes).await? {
            Ok(()) => Ok(true),
            Err(codes) if failed(&codes, 0) => Ok(false),
            Err(_) => Err(Error::Conflict("session")),
        }
    }

    async fn revoke_session_family(&self, family_id: Uuid, now: DateTime<Utc>) -> Result<u64> {
        let Some(family) = self.get(item::family_pk(family_id), "FAMILY").await? else {
            return Ok(0);
        };
        let user_id = item::Reader::new(&family, "session family").uuid("user_id")?;
        let sessions = self.sessions_of(user_id).await?;
        let members = sessions
            .into_iter()
            .filter(|session| session.family_id == family_id)
            .collect();
        self.revoke(members, now).await
    }

    async fn revoke_user_sessions(&self, user_id: Uuid, now: DateTime<Utc>) -> Result<u64> {
        let sessions = self.sessions_of(user_id).await?;
        self.revoke(sessions, now).await
    }

    async fn session_family_live(&self, family_id: Uuid) -> Result<bool> {
        // The family's item points at its newest link (rotation moves it in the same
        // transaction); the login is live while that link is neither replaced nor
        // revoked.
        let Some(family) = self.get(item::family_pk(family_id), "FAMILY").await? else {
            return Ok(false);
        };
        let r = item::Reader::new(&family, "session family");
        let (user_id, id) = (r.uuid("user_id")?, r.uuid("session_id")?);
        let Some(newest) = self
            .get(item::user_pk(user_id), &format!("SESSION#{id}"))
            .await?
        else {
            return Ok(false);
        };
        let newest = item::session(&newest)?;
        Ok(newest.replaced_at.is_none() && newest.revoked_at.is_none())
    }

    // --- API keys ---

    async fn create_api_key(&self, api_key: &ApiKey) -> Result<()> {
        let [by_id, by_hash] = item::api_key_pointers(api_key);
        let writes = vec![
            self.tx_put(item::api_key_item(api_key), Some(NEW), Item::new())?,
            self.tx_put(by_id, Some(NEW), Item::new())?,
            self.tx_put(by_hash, Some(NEW), Item::new())?,
            self.tx_check(
                key(item::user_pk(api_key.owner_id), "USER"),
                EXISTS,
                Item::new(),
            )?,
        ];
        match self.transact(writes).await? {
            Ok(()) => Ok(()),
            Err(codes) if failed(&codes, 3) => Err(Error::UnknownReference("user")),
            Err(_) => Err(Error::Conflict("api key")),
        }
    }

    async fn list_api_keys(&self, owner_id: Uuid) -> Result<Vec<ApiKey>> {
        self.query(
            Query::new(
                None,
                "#PK = :pk AND begins_with(#SK, :sk)",
                values(&[(":pk", s(item::user_pk(owner_id))), (":sk", s("APIKEY#"))]),
            )
            .newest_first(),
        )
        .await?
        .iter()
        .map(item::api_key)
        .collect()
    }

    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>> {
        let Some(pointer) = self.get(item::keyhash_pk(key_hash), "KEYHASH").await? else {
            return Ok(None);
        };
        let r = item::Reader::new(&pointer, "api key hash");
        self.get(item::user_pk(r.uuid("owner_id")?), r.str("key_sk")?)
            .await?
            .map(|it| item::api_key(&it))
            .transpose()
    }

    async fn delete_api_key(&self, owner_id: Uuid, id: Uuid) -> Result<bool> {
        let Some(pointer) = self.get(item::apikey_pk(id), "APIKEY").await? else {
            return Ok(false);
        };
        let r = item::Reader::new(&pointer, "api key id");
        // Owner-scoped: another user's key id looks like a missing one.
        if r.uuid("owner_id")? != owner_id {
            return Ok(false);
        }
        let Some(found) = self.get(item::user_pk(owner_id), r.str("key_sk")?).await? else {
            return Ok(false);
        };
        let existing = item::api_key(&found)?;
        let mut writes = vec![self.tx_delete(
            key(item::user_pk(owner_id), &item::api_key_sk(&existing)),
            Some(EXISTS),
            Item::new(),
        )?];
        for p in item::api_key_pointers(&existing) {
            writes.push(self.tx_delete(pointer_key(&p), None, Item::new())?);
        }
        Ok(self.transact(writes).await?.is_ok())
    }

    async fn touch_api_key(&self, id: Uuid, now: DateTime<Utc>) -> Result<()> {
        let Some(pointer) = self.get(item::apikey_pk(id), "APIKEY").await? else {
            return Ok(());
        };
        let r = item::Reader::new(&pointer, "api key id");
        self.update(
            key(item::user_pk(r.uuid("owner_id")?), r.str("key_sk")?),
            "SET #last_used_at = :now",
            Some(
                "attribute_exists(#PK) AND \
                 (attribute_not_exists(#last_used_at) OR #last_used_at < :now)",
            ),
            values(&[(":now", t(now))]),
        )
        .await?;
        Ok(())
    }

    async fn delete_user_api_keys(&self, owner_id: Uuid) -> Result<u64> {
        let mut deleted = 0;
        for key_id in self
            .list_api_keys(owner_id)
            .await?
            .into_iter()
            .map(|k| k.id)
        {
            deleted += u64::from(self.delete_api_key(owner_id, key_id).await?);
        }
        Ok(deleted)
    }

    // --- audit log ---

    async fn append_audit(&self, entry: &NewAuditEntry) -> Result<()> {
        let id = self.next_id("audit").await?;
        let sk = item::nkey(id);
        let row = Builder::keys("AUDIT".into(), sk.clone())
            .opt(
                "GSI1PK",
                entry.actor_id.map(|actor| s(format!("ACTOR#{actor}"))),
            )
            .opt("GSI1SK", entry.actor_id.map(|_| s(sk)))
            .set("id", n(id))
            .opt("actor_id", entry.actor_id.map(|a| s(a.to_string())))
            .opt("actor_email", entry.actor_email.as_deref().map(s))
            .set("action", s(&entry.action))
            .opt("target", entry.target.as_deref().map(s))
            .opt("ip", entry.ip.as_deref().map(s))
            .set("outcome", s(entry.outcome.as_str()))
            .opt("detail", entry.detail.as_deref().map(s))
            .set("at", t(entry.at))
            .build();
        if !self.put(row, Some(NEW), Item::new()).await? {
            return Err(Error::Conflict("audit entry"));
        }
        Ok(())
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        // By actor through GSI1, else the whole log; newest first either way, and the
        // other filters applied by DynamoDB on the way.
        let (index, pk_name, pk) = match filter.actor_id {
            Some(actor) => (Some("GSI1"), "GSI1", s(format!("ACTOR#{actor}"))),
            None => (None, "", s("AUDIT")),
        };
        let mut vals = vec![(":pk", pk)];
        let mut key_condition = format!("#{pk_name}PK = :pk");
        if let Some(before) = filter.before_id {
            key_condition.push_str(&format!(" AND #{pk_name}SK < :before"));
            vals.push((":before", s(item::nkey(before.max(0)))));
        }
        let mut conditions = Vec::new();
        if let Some(prefix) = &filter.action {
            conditions.push("begins_with(#action, :action)");
            vals.push((":action", s(prefix)));
        }
        if let Some(outcome) = filter.outcome {
            conditions.push("#outcome = :outcome");
            vals.push((":outcome", s(outcome.as_str())));
        }
        if let Some(since) = filter.since {
            conditions.push("#at >= :since");
            vals.push((":since", t(since)));
        }
        let filter_expression = conditions.join(" AND ");
        let mut query = Query::new(index, &key_condition, values(&vals))
            .newest_first()
            .want(filter.effective_limit() as usize);
        if !filter_expression.is_empty() {
            query = query.filter(&filter_expression);
        }
        self.query(query)
            .await?
            .iter()
            .map(item::audit_entry)
            .collect()
    }

    // --- mail outbox ---

    async fn push_outbox(&self, message: &OutboxMessage) -> Result<()> {
        if !self
            .put(item::outbox_item(message), Some(NEW), Item::new())
            .await?
        {
            return Err(Error::Conflict("outbox message"));
        }
        Ok(())
    }

    async fn list_outbox(&self, to: Option<&str>, limit: u32) -> Result<Vec<OutboxMessage>> {
        let query = match to {
            Some(to) => Query::new(
                Some("GSI1"),
                "#GSI1PK = :pk",
                values(&[(":pk", s(format!("MAILTO#{to}")))]),
            ),
            None => Query::new(None, "#PK = :pk", values(&[(":pk", s("OUTBOX"))])),
        };
        self.query(query.newest_first().want(page_limit(limit)))
            .await?
            .iter()
            .map(item::outbox_message)
            .collect()
    }

    // --- outbound job queue ---

    async fn enqueue_job(&self, job: &OutboundJob) -> Result<()> {
        if !self
            .put(item::job_item(job), Some(NEW), Item::new())
            .await?
        {
            return Err(Error::Conflict("outbound job"));
        }
        Ok(())
    }

    async fn claim_jobs(
        &self,
        kind: &str,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        limit: u32,
    ) -> Result<Vec<OutboundJob>> {
        let limit = limit.clamp(1, 100) as usize;
        // Candidates from the queue index (which may lag: a job it still shows may be
        // taken or finished). Each is claimed by a conditional update of the job itself,
        // so of two claimers only one wins it.
        let candidates = self
            .query(
                Query::new(
                    Some("GSI1"),
                    "#GSI1PK = :pk AND #GSI1SK <= :due",
                    values(&[
                        (":pk", s(format!("JOBQ#{kind}"))),
                        (":due", s(format!("{}#~", item::tkey(now)))),
                    ]),
                )
                .want(limit * 2),
            )
            .await?;
        let claim_id = Uuid::now_v7();
        let until = now + lease;
        let mut claimed = Vec::new();
        for candidate in &candidates {
            if claimed.len() == limit {
                break;
            }
            let id = item::Reader::new(candidate, "outbound job").uuid("id")?;
            let updated = self
                .update(
                    item::job_key(id),
                    "SET #status = :claimed, #claim_id = :claim, #lease_until = :until, \
                     #GSI1SK = :due, #updated_at = :now ADD #attempts :one",
                    Some(
                        "attribute_exists(#PK) AND ((#status = :pending AND #next_attempt_at <= :now) \
                         OR (#status = :claimed AND #lease_until <= :now))",
                    ),
                    values(&[
                        (":claimed", s(JobStatus::Claimed.as_str())),
                        (":pending", s(JobStatus::Pending.as_str())),
                        (":claim", s(claim_id.to_string())),
                        (":until", t(until)),
                        (":due", s(item::job_due_key(until, id))),
                        (":now", t(now)),
                        (":one", n(1)),
                    ]),
                )
                .await?;
            if let Some(it) = updated {
                claimed.push(item::job(&it)?);
            }
        }
        claimed.sort_by_key(|j| (j.next_attempt_at, j.id));
        Ok(claimed)
    }

    async fn finish_job(
        &self,
        id: Uuid,
        claim_id: Uuid,
        outcome: &JobOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut vals = vec![
            (":claim", s(claim_id.to_string())),
            (":claimed", s(JobStatus::Claimed.as_str())),
            (":now", t(now)),
        ];
        let (status, error, retry_at) = match outcome {
            JobOutcome::Sent => (JobStatus::Sent, None, None),
            JobOutcome::Dropped => (JobStatus::Dropped, None, None),
            JobOutcome::Retry { at, error } => (JobStatus::Pending, Some(error), Some(*at)),
            JobOutcome::Failed { error } => (JobStatus::Failed, Some(error), None),
        };
        vals.push((":status", s(status.as_str())));
        let mut set = vec!["#status = :status", "#updated_at = :now"];
        if let Some(error) = error {
            vals.push((":error", s(error)));
            set.push("#last_error = :error");
        }
        // A retry goes back into the queue at its time; anything else leaves it.
        let remove = match retry_at {
            Some(at) => {
                vals.push((":at", t(at)));
                vals.push((":due", s(item::job_due_key(at, id))));
                set.extend(["#next_attempt_at = :at", "#GSI1SK = :due"]);
                "#lease_until"
            }
            None => "#lease_until, #GSI1PK, #GSI1SK",
        };
        let expression = format!("SET {} REMOVE {remove}", set.join(", "));
        let done = self
            .update(
                item::job_key(id),
                &expression,
                Some("attribute_exists(#PK) AND #status = :claimed AND #claim_id = :claim"),
                values(&vals),
            )
            .await?;
        Ok(done.is_some())
    }

    async fn list_jobs(&self, kind: &str, limit: u32) -> Result<Vec<OutboundJob>> {
        self.query(
            Query::new(
                Some("GSI3"),
                "#GSI3PK = :pk",
                values(&[(":pk", s(format!("JOBS#{kind}")))]),
            )
            .newest_first()
            .want(page_limit(limit)),
        )
        .await?
        .iter()
        .map(item::job)
        .collect()
    }

    // --- model catalog ---

    async fn upsert_model(&self, model: &CatalogModel) -> Result<()> {
        if model.id.is_empty() {
            return Err(Error::Invalid("a model id cannot be empty".into()));
        }
        // An update (not a put) so the `instances` count of an existing entry stays.
        let fields = item::model_fields(model)?;
        let mut set = Vec::new();
        let mut vals = Vec::new();
        let placeholders: Vec<String> = fields.iter().map(|(name, _)| format!(":{name}")).collect();
        for ((name, value), placeholder) in fields.into_iter().zip(&placeholders) {
            set.push(format!("#{name} = {placeholder}"));
            vals.push((placeholder.as_str(), value));
        }
        let mut expression = format!(
            "SET {}, #instances = if_not_exists(#instances, :zero)",
            set.join(", ")
        );
        vals.push((":zero", n(0)));
        if model.weights_bytes.is_none() {
            expression.push_str(" REMOVE #weights_bytes");
        }
        self.update(item::model_key(&model.id), &expression, None, values(&vals))
            .await?;
        Ok(())
    }

    async fn model(&self, id: &str) -> Result<Option<CatalogModel>> {
        if id.is_empty() {
            return Ok(None);
        }
        self.get("CATALOG".into(), id)
            .await?
            .map(|it| item::model(&it))
            .transpose()
    }

    async fn list_models(&self) -> Result<Vec<CatalogModel>> {
        // One collection sorted by id: already in the promised order.
        self.query(Query::new(
            None,
            "#PK = :pk",
            values(&[(":pk", s("CATALOG"))]),
        ))
        .await?
        .iter()
        .map(item::model)
        .collect()
    }

    async fn delete_model(&self, id: &str) -> Result<bool> {
        if id.is_empty() {
            return Ok(false);
        }
        let writes = vec![self.tx_delete(
            item::model_key(id),
            Some("attribute_exists(#PK) AND #instances = :zero"),
            values(&[(":zero", n(0))]),
        )?];
        match self.transact(writes).await? {
            Ok(()) => Ok(true),
            Err(_) if self.model(id).await?.is_some() => Err(Error::InUse(MODEL_IN_USE)),
            Err(_) => Ok(false),
        }
    }

    // --- teams ---

    async fn create_team(&self, team: &Team) -> Result<()> {
        let writes = vec![
            self.tx_put(item::team_item(team), Some(NEW), Item::new())?,
            self.tx_put(
                item::team_name_item(&team.name, team.id),
                Some(NEW),
                Item::new(),
            )?,
        ];
        match self.transact(writes).await? {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::Conflict("team")),
        }
    }

    async fn team(&self, id: Uuid) -> Result<Option<Team>> {
        self.get("TEAMS".into(), &id.to_string())
            .await?
            .map(|it| item::team(&it))
            .transpose()
    }

    async fn list_teams(&self) -> Result<Vec<Team>> {
        let mut teams = self
            .query(Query::new(
                None,
                "#PK = :pk",
                values(&[(":pk", s("TEAMS"))]),
            ))
            .await?
            .iter()
            .map(item::team)
            .collect::<Result<Vec<_>>>()?;
        teams.sort_by_cached_key(|t| (Team::name_key(&t.name), t.id));
        Ok(teams)
    }

    async fn rename_team(&self, id: Uuid, name: &str) -> Result<Option<Team>> {
        for attempt in 0..ATTEMPTS {
            let Some(current) = self.team(id).await? else {
                return Ok(None);
            };
            let old_key = Team::name_key(&current.name);
            let new_key = Team::name_key(name);
            // Conditional on the name read above, so a concurrent rename is not undone.
            let mut writes = vec![self.tx_update(
                item::team_key(id),
                "SET #name = :name, #name_key = :new_key",
                Some("attribute_exists(#PK) AND #name_key = :old_key"),
                values(&[
                    (":name", s(name)),
                    (":new_key", s(&new_key)),
                    (":old_key", s(&old_key)),
                ]),
            )?];
            if new_key != old_key {
                writes.push(self.tx_put(item::team_name_item(name, id), Some(NEW), Item::new())?);
                writes.push(self.tx_delete(
                    item::team_name_key(&current.name),
                    None,
                    Item::new(),
                )?);
            }
            match self.transact(writes).await? {
                Ok(()) => {
                    return Ok(Some(Team {
                        name: name.to_string(),
                        ..current
                    }));
                }
                Err(codes) if failed(&codes, 1) => return Err(Error::Conflict("team")),
                Err(_) => backoff(attempt).await,
            }
        }
        Err(contended("team rename"))
    }

    async fn delete_team(&self, id: Uuid) -> Result<bool> {
        let Some(team) = self.team(id).await? else {
            return Ok(false);
        };
        // The instance count is checked in the transaction that deletes the team, and
        // create_instance raises it in one that checks the team exists (as for users).
        let writes = vec![
            self.tx_delete(
                item::team_key(id),
                Some("attribute_exists(#PK) AND #instances = :zero"),
                values(&[(":zero", n(0))]),
            )?,
            self.tx_delete(item::team_name_key(&team.name), None, Item::new())?,
        ];
        if let Err(codes) = self.transact(writes).await? {
            if failed(&codes, 0) && self.team(id).await?.is_some() {
                return Err(Error::InUse(TEAM_IN_USE));
            }
            return Ok(false);
        }
        // Memberships go after the team: adding one checks (in its transaction) that
        // the team exists, so none can appear from here on.
        let members = self.team_members(id).await?;
        self.delete_memberships(&members).await?;
        Ok(true)
    }

    async fn set_team_member(&self, member: &TeamMember) -> Result<TeamMember> {
        for attempt in 0..ATTEMPTS {
            let existing = self
                .get(
                    item::team_pk(member.team_id),
                    &format!("MEMBER#{}", member.user_id),
                )
                .await?
                .map(|it| item::team_member(&it))
                .transpose()?;
            // A role change keeps the first `added_at`; the condition makes a
            // concurrent first add or removal send this call round again.
            let (stored, condition, vals) = match &existing {
                Some(old) => (
                    TeamMember {
                        added_at: old.added_at,
                        ..member.clone()
                    },
                    "#added_at = :added",
                    values(&[(":added", t(old.added_at))]),
                ),
                None => (member.clone(), NEW, Item::new()),
            };
            let [in_team, in_user] = item::member_items(&stored);
            let writes = vec![
                self.tx_put(in_team, Some(condition), vals)?,
                self.tx_put(in_user, None, Item::new())?,
                self.tx_check(item::team_key(member.team_id), EXISTS, Item::new())?,
                self.tx_check(
                    key(item::user_pk(member.user_id), "USER"),
                    EXISTS,
                    Item::new(),
                )?,
            ];
            match self.transact(writes).await? {
                Ok(()) => return Ok(stored),
                Err(codes) if failed(&codes, 2) || failed(&codes, 3) => {
                    return Err(Error::UnknownReference("team or user"));
                }
                Err(_) => backoff(attempt).await,
            }
        }
        Err(contended("team membership"))
    }

    async fn remove_team_member(&self, team_id: Uuid, user_id: Uuid) -> Result<bool> {
        let Some(found) = self
            .get(item::team_pk(team_id), &format!("MEMBER#{user_id}"))
            .await?
        else {
            return Ok(false);
        };
        let [in_team, in_user] = item::member_items(&item::team_member(&found)?);
        let writes = vec![
            self.tx_delete(pointer_key(&in_team), Some(EXISTS), Item::new())?,
            self.tx_delete(pointer_key(&in_user), None, Item::new())?,
        ];
        Ok(self.transact(writes).await?.is_ok())
    }

    async fn team_members(&self, team_id: Uuid) -> Result<Vec<TeamMember>> {
        let mut members = self
            .query(Query::new(
                None,
                "#PK = :pk AND begins_with(#SK, :sk)",
                values(&[(":pk", s(item::team_pk(team_id))), (":sk", s("MEMBER#"))]),
            ))
            .await?
            .iter()
            .map(item::team_member)
            .collect::<Result<Vec<_>>>()?;
        members.sort_by_key(|m| (m.added_at, m.user_id));
        Ok(members)
    }

    async fn user_teams(&self, user_id: Uuid) -> Result<Vec<Membership>> {
        let links = self
            .query(Query::new(
                None,
                "#PK = :pk AND begins_with(#SK, :sk)",
                values(&[(":pk", s(item::user_pk(user_id))), (":sk", s("TEAM#"))]),
            ))
            .await?;
        let mut teams = Vec::with_capacity(links.len());
        for link in &links {
            let member = item::team_member(link)?;
            // A team being deleted loses its item first, then its memberships.
            if let Some(team) = self.team(member.team_id).await? {
                teams.push(Membership {
                    team,
                    role: member.role,
                });
            }
        }
        teams.sort_by_cached_key(|m| (Team::name_key(&m.team.name), m.team.id));
        Ok(teams)
    }

    // --- instances ---

    async fn create_instance(&self, instance: &Instance, admission: &Admission) -> Result<()> {
        check_settings(&instance.settings)?;
        if instance.model_id.is_empty() {
            return Err(Error::UnknownReference("model"));
        }
        let count_up = "ADD #instances :one";
        let one = || values(&[(":one", n(1))]);
        let charges = admission.charges(None, Some(instance));
        let mut writes = vec![
            self.tx_put(item::instance_item(instance, 0)?, Some(NEW), Item::new())?,
            self.tx_update(
                key(item::user_pk(instance.owner_id), "USER"),
                count_up,
                Some(EXISTS),
                one(),
            )?,
            self.tx_update(
                item::model_key(&instance.model_id),
                count_up,
                Some(EXISTS),
                one(),
            )?,
        ];
        // A team counts its instances as users and models do (RESTRICT on delete).
        if let Some(team_id) = instance.team_id {
            writes.push(self.tx_update(item::team_key(team_id), count_up, Some(EXISTS), one())?);
        }
        // The charges come last: their conditions are told apart by index.
        let first_charge = writes.len();
        writes.extend(self.charge_writes(&charges).await?);
        for attempt in 0..ATTEMPTS {
            return match self.transact(writes.clone()).await? {
                Ok(()) => Ok(()),
                Err(codes) if failed(&codes, 0) => Err(Error::Conflict("instance")),
                Err(codes) if (1..first_charge).any(|i| failed(&codes, i)) => {
                    Err(Error::UnknownReference("owner, model or team"))
                }
                Err(codes) => match self.refusal(&charges, &codes, first_charge).await? {
                    Some(refusal) => Err(Error::Refused(refusal)),
                    // Counters released between the refusal and the read: try again.
                    None => {
                        backoff(attempt).await;
                        continue;
                    }
                },
            };
        }
        Err(contended("instance create"))
    }

    async fn instance(&self, id: Uuid) -> Result<Option<Instance>> {
        Ok(self.load_instance(id).await?.map(|(inst, _)| inst))
    }

    async fn instance_for_owner(&self, id: Uuid, owner_id: Uuid) -> Result<Option<Instance>> {
        Ok(self
            .instance(id)
            .await?
            .filter(|inst| inst.owner_id == owner_id))
    }

    async fn list_instances(&self, owner_id: Option<Uuid>) -> Result<Vec<Instance>> {
        let query = match owner_id {
            Some(owner) => Query::new(
                Some("GSI1"),
                "#GSI1PK = :pk AND begins_with(#GSI1SK, :sk)",
                values(&[(":pk", s(item::user_pk(owner))), (":sk", s("INSTANCE#"))]),
            ),
            None => Query::new(
                Some("GSI2"),
                "#GSI2PK = :pk",
                values(&[(":pk", s("INSTANCES"))]),
            ),
        };
        self.query(query.newest_first())
            .await?
            .iter()
            .map(|it| item::instance(it).map(|(inst, _)| inst))
            .collect()
    }

    async fn list_team_instances(&self, team_id: Uuid) -> Result<Vec<Instance>> {
        self.query(
            Query::new(
                Some("GSI3"),
                "#GSI3PK = :pk",
                values(&[(":pk", s(item::team_instances_pk(team_id)))]),
            )
            .newest_first(),
        )
        .await?
        .iter()
        .map(|it| item::instance(it).map(|(inst, _)| inst))
        .collect()
    }

    async fn set_desired(
        &self,
        id: Uuid,
        from: Desired,
        to: Desired,
        admission: &Admission,
        now: DateTime<Utc>,
    ) -> Result<Option<DesiredChange>> {
        check_desired_change(from, to)?;
        let changed = self
            .modify_instance(id, admission, |inst| {
                if inst.desired != from {
                    return Ok(None);
                }
                apply_desired(inst, to, now);
                Ok(Some(Vec::new()))
            })
            .await?;
        Ok(changed.map(|(inst, written)| {
            if written {
                DesiredChange::Set(inst)
            } else {
                DesiredChange::Stale(inst)
            }
        }))
    }

    async fn update_instance_settings(
        &self,
        id: Uuid,
        settings: &InstanceSettings,
        admission: &Admission,
        now: DateTime<Utc>,
    ) -> Result<Option<Instance>> {
        check_settings(settings)?;
        let changed = self
            .modify_instance(id, admission, |inst| {
                inst.target_replicas = clamp_target(inst.target_replicas, settings);
                inst.settings = settings.clone();
                inst.updated_at = now;
                Ok(Some(Vec::new()))
            })
            .await?;
        Ok(changed.map(|(inst, _)| inst))
    }

    async fn transition(
        &self,
        id: Uuid,
        from: State,
        to: State,
        reason: Option<&str>,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        // Only an instance in `from` costs a sequence number; the state is checked
        // again under `version` when writing, and the event is written in the same
        // transaction (a lost race leaves a gap in the numbers, which is harmless).
        match self.load_instance(id).await? {
            Some((inst, _)) if inst.state == from => {}
            _ => return Ok(false),
        }
        let event = InstanceEvent {
            id: self.next_id("event").await?,
            instance_id: id,
            at: now,
            from_state: Some(from),
            to_state: Some(to),
            message: message.to_string(),
        };
        let changed = self
            .modify_instance(id, &Admission::unlimited(), |inst| {
                if inst.state != from {
                    return Ok(None);
                }
                inst.state = to;
                inst.state_reason = reason.map(str::to_string);
                inst.updated_at = now;
                if stops_clock(to) {
                    if let Some(since) = inst.running_since.take() {
                        // Whole seconds; a clock that went backwards adds nothing.
                        let micros = now.timestamp_micros() - since.timestamp_micros();
                        inst.running_seconds += (micros / 1_000_000).max(0);
                    }
                } else if starts_clock(to) && inst.running_since.is_none() {
                    inst.running_since = Some(now);
                }
                Ok(Some(vec![self.event_write(&event)?]))
            })
            .await?;
        Ok(matches!(changed, Some((_, true))))
    }

    async fn touch_activity(&self, id: Uuid, now: DateTime<Utc>) -> Result<()> {
        // One conditional update (the gateway calls this per request); it bumps
        // `version` so that concurrent read-modify-writes notice it.
        self.update(
            key(item::instance_pk(id), "INSTANCE"),
            "SET #last_activity_at = :now ADD #version :one",
            Some("attribute_exists(#PK) AND #last_activity_at < :now"),
            values(&[(":now", t(now)), (":one", n(1))]),
        )
        .await?;
        Ok(())
    }

    async fn set_target_replicas(
        &self,
        id: Uuid,
        replicas: u32,
        admission: &Admission,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let changed = self
            .modify_instance(id, admission, |inst| {
                inst.target_replicas = replicas;
                inst.updated_at = now;
                Ok(Some(Vec::new()))
            })
            .await?;
        Ok(changed.is_some())
    }

    async fn delete_instance(&self, id: Uuid, admission: &Admission) -> Result<bool> {
        let Some((inst, version)) = self.load_instance(id).await? else {
            return Ok(false);
        };
        let count_down = "ADD #instances :minus";
        let minus = || values(&[(":minus", n(-1))]);
        // Under `version`: what is released is what the instance holds as read.
        let mut writes = vec![
            self.tx_delete(
                key(item::instance_pk(id), "INSTANCE"),
                Some("#version = :version"),
                values(&[(":version", n(version))]),
            )?,
            self.tx_update(
                key(item::user_pk(inst.owner_id), "USER"),
                count_down,
                Some(EXISTS),
                minus(),
            )?,
            self.tx_update(
                item::model_key(&inst.model_id),
                count_down,
                Some(EXISTS),
                minus(),
            )?,
        ];
        if let Some(team_id) = inst.team_id {
            writes.push(self.tx_update(
                item::team_key(team_id),
                count_down,
                Some(EXISTS),
                minus(),
            )?);
        }
        writes.extend(
            self.charge_writes(&admission.charges(Some(&inst), None))
                .await?,
        );
        match self.transact(writes).await? {
            Ok(()) => {}
            // Gone, or changed since it was read: the caller's next attempt reads it again.
            Err(codes) if failed(&codes, 0) => {
                return match self.load_instance(id).await? {
                    None => Ok(false),
                    Some(_) => Box::pin(self.delete_instance(id, admission)).await,
                };
            }
            Err(codes) => {
                return Err(Error::Corrupt(format!(
                    "instance {id}: its owner, model or team is missing ({codes:?})"
                )));
            }
        }
        // Events and replicas go after the instance: appending to a deleted instance
        // checks it exists, so nothing new can appear in its collection from here on.
        let children = self
            .query(Query::new(
                None,
                "#PK = :pk",
                values(&[(":pk", s(item::instance_pk(id)))]),
            ))
            .await?;
        let mut keys = Vec::new();
        for it in &children {
            let r = item::Reader::new(it, "instance child");
            let sk = r.string("SK")?;
            if sk.starts_with("REPLICA#") {
                keys.push(key(item::replica_pointer_pk(r.uuid("id")?), "REPLICA"));
            }
            keys.push(key(r.string("PK")?, &sk));
        }
        self.delete_all(keys).await?;
        Ok(true)
    }

    // --- quotas and admission counters ---

    async fn quota(&self, subject: &Subject) -> Result<Option<Quota>> {
        let k = item::quota_key(&subject.key());
        let pk = item::Reader::new(&k, "quota key").string("PK")?;
        let Some(it) = self.get(pk, "QUOTA").await? else {
            return Ok(None);
        };
        let text = item::Reader::new(&it, "quota").string("quota")?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Corrupt(format!("quota {text:?}: {e}")))
    }

    async fn set_quota(&self, subject: &Subject, quota: &Quota, now: DateTime<Utc>) -> Result<()> {
        let text = serde_json::to_string(quota).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut it = item::quota_key(&subject.key());
        it.insert("quota".into(), s(text));
        it.insert("updated_at".into(), t(now));
        self.put(it, None, Item::new()).await?;
        Ok(())
    }

    async fn allocation(&self, subject: &Subject) -> Result<Allocation> {
        let k = item::allocation_key(&subject.key());
        let pk = item::Reader::new(&k, "allocation key").string("PK")?;
        let Some(it) = self.get(pk, "ALLOC").await? else {
            return Ok(Allocation::default());
        };
        let r = item::Reader::new(&it, "allocation");
        let count = |attr: &str| -> Result<i64> { Ok(r.opt_i64(attr)?.unwrap_or(0).max(0)) };
        Ok(Allocation {
            instances: count("instances")?,
            replicas: count("replicas")?,
            milli_vcpu: count("milli_vcpu")?,
            memory_mib: count("memory_mib")?,
            gpus: count("gpus")?,
        })
    }

    // --- instance events ---

    async fn append_event(
        &self,
        instance_id: Uuid,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let event = InstanceEvent {
            id: self.next_id("event").await?,
            instance_id,
            at: now,
            from_state: None,
            to_state: None,
            message: message.to_string(),
        };
        let writes = vec![
            self.event_write(&event)?,
            self.tx_check(
                key(item::instance_pk(instance_id), "INSTANCE"),
                EXISTS,
                Item::new(),
            )?,
        ];
        match self.transact(writes).await? {
            Ok(()) => Ok(()),
            Err(codes) if failed(&codes, 1) => Err(Error::UnknownReference("instance")),
            Err(_) => Err(Error::Conflict("instance event")),
        }
    }

    async fn list_events(&self, instance_id: Uuid, limit: u32) -> Result<Vec<InstanceEvent>> {
        let mut events = self
            .query(
                Query::new(
                    None,
                    "#PK = :pk AND begins_with(#SK, :sk)",
                    values(&[
                        (":pk", s(item::instance_pk(instance_id))),
                        (":sk", s("EVENT#")),
                    ]),
                )
                .newest_first()
                .want(page_limit(limit)),
            )
            .await?
            .iter()
            .map(item::event)
            .collect::<Result<Vec<_>>>()?;
        events.reverse();
        Ok(events)
    }

    // --- replicas ---

    async fn create_replica(&self, replica: &Replica) -> Result<()> {
        let pointer = Builder::keys(item::replica_pointer_pk(replica.id), "REPLICA")
            .set("instance_id", s(replica.instance_id.to_string()))
            .build();
        let writes = vec![
            self.tx_put(item::replica_item(replica)?, Some(NEW), Item::new())?,
            self.tx_put(pointer, Some(NEW), Item::new())?,
            self.tx_check(
                key(item::instance_pk(replica.instance_id), "INSTANCE"),
                EXISTS,
                Item::new(),
            )?,
        ];
        match self.transact(writes).await? {
            Ok(()) => Ok(()),
            Err(codes) if failed(&codes, 2) => Err(Error::UnknownReference("instance")),
            Err(_) => Err(Error::Conflict("replica")),
        }
    }

    async fn update_replica(&self, replica: &Replica) -> Result<bool> {
        // Only an existing replica of that instance is overwritten; the ids stay.
        self.put(
            item::replica_item(replica)?,
            Some("attribute_exists(#PK) AND #instance_id = :instance"),
            values(&[(":instance", s(replica.instance_id.to_string()))]),
        )
        .await
    }

    async fn delete_replica(&self, id: Uuid) -> Result<bool> {
        let Some(pointer) = self.get(item::replica_pointer_pk(id), "REPLICA").await? else {
            return Ok(false);
        };
        let instance_id = item::Reader::new(&pointer, "replica pointer").uuid("instance_id")?;
        let writes = vec![
            self.tx_delete(
                key(item::instance_pk(instance_id), &format!("REPLICA#{id}")),
                Some(EXISTS),
                Item::new(),
            )?,
            self.tx_delete(
                key(item::replica_pointer_pk(id), "REPLICA"),
                None,
                Item::new(),
            )?,
        ];
        Ok(self.transact(writes).await?.is_ok())
    }

    async fn list_replicas(&self, instance_id: Uuid) -> Result<Vec<Replica>> {
        let mut replicas = self
            .query(Query::new(
                None,
                "#PK = :pk AND begins_with(#SK, :sk)",
                values(&[
                    (":pk", s(item::instance_pk(instance_id))),
                    (":sk", s("REPLICA#")),
                ]),
            ))
            .await?
            .iter()
            .map(item::replica)
            .collect::<Result<Vec<_>>>()?;
        replicas.sort_by_key(|r| (r.started_at, r.id));
        Ok(replicas)
    }

    async fn all_replicas(&self) -> Result<Vec<Replica>> {
        // GSI3's sort key is instance, start, id: grouped by instance, oldest first.
        self.query(Query::new(
            Some("GSI3"),
            "#GSI3PK = :pk",
            values(&[(":pk", s("REPLICAS"))]),
        ))
        .await?
        .iter()
        .map(item::replica)
        .collect()
    }

    // --- replica runs ---

    async fn start_run(&self, run: &ReplicaRun) -> Result<()> {
        let pointer = Builder::keys(item::run_pointer_pk(run.id), "RUN")
            .set("instance_id", s(run.instance_id.to_string()))
            .build();
        let writes = vec![
            self.tx_put(item::run_item(run), Some(NEW), Item::new())?,
            self.tx_put(pointer, Some(NEW), Item::new())?,
        ];
        match self.transact(writes).await? {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::Conflict("replica run")),
        }
    }

    async fn end_run(&self, instance_id: Uuid, replica_id: Uuid, at: DateTime<Utc>) -> Result<u64> {
        let open = self
            .query(
                Query::new(
                    None,
                    "#PK = :pk",
                    values(&[
                        (":pk", s(item::runs_pk(instance_id))),
                        (":replica", s(replica_id.to_string())),
                    ]),
                )
                .filter("#replica_id = :replica AND attribute_not_exists(#ended_at)"),
            )
            .await?;
        let mut closed = 0;
        for it in open {
            let run = item::run(&it)?;
            // Never before its start, so a run is never negative.
            let end = at.max(run.started_at);
            let done = self
                .update(
                    key(
                        item::runs_pk(instance_id),
                        &item::Reader::new(&it, "run").string("SK")?,
                    ),
                    "SET #ended_at = :end",
                    Some("attribute_exists(#PK) AND attribute_not_exists(#ended_at)"),
                    values(&[(":end", t(end))]),
                )
                .await?;
            closed += u64::from(done.is_some());
        }
        Ok(closed)
    }

    async fn runs_for_instance(&self, instance_id: Uuid) -> Result<Vec<ReplicaRun>> {
        // The sort key is start then id: already in the promised order.
        self.query(Query::new(
            None,
            "#PK = :pk",
            values(&[(":pk", s(item::runs_pk(instance_id)))]),
        ))
        .await?
        .iter()
        .map(item::run)
        .collect()
    }

    async fn runs_overlapping(
        &self,
        owner_id: Option<Uuid>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Vec<ReplicaRun>> {
        let (index, pk) = match owner_id {
            Some(owner) => ("GSI1", format!("RUNOWNER#{owner}")),
            None => ("GSI2", "RUNS".to_string()),
        };
        let mut vals = vec![(":pk", s(pk))];
        // Started before `until`: the sort key begins with the start time.
        let key_condition = match until {
            Some(until) => {
                vals.push((":until", s(tkey(until))));
                format!("#{index}PK = :pk AND #{index}SK < :until")
            }
            None => format!("#{index}PK = :pk"),
        };
        let mut query = Query::new(Some(index), &key_condition, Item::new());
        let filter = "attribute_not_exists(#ended_at) OR #ended_at > :since";
        if let Some(since) = since {
            vals.push((":since", t(since)));
            query = query.filter(filter);
        }
        query.values = values(&vals);
        self.query(query).await?.iter().map(item::run).collect()
    }

    // --- usage ---

    async fn record_usage(&self, sample: &UsageSample) -> Result<()> {
        let counts = UsageCounts::of(sample)?;
        let hour = hour_start(sample.at)?;
        let sk = format!("{}#{}#{}", tkey(hour), sample.instance_id, sample.model_id);
        // One UpdateItem with ADD, whatever the count: DynamoDB applies concurrent ones
        // one after another, so no call's count is lost.
        self.update(
            key(item::usage_pk(sample.owner_id), &sk),
            "SET #GSI2PK = :all, #GSI2SK = :all_sk, #owner_id = :owner, \
             #instance_id = :instance, #model_id = :model, #hour = :hour \
             ADD #requests :requests, #prompt_tokens :prompt, #completion_tokens :completion",
            None,
            values(&[
                (":all", s("USAGE")),
                (":all_sk", s(format!("{sk}#{}", sample.owner_id))),
                (":owner", s(sample.owner_id.to_string())),
                (":instance", s(sample.instance_id.to_string())),
                (":model", s(&sample.model_id)),
                (":hour", t(hour)),
                (":requests", n(counts.requests)),
                (":prompt", n(counts.prompt_tokens)),
                (":completion", n(counts.completion_tokens)),
            ]),
        )
        .await?;
        Ok(())
    }

    async fn usage(
        &self,
        owner_id: Option<Uuid>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Vec<UsageRow>> {
        let (index, pk_name, pk) = match owner_id {
            Some(owner) => (None, "", item::usage_pk(owner)),
            None => (Some("GSI2"), "GSI2", "USAGE".to_string()),
        };
        // Sort keys start with the hour, so the window is a key range: `since` is
        // inclusive (a row at `since`'s hour sorts after the bare time key) and `until`
        // exclusive (a row at `until`'s hour sorts after it).
        let mut vals = vec![(":pk", s(pk))];
        let range = match (since, until) {
            (Some(since), Some(until)) => {
                vals.push((":since", s(tkey(since))));
                vals.push((":until", s(tkey(until))));
                format!(" AND #{pk_name}SK BETWEEN :since AND :until")
            }
            (Some(since), None) => {
                vals.push((":since", s(tkey(since))));
                format!(" AND #{pk_name}SK >= :since")
            }
            (None, Some(until)) => {
                vals.push((":until", s(tkey(until))));
                format!(" AND #{pk_name}SK < :until")
            }
            (None, None) => String::new(),
        };
        if let (Some(since), Some(until)) = (since, until)
            && since >= until
        {
            return Ok(Vec::new());
        }
        let key_condition = format!("#{pk_name}PK = :pk{range}");
        let mut rows = self
            .query(Query::new(index, &key_condition, values(&vals)))
            .await?
            .iter()
            .map(item::usage_row)
            .collect::<Result<Vec<_>>>()?;
        // Hour, then instance, model and owner, as the SQL backends order them (ids as
        // their text sorts, which is their byte order).
        rows.sort_by(|a, b| {
            (a.hour, a.instance_id, &a.model_id, a.owner_id).cmp(&(
                b.hour,
                b.instance_id,
                &b.model_id,
                b.owner_id,
            ))
        });
        Ok(rows)
    }

    // --- leases ---

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Option<Lease>> {
        // Read, decide (`Lease::next`, the rule the SQL backends keep in one
        // statement), write back only if the lease is still what was read: of two
        // contenders for an expired lease, one write fails its condition.
        for attempt in 0..ATTEMPTS {
            let current = self.lease(name).await?;
            let Some(next) = Lease::next(current.as_ref(), name, holder, now, expires_at) else {
                return Ok(None);
            };
            let row = Builder::keys(item::lease_pk(name), "LEASE")
                .set("name", s(name))
                .set("holder", s(holder))
                .set("token", n(next.token))
                .set("expires_at", t(expires_at))
                .build();
            let written = match &current {
                Some(c) => {
                    self.put(
                        row,
                        Some("#holder = :holder AND #token = :token AND #expires_at = :expires"),
                        values(&[
                            (":holder", s(&c.holder)),
                            (":token", n(c.token)),
                            (":expires", t(c.expires_at)),
                        ]),
                    )
                    .await?
                }
                None => self.put(row, Some(NEW), Item::new()).await?,
            };
            if written {
                return Ok(Some(next));
            }
            backoff(attempt).await;
        }
        Err(contended("acquire_lease"))
    }

    async fn release_lease(
        &self,
        name: &str,
        holder: &str,
        token: i64,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let Some(current) = self.lease(name).await? else {
            return Ok(false);
        };
        if current.holder != holder || current.token != token || current.expires_at <= now {
            return Ok(false);
        }
        let row = Builder::keys(item::lease_pk(name), "LEASE")
            .set("name", s(name))
            .set("holder", s(holder))
            .set("token", n(token))
            .set("expires_at", t(now))
            .build();
        self.put(
            row,
            Some("#holder = :holder AND #token = :token AND #expires_at = :expires"),
            values(&[
                (":holder", s(holder)),
                (":token", n(token)),
                (":expires", t(current.expires_at)),
            ]),
        )
        .await
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>> {
        self.get(item::lease_pk(name), "LEASE")
            .await?
            .map(|it| {
                let r = item::Reader::new(&it, "lease");
                Ok(Lease {
                    name: r.string("name")?,
                    holder: r.string("holder")?,
                    token: r.i64("token")?,
                    expires_at: r.time("expires_at")?,
                })
            })
            .transpose()
    }
}

/// The item attribute of a counter and the short name of its expression values.
fn counter_attr(r: Resource) -> (&'static str, &'static str) {
    match r {
        Resource::MaxInstances => ("instances", "i"),
        Resource::MaxReplicas => ("replicas", "r"),
        Resource::MaxVcpu => ("milli_vcpu", "v"),
        Resource::MaxMemoryMib => ("memory_mib", "m"),
        Resource::MaxGpus => ("gpus", "g"),
    }
}

//! Items: how each entity is written as DynamoDB attributes and read back, plus the
//! key encodings (see the key design in deploy/aws/templates/storage.yaml).
//!
//! Every field is its own attribute (readable in the console, usable in conditions);
//! optional fields that are `None` are left out rather than stored as NULL, so
//! `attribute_not_exists` tests them. Times are whole microseconds since the epoch
//! (a number), the precision the SQL backends keep.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use corral_core::{
    ApiKey, AuditEntry, CatalogModel, ComputeSpec, Instance, InstanceEvent, InstanceSettings,
    LoginFailures, ModelSource, OutboxMessage, RefreshSession, Replica, Team, TeamMember, UsageRow,
    User,
};
use corral_store::{ActionToken, Error, JobStatus, OutboundJob, ReplicaRun, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

pub type Item = HashMap<String, AttributeValue>;

// --- keys ---

/// A time as a sort-key fragment: microseconds since the epoch with the sign bit
/// flipped, as 20 digits, so string order is time order for every representable time
/// (negative ones included) at full precision.
pub fn tkey(at: DateTime<Utc>) -> String {
    format!("{:020}", (at.timestamp_micros() as u64) ^ (1 << 63))
}

/// A sequence number (audit entry, event) as a sort-key fragment: 20 digits.
pub fn nkey(n: i64) -> String {
    format!("{n:020}")
}

pub fn key(pk: String, sk: &str) -> Item {
    HashMap::from([
        ("PK".to_string(), AttributeValue::S(pk)),
        ("SK".to_string(), AttributeValue::S(sk.to_string())),
    ])
}

pub fn user_pk(id: Uuid) -> String {
    format!("USER#{id}")
}
pub fn email_pk(email: &str) -> String {
    format!("EMAIL#{email}")
}
pub fn lease_pk(name: &str) -> String {
    format!("LEASE#{name}")
}
pub fn loginfail_pk(email: &str) -> String {
    format!("LOGINFAIL#{email}")
}
pub fn token_pk(hash: &str) -> String {
    format!("TOKEN#{hash}")
}
pub fn session_pk(id: Uuid) -> String {
    format!("SESSION#{id}")
}
pub fn family_pk(id: Uuid) -> String {
    format!("FAMILY#{id}")
}
pub fn rtoken_pk(hash: &str) -> String {
    format!("RTOKEN#{hash}")
}
pub fn apikey_pk(id: Uuid) -> String {
    format!("APIKEY#{id}")
}
pub fn keyhash_pk(hash: &str) -> String {
    format!("KEYHASH#{hash}")
}
/// The catalog is one item collection, `CATALOG`, sorted by model id: a consistent
/// Query lists it in order.
pub fn model_key(id: &str) -> Item {
    key("CATALOG".into(), id)
}
pub fn instance_pk(id: Uuid) -> String {
    format!("INSTANCE#{id}")
}
pub fn replica_pointer_pk(id: Uuid) -> String {
    format!("REPLICA#{id}")
}
pub fn runs_pk(instance_id: Uuid) -> String {
    format!("RUNS#{instance_id}")
}
pub fn run_pointer_pk(id: Uuid) -> String {
    format!("RUN#{id}")
}
/// Every team is in one collection, `TEAMS`, sorted by id: a consistent Query lists
/// them all.
pub fn team_key(id: Uuid) -> Item {
    key("TEAMS".into(), &id.to_string())
}
/// Holds a team name (its `Team::name_key`) while a team has it: uniqueness.
pub fn team_name_key(name: &str) -> Item {
    key(format!("TEAMNAME#{}", Team::name_key(name)), "TEAMNAME")
}
pub fn team_name_item(name: &str, team_id: Uuid) -> Item {
    let mut it = team_name_key(name);
    it.insert("team_id".into(), s(team_id.to_string()));
    it
}
/// A team's members: `MEMBER#<user>` items in `TEAM#<team>`; each has a twin
/// `TEAM#<team>` in the user's collection, so both sides read consistently.
pub fn team_pk(id: Uuid) -> String {
    format!("TEAM#{id}")
}
pub fn team_instances_pk(id: Uuid) -> String {
    format!("TEAMINSTANCES#{id}")
}

/// A subject's admission counters (`corral_core::Subject::key`), SK `ALLOC`.
pub fn allocation_key(subject: &str) -> Item {
    key(format!("ALLOC#{subject}"), "ALLOC")
}

/// A subject's quota document (JSON of `corral_core::Quota`), SK `QUOTA`.
pub fn quota_key(subject: &str) -> Item {
    key(format!("QUOTA#{subject}"), "QUOTA")
}

pub fn usage_pk(owner_id: Uuid) -> String {
    format!("USAGE#{owner_id}")
}

// --- attribute values ---

pub fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub fn n(v: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub fn t(at: DateTime<Utc>) -> AttributeValue {
    n(at.timestamp_micros())
}

pub fn b(v: bool) -> AttributeValue {
    AttributeValue::Bool(v)
}

/// An enum as the lower-case text its serde form uses (the SQL backends store the same).
pub fn enum_text<T: Serialize>(value: &T) -> Result<String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => Ok(text),
        other => Err(Error::Invalid(format!("not a text enum: {other:?}"))),
    }
}

/// A u64 count as the signed 64-bit range the SQL backends hold, so every backend
/// refuses the same values.
pub fn signed(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::Invalid(format!("{what} {value} is too large")))
}

/// Builds an item attribute by attribute; `None` leaves the attribute out.
#[derive(Default)]
pub struct Builder(Item);

impl Builder {
    pub fn keys(pk: String, sk: impl Into<String>) -> Self {
        Builder::default().set("PK", s(pk)).set("SK", s(sk))
    }
    pub fn set(mut self, name: &str, value: AttributeValue) -> Self {
        self.0.insert(name.to_string(), value);
        self
    }
    pub fn opt(self, name: &str, value: Option<AttributeValue>) -> Self {
        match value {
            Some(value) => self.set(name, value),
            None => self,
        }
    }
    pub fn build(self) -> Item {
        self.0
    }
}

/// Reads the attributes of one item; every failure names the entity and attribute.
pub struct Reader<'a> {
    item: &'a Item,
    entity: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(item: &'a Item, entity: &'static str) -> Self {
        Reader { item, entity }
    }

    fn corrupt(&self, name: &str, why: &str) -> Error {
        Error::Corrupt(format!("{} attribute {name}: {why}", self.entity))
    }

    pub fn opt_str(&self, name: &str) -> Result<Option<&'a str>> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(v)) => Ok(Some(v)),
            Some(_) => Err(self.corrupt(name, "not a string")),
        }
    }
    pub fn str(&self, name: &str) -> Result<&'a str> {
        self.opt_str(name)?
            .ok_or_else(|| self.corrupt(name, "missing"))
    }
    pub fn string(&self, name: &str) -> Result<String> {
        self.str(name).map(str::to_string)
    }
    pub fn opt_string(&self, name: &str) -> Result<Option<String>> {
        Ok(self.opt_str(name)?.map(str::to_string))
    }

    pub fn opt_i64(&self, name: &str) -> Result<Option<i64>> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(v)) => v
                .parse()
                .map(Some)
                .map_err(|_| self.corrupt(name, "not a 64-bit integer")),
            Some(_) => Err(self.corrupt(name, "not a number")),
        }
    }
    pub fn i64(&self, name: &str) -> Result<i64> {
        self.opt_i64(name)?
            .ok_or_else(|| self.corrupt(name, "missing"))
    }
    pub fn u32(&self, name: &str) -> Result<u32> {
        let v = self.i64(name)?;
        u32::try_from(v).map_err(|_| self.corrupt(name, "not a u32"))
    }
    pub fn u64(&self, name: &str) -> Result<u64> {
        let v = self.i64(name)?;
        u64::try_from(v).map_err(|_| self.corrupt(name, "negative"))
    }
    pub fn opt_u64(&self, name: &str) -> Result<Option<u64>> {
        self.opt_i64(name)?
            .map(|v| u64::try_from(v).map_err(|_| self.corrupt(name, "negative")))
            .transpose()
    }
    pub fn f64(&self, name: &str) -> Result<f64> {
        match self.item.get(name) {
            Some(AttributeValue::N(v)) => v.parse().map_err(|_| self.corrupt(name, "not a number")),
            _ => Err(self.corrupt(name, "missing")),
        }
    }
    pub fn bool(&self, name: &str) -> Result<bool> {
        match self.item.get(name) {
            Some(AttributeValue::Bool(v)) => Ok(*v),
            _ => Err(self.corrupt(name, "missing or not a boolean")),
        }
    }
    pub fn opt_time(&self, name: &str) -> Result<Option<DateTime<Utc>>> {
        self.opt_i64(name)?
            .map(|micros| {
                DateTime::from_timestamp_micros(micros)
                    .ok_or_else(|| self.corrupt(name, "time out of range"))
            })
            .transpose()
    }
    pub fn time(&self, name: &str) -> Result<DateTime<Utc>> {
        self.opt_time(name)?
            .ok_or_else(|| self.corrupt(name, "missing"))
    }
    pub fn uuid(&self, name: &str) -> Result<Uuid> {
        let text = self.str(name)?;
        Uuid::parse_str(text).map_err(|_| self.corrupt(name, "not a UUID"))
    }
    pub fn opt_uuid(&self, name: &str) -> Result<Option<Uuid>> {
        self.opt_str(name)?
            .map(|text| Uuid::parse_str(text).map_err(|_| self.corrupt(name, "not a UUID")))
            .transpose()
    }
    pub fn enumeration<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let text = self.str(name)?;
        serde_json::from_value(serde_json::Value::String(text.to_string()))
            .map_err(|_| self.corrupt(name, &format!("unknown value {text:?}")))
    }
    pub fn opt_enumeration<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        match self.opt_str(name)? {
            None => Ok(None),
            Some(_) => self.enumeration(name).map(Some),
        }
    }
}

// --- users and credentials ---

pub fn user_item(user: &User) -> Result<Item> {
    Ok(Builder::keys(user_pk(user.id), "USER")
        .set("GSI2PK", s("USERS"))
        .set(
            "GSI2SK",
            s(format!("{}#{}", tkey(user.created_at), user.id)),
        )
        .set("id", s(user.id.to_string()))
        .set("email", s(&user.email))
        .set("display_name", s(&user.display_name))
        .set("password_hash", s(&user.password_hash))
        .set("role", s(user.role.as_str()))
        .set("email_verified", b(user.email_verified))
        .set("disabled", b(user.disabled))
        .opt("totp_secret", user.totp_secret.as_deref().map(s))
        .set("totp_enabled", b(user.totp_enabled))
        .opt("totp_last_step", user.totp_last_step.map(n))
        .set("created_at", t(user.created_at))
        .set("updated_at", t(user.updated_at))
        .opt("last_login_at", user.last_login_at.map(t))
        // How many instances the user owns: delete_user refuses while it is above zero.
        .set("instances", n(0))
        .build())
}

pub fn user(item: &Item) -> Result<User> {
    let r = Reader::new(item, "user");
    Ok(User {
        id: r.uuid("id")?,
        email: r.string("email")?,
        display_name: r.string("display_name")?,
        password_hash: r.string("password_hash")?,
        role: r.str("role")?.parse().map_err(Error::Corrupt)?,
        email_verified: r.bool("email_verified")?,
        disabled: r.bool("disabled")?,
        totp_secret: r.opt_string("totp_secret")?,
        totp_enabled: r.bool("totp_enabled")?,
        totp_last_step: r.opt_i64("totp_last_step")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
        last_login_at: r.opt_time("last_login_at")?,
    })
}

/// A reset or verification token's entry in its user's collection: a password change
/// finds the user's reset tokens with a consistent Query (the index may lag).
pub fn token_pointer(token: &ActionToken) -> Item {
    Builder::keys(
        user_pk(token.user_id),
        format!("TOKEN#{}", token.token_hash),
    )
    .set("token_hash", s(&token.token_hash))
    .set("purpose", s(token.purpose.as_str()))
    .set("ttl", n(token.expires_at.timestamp()))
    .build()
}

pub fn login_failures(item: &Item) -> Result<LoginFailures> {
    let r = Reader::new(item, "login failures");
    Ok(LoginFailures {
        email: r.string("email")?,
        count: r.i64("count")?,
        locked_until: r.opt_time("locked_until")?,
    })
}

/// A session lives in its user's item collection (`USER#<id>`), so revoking all of a
/// user's or a family's sessions is a strongly consistent Query that cannot miss one
/// created a moment ago.
pub fn session_item(session: &RefreshSession) -> Item {
    Builder::keys(user_pk(session.user_id), format!("SESSION#{}", session.id))
        .set("id", s(session.id.to_string()))
        .set("user_id", s(session.user_id.to_string()))
        .set("family_id", s(session.family_id.to_string()))
        .set("token_hash", s(&session.token_hash))
        .set("created_at", t(session.created_at))
        .set("expires_at", t(session.expires_at))
        .opt("replaced_at", session.replaced_at.map(t))
        .opt("revoked_at", session.revoked_at.map(t))
        .opt("ip", session.ip.as_deref().map(s))
        .opt("user_agent", session.user_agent.as_deref().map(s))
        // DynamoDB's TTL may drop it a while after it expired: it is useless by then.
        .set("ttl", n(session.expires_at.timestamp()))
        .build()
}

/// The items that find a session by id, by token hash and by family (each holds the
/// user, whose collection has the session; each is also the uniqueness of its key).
pub fn session_pointers(session: &RefreshSession) -> [Item; 3] {
    let pointer = |pk: String, sk: &str| {
        Builder::keys(pk, sk)
            .set("user_id", s(session.user_id.to_string()))
            .set("session_id", s(session.id.to_string()))
            .set("ttl", n(session.expires_at.timestamp()))
            .build()
    };
    [
        pointer(session_pk(session.id), "SESSION"),
        pointer(rtoken_pk(&session.token_hash), "RTOKEN"),
        pointer(family_pk(session.family_id), "FAMILY"),
    ]
}

pub fn session(item: &Item) -> Result<RefreshSession> {
    let r = Reader::new(item, "session");
    Ok(RefreshSession {
        id: r.uuid("id")?,
        user_id: r.uuid("user_id")?,
        family_id: r.uuid("family_id")?,
        token_hash: r.string("token_hash")?,
        created_at: r.time("created_at")?,
        expires_at: r.time("expires_at")?,
        replaced_at: r.opt_time("replaced_at")?,
        revoked_at: r.opt_time("revoked_at")?,
        ip: r.opt_string("ip")?,
        user_agent: r.opt_string("user_agent")?,
    })
}

/// The sort key of an API key in its owner's collection: newest last, by creation.
pub fn api_key_sk(key: &ApiKey) -> String {
    format!("APIKEY#{}#{}", tkey(key.created_at), key.id)
}

/// An API key lives in its owner's item collection (listed by a consistent Query).
pub fn api_key_item(key: &ApiKey) -> Item {
    Builder::keys(user_pk(key.owner_id), api_key_sk(key))
        .set("id", s(key.id.to_string()))
        .set("owner_id", s(key.owner_id.to_string()))
        .set("name", s(&key.name))
        .set("prefix", s(&key.prefix))
        .set("key_hash", s(&key.key_hash))
        .set("created_at", t(key.created_at))
        .opt("expires_at", key.expires_at.map(t))
        .opt("last_used_at", key.last_used_at.map(t))
        .build()
}

/// The items that find a key by id and by hash (and keep both unique).
pub fn api_key_pointers(key: &ApiKey) -> [Item; 2] {
    let pointer = |pk: String, sk: &str| {
        Builder::keys(pk, sk)
            .set("owner_id", s(key.owner_id.to_string()))
            .set("key_sk", s(api_key_sk(key)))
            .build()
    };
    [
        pointer(apikey_pk(key.id), "APIKEY"),
        pointer(keyhash_pk(&key.key_hash), "KEYHASH"),
    ]
}

pub fn api_key(item: &Item) -> Result<ApiKey> {
    let r = Reader::new(item, "api key");
    Ok(ApiKey {
        id: r.uuid("id")?,
        owner_id: r.uuid("owner_id")?,
        name: r.string("name")?,
        prefix: r.string("prefix")?,
        key_hash: r.string("key_hash")?,
        created_at: r.time("created_at")?,
        expires_at: r.opt_time("expires_at")?,
        last_used_at: r.opt_time("last_used_at")?,
    })
}

// --- audit log and outbox ---

pub fn audit_entry(item: &Item) -> Result<AuditEntry> {
    let r = Reader::new(item, "audit entry");
    Ok(AuditEntry {
        id: r.i64("id")?,
        actor_id: r.opt_uuid("actor_id")?,
        actor_email: r.opt_string("actor_email")?,
        action: r.string("action")?,
        target: r.opt_string("target")?,
        ip: r.opt_string("ip")?,
        outcome: r.enumeration("outcome")?,
        detail: r.opt_string("detail")?,
        at: r.time("at")?,
    })
}

pub fn outbox_item(message: &OutboxMessage) -> Item {
    let sk = format!("{}#{}", tkey(message.created_at), message.id);
    Builder::keys("OUTBOX".into(), sk.clone())
        .set("GSI1PK", s(format!("MAILTO#{}", message.to)))
        .set("GSI1SK", s(sk))
        .set("id", s(message.id.to_string()))
        .set("to", s(&message.to))
        .set("subject", s(&message.subject))
        .set("body", s(&message.body))
        .set("created_at", t(message.created_at))
        .build()
}

pub fn outbox_message(item: &Item) -> Result<OutboxMessage> {
    let r = Reader::new(item, "outbox message");
    Ok(OutboxMessage {
        id: r.uuid("id")?,
        to: r.string("to")?,
        subject: r.string("subject")?,
        body: r.string("body")?,
        created_at: r.time("created_at")?,
    })
}

// --- catalog ---

/// The attributes `upsert_model` sets (all but the keys and the `instances` count,
/// which the upsert must keep).
pub fn model_fields(model: &CatalogModel) -> Result<Vec<(&'static str, AttributeValue)>> {
    let source = serde_json::to_string(&model.source)
        .map_err(|e| Error::Invalid(format!("model source: {e}")))?;
    let mut fields = vec![
        ("id", s(&model.id)),
        ("family", s(&model.family)),
        ("size", s(&model.size)),
        ("cpu_supported", b(model.cpu_supported)),
        ("gpu_supported", b(model.gpu_supported)),
        ("memory_required", n(model.memory_required)),
        ("expected_deploy_seconds", n(model.expected_deploy_seconds)),
        ("source", s(source)),
        ("builtin", b(model.builtin)),
    ];
    if let Some(bytes) = model.weights_bytes {
        fields.push(("weights_bytes", n(signed(bytes, "weights_bytes")?)));
    }
    Ok(fields)
}

pub fn model(item: &Item) -> Result<CatalogModel> {
    let r = Reader::new(item, "model");
    let source = r.str("source")?;
    let source: ModelSource = serde_json::from_str(source)
        .map_err(|e| Error::Corrupt(format!("model source {source:?}: {e}")))?;
    Ok(CatalogModel {
        id: r.string("id")?,
        family: r.string("family")?,
        size: r.string("size")?,
        cpu_supported: r.bool("cpu_supported")?,
        gpu_supported: r.bool("gpu_supported")?,
        memory_required: r.u32("memory_required")?,
        expected_deploy_seconds: r.u32("expected_deploy_seconds")?,
        source,
        weights_bytes: r.opt_u64("weights_bytes")?,
        builtin: r.bool("builtin")?,
    })
}

// --- instances, events, replicas, runs ---

fn compute_attrs(builder: Builder, compute: &ComputeSpec) -> Builder {
    builder
        .set("compute_type", s(compute.compute_type.as_str()))
        .set("cpu", n(compute.cpu))
        .set("memory", n(compute.memory))
        .set("gpu_count", n(compute.gpu_count))
        .opt("instance_type", compute.instance_type.as_deref().map(s))
        .set("spot", b(compute.spot))
}

fn compute(r: &Reader) -> Result<ComputeSpec> {
    Ok(ComputeSpec {
        compute_type: r.str("compute_type")?.parse().map_err(Error::Corrupt)?,
        cpu: r.f64("cpu")?,
        memory: r.u32("memory")?,
        gpu_count: r.u32("gpu_count")?,
        instance_type: r.opt_string("instance_type")?,
        spot: r.bool("spot")?,
    })
}

/// The whole instance item; `version` is the optimistic-concurrency counter every
/// read-modify-write checks and bumps.
pub fn instance_item(inst: &Instance, version: i64) -> Result<Item> {
    let created = format!("{}#{}", tkey(inst.created_at), inst.id);
    let builder = Builder::keys(instance_pk(inst.id), "INSTANCE")
        .set("GSI1PK", s(user_pk(inst.owner_id)))
        .set("GSI1SK", s(format!("INSTANCE#{created}")))
        .set("GSI2PK", s("INSTANCES"))
        .set("GSI2SK", s(created.clone()))
        .set("version", n(version))
        .set("id", s(inst.id.to_string()))
        .set("owner_id", s(inst.owner_id.to_string()))
        .set("model_id", s(&inst.model_id))
        .set("driver", s(&inst.driver))
        .opt("team_id", inst.team_id.map(|id| s(id.to_string())))
        .opt("GSI3PK", inst.team_id.map(|id| s(team_instances_pk(id))))
        .opt("GSI3SK", inst.team_id.map(|_| s(created.clone())));
    Ok(compute_attrs(builder, &inst.compute)
        .set(
            "idle_timeout_seconds",
            n(inst.settings.idle_timeout_seconds),
        )
        .set("min_replicas", n(inst.settings.min_replicas))
        .set("max_replicas", n(inst.settings.max_replicas))
        .set("wake_on_request", b(inst.settings.wake_on_request))
        .set("desired", s(enum_text(&inst.desired)?))
        .set("state", s(inst.state.as_str()))
        .opt("state_reason", inst.state_reason.as_deref().map(s))
        .set("target_replicas", n(inst.target_replicas))
        .set("created_at", t(inst.created_at))
        .set("updated_at", t(inst.updated_at))
        .set("last_activity_at", t(inst.last_activity_at))
        .opt("running_since", inst.running_since.map(t))
        .set("running_seconds", n(inst.running_seconds))
        .build())
}

/// The instance and its `version`.
pub fn instance(item: &Item) -> Result<(Instance, i64)> {
    let r = Reader::new(item, "instance");
    let inst = Instance {
        id: r.uuid("id")?,
        owner_id: r.uuid("owner_id")?,
        model_id: r.string("model_id")?,
        driver: r.string("driver")?,
        compute: compute(&r)?,
        settings: InstanceSettings {
            idle_timeout_seconds: r.u32("idle_timeout_seconds")?,
            min_replicas: r.u32("min_replicas")?,
            max_replicas: r.u32("max_replicas")?,
            wake_on_request: r.bool("wake_on_request")?,
        },
        desired: r.enumeration("desired")?,
        state: r.enumeration("state")?,
        state_reason: r.opt_string("state_reason")?,
        target_replicas: r.u32("target_replicas")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
        last_activity_at: r.time("last_activity_at")?,
        running_since: r.opt_time("running_since")?,
        running_seconds: r.i64("running_seconds")?,
        team_id: r.opt_uuid("team_id")?,
    };
    Ok((inst, r.i64("version")?))
}

pub fn event_item(event: &InstanceEvent) -> Item {
    Builder::keys(
        instance_pk(event.instance_id),
        format!("EVENT#{}", nkey(event.id)),
    )
    .set("id", n(event.id))
    .set("instance_id", s(event.instance_id.to_string()))
    .set("at", t(event.at))
    .opt("from_state", event.from_state.map(|st| s(st.as_str())))
    .opt("to_state", event.to_state.map(|st| s(st.as_str())))
    .set("message", s(&event.message))
    .build()
}

pub fn event(item: &Item) -> Result<InstanceEvent> {
    let r = Reader::new(item, "instance event");
    Ok(InstanceEvent {
        id: r.i64("id")?,
        instance_id: r.uuid("instance_id")?,
        at: r.time("at")?,
        from_state: r.opt_enumeration("from_state")?,
        to_state: r.opt_enumeration("to_state")?,
        message: r.string("message")?,
    })
}

/// A replica lives in its instance's item collection (one strongly consistent Query
/// lists them), and in GSI3 under `REPLICAS` for adopting every replica at start.
pub fn replica_item(replica: &Replica) -> Result<Item> {
    Ok(Builder::keys(
        instance_pk(replica.instance_id),
        format!("REPLICA#{}", replica.id),
    )
    .set("GSI3PK", s("REPLICAS"))
    .set(
        "GSI3SK",
        s(format!(
            "{}#{}#{}",
            replica.instance_id,
            tkey(replica.started_at),
            replica.id
        )),
    )
    .set("id", s(replica.id.to_string()))
    .set("instance_id", s(replica.instance_id.to_string()))
    .set("driver_ref", s(&replica.driver_ref))
    .opt("endpoint", replica.endpoint.as_deref().map(s))
    .set("state", s(enum_text(&replica.state)?))
    .set("restarts", n(replica.restarts))
    .set("started_at", t(replica.started_at))
    .set("updated_at", t(replica.updated_at))
    .build())
}

pub fn replica(item: &Item) -> Result<Replica> {
    let r = Reader::new(item, "replica");
    Ok(Replica {
        id: r.uuid("id")?,
        instance_id: r.uuid("instance_id")?,
        driver_ref: r.string("driver_ref")?,
        endpoint: r.opt_string("endpoint")?,
        state: r.enumeration("state")?,
        restarts: r.u32("restarts")?,
        started_at: r.time("started_at")?,
        updated_at: r.time("updated_at")?,
    })
}

/// A run lives in its instance's run collection (`RUNS#<instance>`, which outlives
/// the instance), and is indexed by owner (GSI1) and for everyone (GSI2) by start.
pub fn run_item(run: &ReplicaRun) -> Item {
    let started = format!("{}#{}", tkey(run.started_at), run.id);
    let builder = Builder::keys(runs_pk(run.instance_id), started.clone())
        .set("GSI1PK", s(format!("RUNOWNER#{}", run.owner_id)))
        .set("GSI1SK", s(started.clone()))
        .set("GSI2PK", s("RUNS"))
        .set("GSI2SK", s(started))
        .set("id", s(run.id.to_string()))
        .set("replica_id", s(run.replica_id.to_string()))
        .set("instance_id", s(run.instance_id.to_string()))
        .set("owner_id", s(run.owner_id.to_string()))
        .set("model_id", s(&run.model_id))
        .set("driver", s(&run.driver))
        .set("driver_ref", s(&run.driver_ref));
    compute_attrs(builder, &run.compute)
        .set("started_at", t(run.started_at))
        .opt("ended_at", run.ended_at.map(t))
        .build()
}

pub fn run(item: &Item) -> Result<ReplicaRun> {
    let r = Reader::new(item, "replica run");
    Ok(ReplicaRun {
        id: r.uuid("id")?,
        replica_id: r.uuid("replica_id")?,
        instance_id: r.uuid("instance_id")?,
        owner_id: r.uuid("owner_id")?,
        model_id: r.string("model_id")?,
        driver: r.string("driver")?,
        driver_ref: r.string("driver_ref")?,
        compute: compute(&r)?,
        started_at: r.time("started_at")?,
        ended_at: r.opt_time("ended_at")?,
    })
}

// --- teams ---

pub fn team_item(team: &Team) -> Item {
    Builder::keys("TEAMS".into(), team.id.to_string())
        .set("id", s(team.id.to_string()))
        .set("name", s(&team.name))
        .set("name_key", s(Team::name_key(&team.name)))
        .set("created_at", t(team.created_at))
        // How many instances the team owns: delete_team refuses while it is above zero.
        .set("instances", n(0))
        .build()
}

pub fn team(item: &Item) -> Result<Team> {
    let r = Reader::new(item, "team");
    Ok(Team {
        id: r.uuid("id")?,
        name: r.string("name")?,
        created_at: r.time("created_at")?,
    })
}

/// The two items of a membership: in the team's collection, then in the user's.
pub fn member_items(member: &TeamMember) -> [Item; 2] {
    let attrs = |builder: Builder| {
        builder
            .set("team_id", s(member.team_id.to_string()))
            .set("user_id", s(member.user_id.to_string()))
            .set("role", s(member.role.as_str()))
            .set("added_at", t(member.added_at))
            .build()
    };
    [
        attrs(Builder::keys(
            team_pk(member.team_id),
            format!("MEMBER#{}", member.user_id),
        )),
        attrs(Builder::keys(
            user_pk(member.user_id),
            format!("TEAM#{}", member.team_id),
        )),
    ]
}

pub fn team_member(item: &Item) -> Result<TeamMember> {
    let r = Reader::new(item, "team member");
    Ok(TeamMember {
        team_id: r.uuid("team_id")?,
        user_id: r.uuid("user_id")?,
        role: r.str("role")?.parse().map_err(Error::Corrupt)?,
        added_at: r.time("added_at")?,
    })
}

// --- usage ---

pub fn usage_row(item: &Item) -> Result<UsageRow> {
    let r = Reader::new(item, "usage");
    Ok(UsageRow {
        owner_id: r.uuid("owner_id")?,
        instance_id: r.uuid("instance_id")?,
        model_id: r.string("model_id")?,
        hour: r.time("hour")?,
        requests: r.u64("requests")?,
        prompt_tokens: r.u64("prompt_tokens")?,
        completion_tokens: r.u64("completion_tokens")?,
    })
}

// --- outbound jobs ---

pub fn job_key(id: Uuid) -> Item {
    key(format!("JOB#{id}"), "JOB")
}

/// The queue's sort key of a job: when it can next be claimed (its `next_attempt_at`
/// while pending, the end of its lease while claimed).
pub fn job_due_key(due: DateTime<Utc>, id: Uuid) -> String {
    format!("{}#{id}", tkey(due))
}

/// A job, in GSI1 under `JOBQ#<kind>` while it is pending or claimed (sparse: a finished
/// job leaves the queue), and in GSI3 under `JOBS#<kind>` by creation, for lists.
pub fn job_item(job: &OutboundJob) -> Item {
    let due = match job.status {
        JobStatus::Claimed => job.lease_until,
        JobStatus::Pending => Some(job.next_attempt_at),
        _ => None,
    };
    Builder::keys(format!("JOB#{}", job.id), "JOB")
        .opt("GSI1PK", due.map(|_| s(format!("JOBQ#{}", job.kind))))
        .opt("GSI1SK", due.map(|at| s(job_due_key(at, job.id))))
        .set("GSI3PK", s(format!("JOBS#{}", job.kind)))
        .set("GSI3SK", s(format!("{}#{}", tkey(job.created_at), job.id)))
        .set("id", s(job.id.to_string()))
        .set("kind", s(&job.kind))
        .set("payload", s(&job.payload))
        .set("status", s(job.status.as_str()))
        .set("attempts", n(job.attempts))
        .set("next_attempt_at", t(job.next_attempt_at))
        .opt("lease_until", job.lease_until.map(t))
        .opt("claim_id", job.claim_id.map(|c| s(c.to_string())))
        .opt("last_error", job.last_error.as_deref().map(s))
        .set("created_at", t(job.created_at))
        .set("updated_at", t(job.updated_at))
        .build()
}

pub fn job(item: &Item) -> Result<OutboundJob> {
    let r = Reader::new(item, "outbound job");
    Ok(OutboundJob {
        id: r.uuid("id")?,
        kind: r.string("kind")?,
        payload: r.string("payload")?,
        status: JobStatus::parse(r.str("status")?)?,
        attempts: r.u32("attempts")?,
        next_attempt_at: r.time("next_attempt_at")?,
        lease_until: r.opt_time("lease_until")?,
        claim_id: r.opt_uuid("claim_id")?,
        last_error: r.opt_string("last_error")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_keys_sort_like_times() {
        let times = [
            DateTime::from_timestamp_micros(-5_000_000).unwrap(),
            DateTime::from_timestamp_micros(-1).unwrap(),
            DateTime::from_timestamp_micros(0).unwrap(),
            DateTime::from_timestamp_micros(1).unwrap(),
            DateTime::from_timestamp_micros(1_700_000_000_000_001).unwrap(),
        ];
        let keys: Vec<String> = times.iter().map(|at| tkey(*at)).collect();
        assert!(keys.iter().all(|k| k.len() == 20));
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
    }
}

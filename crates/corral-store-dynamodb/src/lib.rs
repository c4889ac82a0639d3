//! Corral's `Store` on Amazon DynamoDB, in its own crate so that builds without it do
//! not compile the AWS SDK.
//!
//! One table, the single-table design documented in `deploy/aws/templates/storage.yaml`
//! (keys `PK`/`SK`, overloaded sparse indexes `GSI1`..`GSI3`). The SQL backends'
//! guarantees are kept with DynamoDB's own tools:
//! * uniqueness (e-mail, token and key hashes, ids) by extra items written in the same
//!   `TransactWriteItems` with `attribute_not_exists(PK)`;
//! * foreign keys by `ConditionCheck`s in the same transaction, and `ON DELETE
//!   RESTRICT` by reference counts (`instances` on users and models) that the
//!   transaction creating or deleting an instance adjusts;
//! * state transitions and other read-modify-writes of an instance by a `version`
//!   attribute that each write checks and bumps (optimistic concurrency, retried);
//! * counters (usage, sequence numbers) by `UpdateItem ADD`, which is atomic.
//!
//! Everything that must read its own writes uses the table's keys with strongly
//! consistent reads: lookups by id or hash, a user's sessions and API keys (kept in the
//! user's item collection, so revoking them cannot miss one created a moment ago), an
//! instance with its events and replicas, runs, the catalog, the audit log and the
//! outbox. Only lists across users (all users, a user's instances, all instances, all
//! replicas, runs by owner, everyone's usage, mail to one recipient) read a global
//! secondary index, which DynamoDB updates asynchronously (usually within a second).

use std::collections::HashMap;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, Projection, ProjectionType, Put, ReturnValue, ScalarAttributeType,
    Select, TableStatus, TimeToLiveSpecification, TransactWriteItem, Update,
};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use corral_store::{Error, Result};

mod item;
mod store;

use item::Item;

/// The indexes of the table, each with `<name>PK`/`<name>SK` string keys.
const INDEXES: [&str; 3] = ["GSI1", "GSI2", "GSI3"];

/// How often a write that lost an optimistic race (or a transaction conflict) is
/// tried again before giving up with an error.
const ATTEMPTS: u32 = 20;

/// The DynamoDB store. Cheap to clone (the SDK client is shared).
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

/// Where the store lives, parsed from `dynamodb://TABLE[?region=REGION]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoUrl {
    pub table: String,
    pub region: Option<String>,
}

impl DynamoUrl {
    /// Parses `dynamodb://TABLE[?region=REGION]`. TABLE is the whole table name (the
    /// storage stack names it `<environment>-store`), so the name doubles as the
    /// prefix that keeps environments (and test runs) apart.
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("dynamodb://")
            .ok_or_else(|| Error::UnsupportedUrl(url.to_string()))?;
        let (table, query) = match rest.split_once('?') {
            Some((table, query)) => (table, Some(query)),
            None => (rest, None),
        };
        // DynamoDB's own rule for table names.
        let valid = (3..=255).contains(&table.len())
            && table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid {
            return Err(Error::Invalid(format!(
                "DynamoDB table name {table:?}: 3-255 letters, digits, '_', '-' or '.'"
            )));
        }
        let mut region = None;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            match pair.split_once('=') {
                Some(("region", value)) if !value.is_empty() => {
                    region = Some(value.to_string());
                }
                _ => {
                    return Err(Error::Invalid(format!(
                        "dynamodb:// URL parameter {pair:?}: only region=REGION is known"
                    )));
                }
            }
        }
        Ok(DynamoUrl {
            table: table.to_string(),
            region,
        })
    }
}

impl DynamoStore {
    /// Opens `dynamodb://TABLE[?region=REGION]`: credentials from the usual AWS chain,
    /// the endpoint from `AWS_ENDPOINT_URL` if set (moto, DynamoDB Local), the region
    /// from the URL or else `AWS_REGION`. The table is created when missing (see
    /// `create_table_if_missing`), as the SQL backends create their schema on open.
    pub async fn open(url: &str) -> Result<Self> {
        let url = DynamoUrl::parse(url)?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
        if let Some(region) = url.region {
            loader = loader.region(Region::new(region));
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(Error::Invalid(
                "no AWS region for the DynamoDB store: set AWS_REGION or add ?region=REGION \
                 to the dynamodb:// URL"
                    .into(),
            ));
        }
        let store = DynamoStore::new(Client::new(&sdk), url.table);
        store.create_table_if_missing().await?;
        Ok(store)
    }

    /// A store on `table` through an existing client (nothing is checked or created).
    pub fn new(client: Client, table: String) -> Self {
        DynamoStore { client, table }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table with the layout of `deploy/aws/templates/storage.yaml`
    /// (on-demand billing, the three indexes, TTL on `ttl`) unless it exists, and waits
    /// until it is active. For development and tests: in AWS the storage stack makes
    /// the table (with backups, encryption and deletion protection), and the server's
    /// role may only describe it. Returns whether it created the table.
    pub async fn create_table_if_missing(&self) -> Result<bool> {
        match self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
        {
            Ok(_) => return self.wait_active().await.map(|()| false),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) => {}
            Err(err) => return Err(backend("DescribeTable")(err)),
        }
        let string_attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build_error)
        };
        let key_schema = |hash: &str, range: &str| -> Result<Vec<KeySchemaElement>> {
            Ok(vec![
                KeySchemaElement::builder()
                    .attribute_name(hash)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(build_error)?,
                KeySchemaElement::builder()
                    .attribute_name(range)
                    .key_type(KeyType::Range)
                    .build()
                    .map_err(build_error)?,
            ])
        };
        let mut create = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(string_attr("PK")?)
            .attribute_definitions(string_attr("SK")?)
            .set_key_schema(Some(key_schema("PK", "SK")?));
        for index in INDEXES {
            let (pk, sk) = (format!("{index}PK"), format!("{index}SK"));
            create = create
                .attribute_definitions(string_attr(&pk)?)
                .attribute_definitions(string_attr(&sk)?)
                .global_secondary_indexes(
                    GlobalSecondaryIndex::builder()
                        .index_name(index)
                        .set_key_schema(Some(key_schema(&pk, &sk)?))
                        .projection(
                            Projection::builder()
                                .projection_type(ProjectionType::All)
                                .build(),
                        )
                        .build()
                        .map_err(build_error)?,
                );
        }
        match create.send().await {
            Ok(_) => {}
            // Another process created it meanwhile: fine, wait for it below.
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) => {}
            Err(err) => return Err(backend("CreateTable")(err)),
        }
        self.wait_active().await?;
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name("ttl")
                    .enabled(true)
                    .build()
                    .map_err(build_error)?,
            )
            .send()
            .await
            .map_err(backend("UpdateTimeToLive"))?;
        tracing::info!(table = %self.table, "created the DynamoDB store table (on-demand)");
        Ok(true)
    }

    /// Waits (up to five minutes) until the table and its indexes are active.
    async fn wait_active(&self) -> Result<()> {
        for _ in 0..300 {
            let out = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(backend("DescribeTable"))?;
            let Some(table) = out.table else {
                return Err(Error::Backend(format!(
                    "DynamoDB DescribeTable {}: no table description",
                    self.table
                )));
            };
            let indexes_active = table
                .global_secondary_indexes()
                .iter()
                .all(|i| i.index_status().is_none_or(|s| s.as_str() == "ACTIVE"));
            if table.table_status == Some(TableStatus::Active) && indexes_active {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Err(Error::Backend(format!(
            "DynamoDB table {} did not become active within five minutes",
            self.table
        )))
    }

    /// Deletes the table (tests clean up after themselves with it).
    pub async fn delete_table(&self) -> Result<()> {
        self.client
            .delete_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(backend("DeleteTable"))?;
        Ok(())
    }

    // --- single-item operations ---

    /// A strongly consistent GetItem.
    async fn get(&self, pk: String, sk: &str) -> Result<Option<Item>> {
        let key = item::key(pk, sk);
        // A key DynamoDB cannot hold names no item (and would be a ValidationException).
        if !key_fits(&key) {
            return Ok(None);
        }
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(backend("GetItem"))?;
        Ok(out.item)
    }

    /// PutItem; false when `condition` does not hold.
    async fn put(&self, item: Item, condition: Option<&str>, values: Item) -> Result<bool> {
        check_key(&item)?;
        let names = names(&[condition.unwrap_or_default()]);
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .set_condition_expression(condition.map(str::to_string))
            .set_expression_attribute_names(names)
            .set_expression_attribute_values(non_empty(values))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(err) => Err(backend("PutItem")(err)),
        }
    }

    /// UpdateItem returning the item as it is afterwards; None when `condition` does
    /// not hold (nothing written).
    async fn update(
        &self,
        key: Item,
        expression: &str,
        condition: Option<&str>,
        values: Item,
    ) -> Result<Option<Item>> {
        check_key(&key)?;
        let names = names(&[expression, condition.unwrap_or_default()]);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .update_expression(expression)
            .set_condition_expression(condition.map(str::to_string))
            .set_expression_attribute_names(names)
            .set_expression_attribute_values(non_empty(values))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => Ok(Some(out.attributes.unwrap_or_default())),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(None)
            }
            Err(err) => Err(backend("UpdateItem")(err)),
        }
    }

    /// DeleteItem returning the deleted item (None if there was none).
    async fn delete(&self, key: Item) -> Result<Option<Item>> {
        if !key_fits(&key) {
            return Ok(None);
        }
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(backend("DeleteItem"))?;
        Ok(out.attributes.filter(|a| !a.is_empty()))
    }

    /// Deletes many items by key, 25 per BatchWriteItem, retrying what DynamoDB leaves
    /// unprocessed.
    async fn delete_all(&self, keys: Vec<Item>) -> Result<()> {
        use aws_sdk_dynamodb::types::{DeleteRequest, WriteRequest};
        for chunk in keys.chunks(25) {
            let mut requests = chunk
                .iter()
                .map(|key| {
                    DeleteRequest::builder()
                        .set_key(Some(key.clone()))
                        .build()
                        .map(|d| WriteRequest::builder().delete_request(d).build())
                        .map_err(build_error)
                })
                .collect::<Result<Vec<_>>>()?;
            for attempt in 0..ATTEMPTS {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, requests)
                    .send()
                    .await
                    .map_err(backend("BatchWriteItem"))?;
                requests = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(&self.table))
                    .unwrap_or_default();
                if requests.is_empty() {
                    break;
                }
                backoff(attempt).await;
            }
            if !requests.is_empty() {
                return Err(Error::Backend(
                    "DynamoDB BatchWriteItem: items left unprocessed after retries".into(),
                ));
            }
        }
        Ok(())
    }

    // --- transactions ---

    /// TransactWriteItems. `Ok(Err(codes))` when it was cancelled: one code per item
    /// in order ("None" for items that were fine, "ConditionalCheckFailed" for a
    /// condition that did not hold). Conflicts with concurrent transactions are
    /// retried here, so callers only see the outcome of their conditions.
    async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> Result<std::result::Result<(), Vec<String>>> {
        for attempt in 0..ATTEMPTS {
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            let err = match result {
                Ok(_) => return Ok(Ok(())),
                Err(err) => err,
            };
            let codes = match err.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(e)) => e
                    .cancellation_reasons()
                    .iter()
                    .map(|r| r.code().unwrap_or("None").to_string())
                    .collect::<Vec<_>>(),
                Some(TransactWriteItemsError::TransactionInProgressException(_)) => {
                    backoff(attempt).await;
                    continue;
                }
                _ => return Err(backend("TransactWriteItems")(err)),
            };
            if codes.iter().any(|c| c == "ConditionalCheckFailed") {
                return Ok(Err(codes));
            }
            if codes.iter().any(|c| c == "TransactionConflict") {
                backoff(attempt).await;
                continue;
            }
            return Err(Error::Backend(format!(
                "DynamoDB TransactWriteItems cancelled: {codes:?}"
            )));
        }
        Err(contended("TransactWriteItems"))
    }

    fn tx_put(
        &self,
        item: Item,
        condition: Option<&str>,
        values: Item,
    ) -> Result<TransactWriteItem> {
        check_key(&item)?;
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .set_condition_expression(condition.map(str::to_string))
            .set_expression_attribute_names(names(&[condition.unwrap_or_default()]))
            .set_expression_attribute_values(non_empty(values))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    fn tx_check(&self, key: Item, condition: &str, values: Item) -> Result<TransactWriteItem> {
        check_key(&key)?;
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(key))
            .condition_expression(condition)
            .set_expression_attribute_names(names(&[condition]))
            .set_expression_attribute_values(non_empty(values))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().condition_check(check).build())
    }

    fn tx_update(
        &self,
        key: Item,
        expression: &str,
        condition: Option<&str>,
        values: Item,
    ) -> Result<TransactWriteItem> {
        check_key(&key)?;
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key))
            .update_expression(expression)
            .set_condition_expression(condition.map(str::to_string))
            .set_expression_attribute_names(names(&[expression, condition.unwrap_or_default()]))
            .set_expression_attribute_values(non_empty(values))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    fn tx_delete(
        &self,
        key: Item,
        condition: Option<&str>,
        values: Item,
    ) -> Result<TransactWriteItem> {
        check_key(&key)?;
        let delete = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key))
            .set_condition_expression(condition.map(str::to_string))
            .set_expression_attribute_names(names(&[condition.unwrap_or_default()]))
            .set_expression_attribute_values(non_empty(values))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().delete(delete).build())
    }

    // --- queries ---

    /// Runs a Query to the end (following `LastEvaluatedKey`) or until `want` items
    /// have been collected.
    async fn query(&self, q: Query<'_>) -> Result<Vec<Item>> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let remaining = q.want.map(|w| w.saturating_sub(items.len()));
            if remaining == Some(0) {
                break;
            }
            // Without a filter, Limit is exact; with one it would count the items
            // read before filtering, so pages are left at DynamoDB's 1 MB.
            let page_limit = match (q.filter, remaining) {
                (None, Some(r)) => Some(i32::try_from(r.min(1000)).unwrap_or(1000)),
                _ => None,
            };
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .set_index_name(q.index.map(str::to_string))
                .consistent_read(q.index.is_none())
                .key_condition_expression(q.key)
                .set_filter_expression(q.filter.map(str::to_string))
                .set_expression_attribute_names(names(&[q.key, q.filter.unwrap_or_default()]))
                .set_expression_attribute_values(non_empty(q.values.clone()))
                .scan_index_forward(q.forward)
                .set_limit(page_limit)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(backend("Query"))?;
            items.extend(out.items.unwrap_or_default());
            start = out.last_evaluated_key.filter(|k| !k.is_empty());
            if start.is_none() {
                break;
            }
        }
        if let Some(want) = q.want {
            items.truncate(want);
        }
        Ok(items)
    }

    /// How many items a Query matches, counted by DynamoDB page by page.
    async fn count(&self, q: Query<'_>) -> Result<u64> {
        let mut total = 0u64;
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .set_index_name(q.index.map(str::to_string))
                .key_condition_expression(q.key)
                .set_expression_attribute_names(names(&[q.key]))
                .set_expression_attribute_values(non_empty(q.values.clone()))
                .select(Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(backend("Query"))?;
            total += u64::try_from(out.count).unwrap_or(0);
            start = out.last_evaluated_key.filter(|k| !k.is_empty());
            if start.is_none() {
                return Ok(total);
            }
        }
    }

    /// The next number of a named sequence (audit entries, events): an atomic ADD, so
    /// numbers are unique and increase in the order they were taken.
    async fn next_id(&self, sequence: &str) -> Result<i64> {
        let after = self
            .update(
                item::key(format!("SEQ#{sequence}"), "SEQ"),
                "ADD #next :one",
                None,
                values(&[(":one", item::n(1))]),
            )
            .await?
            .unwrap_or_default();
        item::Reader::new(&after, "sequence").i64("next")
    }
}

/// One Query: `key` is the key condition on `<index>PK`/`<index>SK` (or `PK`/`SK`).
struct Query<'a> {
    index: Option<&'static str>,
    key: &'a str,
    filter: Option<&'a str>,
    values: Item,
    forward: bool,
    want: Option<usize>,
}

impl<'a> Query<'a> {
    fn new(index: Option<&'static str>, key: &'a str, values: Item) -> Self {
        Query {
            index,
            key,
            filter: None,
            values,
            forward: true,
            want: None,
        }
    }
    fn newest_first(mut self) -> Self {
        self.forward = false;
        self
    }
    fn filter(mut self, filter: &'a str) -> Self {
        self.filter = Some(filter);
        self
    }
    fn want(mut self, want: usize) -> Self {
        self.want = Some(want);
        self
    }
}

/// Expression values from pairs.
fn values(pairs: &[(&str, AttributeValue)]) -> Item {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Whether `PK` and `SK` are within DynamoDB's key limits (2048 and 1024 bytes). Keys
/// hold callers' text (e-mail addresses, model ids); one beyond the limits is bad input.
fn key_fits(item: &Item) -> bool {
    let len = |name: &str| match item.get(name) {
        Some(AttributeValue::S(v)) => v.len(),
        _ => 0,
    };
    len("PK") <= 2048 && len("SK") <= 1024
}

fn check_key(item: &Item) -> Result<()> {
    if key_fits(item) {
        Ok(())
    } else {
        Err(Error::Invalid(
            "a key is too long for DynamoDB (2048 bytes, 1024 for sort keys)".into(),
        ))
    }
}

fn non_empty(values: Item) -> Option<Item> {
    (!values.is_empty()).then_some(values)
}

/// The attribute-name placeholders (`#word`) the expressions use, each standing for the
/// attribute of that name: every attribute is written as a placeholder, so none can
/// collide with DynamoDB's long list of reserved words (`state`, `count`, `name`...).
fn names(expressions: &[&str]) -> Option<HashMap<String, String>> {
    let mut names = HashMap::new();
    for expression in expressions {
        let mut rest = *expression;
        while let Some(i) = rest.find('#') {
            let word: String = rest[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + 1 + word.len()..];
            if !word.is_empty() {
                names.insert(format!("#{word}"), word);
            }
        }
    }
    (!names.is_empty()).then_some(names)
}

fn backend<E, R>(operation: &'static str) -> impl FnOnce(SdkError<E, R>) -> Error
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    move |err| {
        Error::Backend(format!(
            "DynamoDB {operation}: {}",
            DisplayErrorContext(&err)
        ))
    }
}

fn build_error(err: aws_sdk_dynamodb::error::BuildError) -> Error {
    Error::Backend(format!("DynamoDB request: {err}"))
}

fn contended(operation: &str) -> Error {
    Error::Backend(format!(
        "DynamoDB {operation}: still conflicting with concurrent writes after {ATTEMPTS} attempts"
    ))
}

/// A short, growing, jittered pause before retrying a write that lost a race.
async fn backoff(attempt: u32) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = u64::from(nanos % 10);
    let millis = 5 * u64::from(attempt.min(10) + 1) + jitter;
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let parsed = DynamoUrl::parse("dynamodb://corral-store").unwrap();
        assert_eq!(
            parsed,
            DynamoUrl {
                table: "corral-store".into(),
                region: None
            }
        );
        let parsed = DynamoUrl::parse("dynamodb://corral_test.1?region=eu-west-1").unwrap();
        assert_eq!(parsed.region.as_deref(), Some("eu-west-1"));
        for bad in [
            "dynamodb://",
            "dynamodb://ab",
            "dynamodb://has space",
            "dynamodb://t/able",
            "dynamodb://table?endpoint=http://x",
            "dynamodb://table?region=",
        ] {
            assert!(
                matches!(DynamoUrl::parse(bad), Err(Error::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            DynamoUrl::parse("postgres://x"),
            Err(Error::UnsupportedUrl(_))
        ));
    }

    #[test]
    fn placeholders_name_their_attributes() {
        let got = names(&["SET #state = :to, #version = #version + :one", ""]).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got["#state"], "state");
        assert_eq!(got["#version"], "version");
        assert_eq!(names(&["", ""]), None);
    }
}

//! Opens the store a `--database-url` names. `corral_store::open` knows SQLite and
//! PostgreSQL; DynamoDB lives in its own crate (which depends on corral-store, so
//! corral-store cannot dispatch to it), and is chosen here.

use std::sync::Arc;

use corral_store::Store;

pub async fn open(url: &str) -> Result<Arc<dyn Store>, corral_store::Error> {
    if url.starts_with("dynamodb://") {
        let store = corral_store_dynamodb::DynamoStore::open(url).await?;
        return Ok(Arc::new(store));
    }
    corral_store::open(url).await
}

//! Opens the store a `--database-url` names. `corral_store::open` knows SQLite and
//! PostgreSQL; DynamoDB lives in its own crate (which depends on corral-store, so
//! corral-store cannot dispatch to it), and is chosen here.

use std::sync::Arc;

use corral_store::Store;

use crate::error::CliError;

pub async fn open(url: &str) -> Result<Arc<dyn Store>, CliError> {
    // Before SQLite creates it with the umask's mode.
    crate::private::prepare_sqlite(url)?;
    if url.starts_with("dynamodb://") {
        let store = corral_store_dynamodb::DynamoStore::open(url).await?;
        return Ok(Arc::new(store));
    }
    Ok(corral_store::open(url).await?)
}

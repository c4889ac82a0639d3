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

/// What local weights must stay (corral_models::gc): the catalog, and the model ids of
/// every instance not deleted (a sleeping or stopped one starts again from its weights).
pub async fn weights_needs(
    store: &dyn Store,
) -> Result<(Vec<corral_core::CatalogModel>, Vec<String>), corral_store::Error> {
    let catalog = store.list_models().await?;
    let in_use = store
        .list_instances(None)
        .await?
        .into_iter()
        .filter(|i| i.desired != corral_core::Desired::Deleted)
        .map(|i| i.model_id)
        .collect();
    Ok((catalog, in_use))
}

/// The server's answer to the weights manager's disk-space collection.
pub struct StoreNeeds(pub Arc<dyn Store>);

#[async_trait::async_trait]
impl corral_models::WeightsNeeds for StoreNeeds {
    async fn needs(&self) -> Result<(Vec<corral_core::CatalogModel>, Vec<String>), String> {
        weights_needs(self.0.as_ref())
            .await
            .map_err(|e| e.to_string())
    }
}

//! The model lists of the gateway's two APIs, answered by Corral itself from the
//! instances routing by model may pick for the caller (their own and their teams'):
//! those a request would reach (running or on their way, or sleeping and
//! waking on request). One model is listed once however many instances serve it.

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use corral_core::{CatalogModel, Desired, Instance, State as Observed};
use serde_json::{Value, json};
use std::collections::BTreeMap;

use super::error::{Dialect, GatewayError};
use super::{admit, target};
use crate::state::AppState;

/// The caller's instances that a request for their model would be routed to.
async fn servable(state: &AppState, request: Request) -> Result<Vec<Instance>, GatewayError> {
    let (mut parts, _) = request.into_parts();
    // The permit is held while the list is read.
    let (caller, _permit) = admit(state, &mut parts, false).await?;
    let memberships = state
        .store
        .user_teams(caller.user.id)
        .await
        .map_err(GatewayError::internal)?;
    let mut list: Vec<Instance> = target::routable(state, &caller, &memberships)
        .await?
        .into_iter()
        .map(|(_, inst)| inst)
        .collect();
    list.retain(|i| match i.desired {
        Desired::Running => i.state != Observed::Failed,
        Desired::Sleeping => i.settings.wake_on_request,
        Desired::Stopped | Desired::Deleted => false,
    });
    // Oldest first, so each model is listed with its first instance's time.
    list.sort_by_key(|i| i.created_at);
    Ok(list)
}

/// One entry per model: the oldest instance of each.
fn per_model(list: &[Instance]) -> BTreeMap<&str, &Instance> {
    let mut models = BTreeMap::new();
    for inst in list {
        models.entry(inst.model_id.as_str()).or_insert(inst);
    }
    models
}

fn openai_entry(inst: &Instance) -> Value {
    json!({
        "id": inst.model_id,
        "object": "model",
        "created": inst.created_at.timestamp(),
        "owned_by": "corral",
    })
}

/// `GET /v1/models`.
pub async fn openai_list(State(state): State<AppState>, request: Request) -> Response {
    match servable(&state, request).await {
        Ok(list) => {
            let data: Vec<Value> = per_model(&list).into_values().map(openai_entry).collect();
            axum::Json(json!({ "object": "list", "data": data })).into_response()
        }
        Err(e) => e.into_response(Dialect::OpenAi),
    }
}

/// `GET /v1/models/{model}`.
pub async fn openai_one(
    State(state): State<AppState>,
    Path(model): Path<String>,
    request: Request,
) -> Response {
    let found = servable(&state, request).await.and_then(|list| {
        list.iter()
            .find(|i| target::same_model(&i.model_id, &model))
            .map(openai_entry)
            .ok_or_else(|| GatewayError::model_not_found(&model))
    });
    match found {
        Ok(entry) => axum::Json(entry).into_response(),
        Err(e) => e.into_response(Dialect::OpenAi),
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Ollama's model entry, from the catalog where it still has the model.
fn ollama_entry(inst: &Instance, catalog: Option<&CatalogModel>) -> serde_json::Map<String, Value> {
    let mut entry = json!({
        "name": inst.model_id,
        "model": inst.model_id,
        "size": catalog.and_then(|m| m.weights_bytes).unwrap_or(0),
        "details": {
            "format": "gguf",
            "family": catalog.map(|m| m.family.to_lowercase()).unwrap_or_default(),
            "parameter_size": catalog.map(|m| m.size.clone()).unwrap_or_default(),
        },
    });
    match entry.as_object_mut() {
        Some(map) => std::mem::take(map),
        None => serde_json::Map::new(),
    }
}

async fn catalog_of(state: &AppState, model: &str) -> Result<Option<CatalogModel>, GatewayError> {
    state
        .store
        .model(model)
        .await
        .map_err(GatewayError::internal)
}

/// `GET /ollama/api/tags`: the models the caller can call.
pub async fn ollama_tags(State(state): State<AppState>, request: Request) -> Response {
    tags(&state, request)
        .await
        .unwrap_or_else(|e| e.into_response(Dialect::Ollama))
}

async fn tags(state: &AppState, request: Request) -> Result<Response, GatewayError> {
    let list = servable(state, request).await?;
    let mut models = Vec::new();
    for (model, inst) in per_model(&list) {
        let mut entry = ollama_entry(inst, catalog_of(state, model).await?.as_ref());
        entry.insert("modified_at".into(), rfc3339(inst.created_at).into());
        models.push(Value::Object(entry));
    }
    Ok(axum::Json(json!({ "models": models })).into_response())
}

/// `GET /ollama/api/ps`: the models running now (an instance with a ready replica), and
/// when idle shutdown will stop them if no request comes.
pub async fn ollama_ps(State(state): State<AppState>, request: Request) -> Response {
    ps(&state, request)
        .await
        .unwrap_or_else(|e| e.into_response(Dialect::Ollama))
}

async fn ps(state: &AppState, request: Request) -> Result<Response, GatewayError> {
    let mut list = servable(state, request).await?;
    list.retain(|i| {
        state
            .routing
            .get(i.id)
            .is_some_and(|r| !r.replicas.is_empty())
    });
    let mut models = Vec::new();
    for (model, inst) in per_model(&list) {
        let mut entry = ollama_entry(inst, catalog_of(state, model).await?.as_ref());
        let idle = i64::from(inst.settings.idle_timeout_seconds);
        // Ollama's way of saying "never": keep-alive -1 shows as a far-away time.
        let expires = if idle > 0 {
            inst.last_activity_at + chrono::Duration::seconds(idle)
        } else {
            Utc::now() + chrono::Duration::days(292 * 365)
        };
        entry.insert("expires_at".into(), rfc3339(expires).into());
        entry.insert("size_vram".into(), 0.into());
        models.push(Value::Object(entry));
    }
    Ok(axum::Json(json!({ "models": models })).into_response())
}

/// `GET /ollama/api/version`: Corral's version.
pub async fn ollama_version(State(state): State<AppState>, request: Request) -> Response {
    let (mut parts, _) = request.into_parts();
    match admit(&state, &mut parts, false).await {
        Ok(_) => axum::Json(json!({ "version": env!("CARGO_PKG_VERSION") })).into_response(),
        Err(e) => e.into_response(Dialect::Ollama),
    }
}

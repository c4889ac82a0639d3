//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi};

/// Adds the document's metadata and the bearer scheme the handlers refer to.
pub fn finish(mut doc: OpenApi) -> OpenApi {
    doc.info = InfoBuilder::new()
        .title("Corral API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Deploy, secure and scale Ollama-compatible LLM servers. Authenticate with \
             `Authorization: Bearer <access token or crl_ API key>`.",
        ))
        .build();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT or crl_ API key")
                .build(),
        ),
    );
    doc
}

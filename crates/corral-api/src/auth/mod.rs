//! Authentication building blocks: password hashing, access tokens, and the
//! `Principal` extractor that every protected handler takes.

pub mod cache;
pub mod cognito;
pub mod jwt;
pub mod oidc;
pub mod password;
mod principal;

pub use principal::{Credential, Principal};

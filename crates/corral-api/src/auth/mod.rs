//! Authentication building blocks: password hashing, access tokens, and the
//! `Principal` extractor that every protected handler takes.

pub mod cache;
pub mod jwt;
pub mod password;
mod principal;

pub use principal::{Credential, Principal};

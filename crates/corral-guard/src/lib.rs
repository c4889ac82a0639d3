//! Guards at Corral's trust boundaries that several crates need alike:
//!
//! * [`files`]: what Corral writes under its data dir (database, signing key, weights,
//!   replica logs) is private to the user running it: directories 0700, files 0600,
//!   and looser modes left by older versions or by hand are found so start-up can warn.
//! * [`net`]: outbound fetches an admin can point somewhere (model URLs, the Ollama
//!   registry; later webhooks) must not reach loopback, link-local (the cloud metadata
//!   address) or private networks from the control plane, checked on the resolved
//!   address at connect time.

pub mod files;
pub mod net;

//! axum routers per feature, auth, idempotency, error mapping, OpenAPI document.
//!
//! Filled by the signing-pipeline issue; see `docs/architecture.md` for what belongs here.

pub use ushuru_engine as engine;

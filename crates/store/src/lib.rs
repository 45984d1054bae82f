//! Schema and migrations for SQLite and PostgreSQL, repositories, outbox queries, row-level
//! security.
//!
//! Filled by the signing-pipeline issue; see `docs/architecture.md` for what belongs here.

pub use ushuru_tax as tax;

//! The domain: signing pipeline, credit notes, stock, items, reports, scheduler,
//! connectivity monitor, key vault, sequence auditor, supplier gateway.
//!
//! Filled by the signing-pipeline issue; see `docs/architecture.md` for what belongs here.

pub use ushuru_tax as tax;

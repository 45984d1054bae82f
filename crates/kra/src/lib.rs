//! KRA eTIMS OSCU/VSCU wire types, result codes and the HTTP client with its path profiles.
//!
//! Filled by the protocol issue; see `docs/architecture.md` for what belongs here.

pub use ushuru_tax as tax;

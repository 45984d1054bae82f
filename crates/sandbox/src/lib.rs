//! A control-unit emulator (OSCU and VSCU behaviour), its state, signing, validation, virtual
//! clock and fault injection.
//!
//! Filled by the sandbox issue; see `docs/architecture.md` for what belongs here.

pub use ushuru_kra as kra;

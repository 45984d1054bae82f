//! A control-unit emulator: KRA's OSCU server and the VSCU JAR, faithful enough that an OSCU
//! client works against it unchanged, strict enough to catch integration mistakes, and able
//! to fail in every way the real one fails (see [`faults`]).
//!
//! Facts and section numbers: `../shared/reference/kra-protocol.md`.

pub mod catalog;
pub mod clock;
pub mod control_unit;
pub mod faults;
pub mod persist;
mod sale_rules;
pub mod sales;
pub mod server;
pub mod sign;
pub mod state;

pub use control_unit::{Caller, Config, ControlUnit, Mode, Reply};
pub use server::{Limits, Sandbox, SandboxHandle};

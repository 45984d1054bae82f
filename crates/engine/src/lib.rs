//! The domain: the signing pipeline (today: the per-branch relay of phases 2 and 3), and
//! later credit notes, stock, items, reports, the scheduler and the connectivity monitor.

pub mod clock;
pub mod pipeline;
pub mod relay;

pub use clock::{Clock, SystemClock};
pub use pipeline::{AddRelayError, Pipeline, Settled, Work};
pub use relay::{Backoff, DeviceIdentity, Relay, RelayError, Step};
pub use ushuru_tax as tax;

//! KRA eTIMS OSCU/VSCU: wire types for every endpoint, result codes, and the HTTP client
//! with its three path profiles (OSCU direct, VSCU JAR, GavaConnect gateway).
//!
//! Facts and section numbers: `../shared/reference/kra-protocol.md`.

pub mod client;
pub mod codes;
pub mod draft;
pub mod endpoints;
pub mod envelope;
pub mod types;
pub mod wire;

pub use client::{
    Call, ClientConfig, ClientError, CmcKeyOpener, Exchange, GatewayCredentials, InProcessAnswer,
    InProcessCall, InProcessFuture, InProcessUnit, KraClient, Outcome, Secret, Timeouts,
};
pub use codes::{ResultClass, ResultCode};
pub use draft::{DraftLine, SaleDraft};
pub use endpoints::{CallClass, Endpoint, EndpointName, Profile};
pub use envelope::{Envelope, GatewayEnvelope, GatewayHeader};

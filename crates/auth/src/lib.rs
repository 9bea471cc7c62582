//! Pacer's keys and tokens: verifying the JWTs callers present, minting per-task callback tokens,
//! signing outbound calls (JWT or HMAC), and publishing Pacer's public keys as a JWKS.

pub mod inbound;
pub mod signing;

pub use inbound::{AuthError, Issuer, IssuerKey, Principal, Role, Verifier, VerifierConfig};

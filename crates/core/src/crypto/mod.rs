//! Cryptography the domain relies on: sealing secrets at rest (the
//! [`sealing::SecretSealer`] trait, one implementation per edition) and
//! generating and hashing high-entropy secrets.

pub mod kms;
pub mod reseal;
pub mod sealing;
pub mod secrets;

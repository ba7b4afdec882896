//! Hardening tests: batches.

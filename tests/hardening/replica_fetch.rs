//! Hardening tests: replica_fetch.

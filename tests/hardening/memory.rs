//! Hardening tests: memory.

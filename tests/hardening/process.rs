//! process : hardening tests.

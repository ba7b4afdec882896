//! memory : hardening tests.

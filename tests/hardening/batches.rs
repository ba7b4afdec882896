//! batches : hardening tests.

//! Hardening tests: process.

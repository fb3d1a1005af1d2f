//! HTTP webhooks: to be written.

//! TLS listeners: server configuration from PEM files, and the identity a client certificate gives.

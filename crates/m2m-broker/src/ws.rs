//! MQTT over WebSocket: a byte stream over binary WebSocket messages.

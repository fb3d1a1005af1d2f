//! Enhanced authentication (MQTT 5.0 §4.12): the hook a real method plugs into.

use bytes::Bytes;

/// One step of an authentication exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Authenticated; the data (if any) goes to the client in CONNACK or AUTH 0x00.
    Success(Option<Bytes>),
    /// Send this challenge in AUTH 0x18 and wait for the client's answer.
    Continue(Bytes),
    /// Refused: CONNACK 0x87 (or DISCONNECT 0x87 during re-authentication).
    Fail,
}

/// A running exchange for one connection.
pub trait AuthExchange: Send {
    /// Takes the client's authentication data (from CONNECT or AUTH) and says what comes next.
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep;

    /// After success: the registered device the client proved to be, if the method says (its rules
    /// then apply to the connection).
    fn authenticated_as(&self) -> Option<&str> {
        None
    }
}

/// Authentication methods the node supports.
pub trait Authenticator: Send + Sync {
    /// Starts an exchange for `method`; `None` when the method is not supported (CONNACK 0x8C).
    fn begin(&self, method: &str, client_id: &str) -> Option<Box<dyn AuthExchange>>;
}

/// The default: no enhanced authentication method is supported.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEnhancedAuth;

impl Authenticator for NoEnhancedAuth {
    fn begin(&self, _method: &str, _client_id: &str) -> Option<Box<dyn AuthExchange>> {
        None
    }
}

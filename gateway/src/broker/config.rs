//! The broker's limits, validated by their types: nothing here can be zero where zero would
//! mean "never send".

use std::num::NonZeroU16;

/// What happens when a message does not fit a session's outgoing queue (in the gateway
/// config: `drop_newest`, `drop_oldest`, `disconnect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// The new message is dropped.
    DropNewest,
    /// The oldest queued messages are dropped until the new one fits.
    DropOldest,
    /// A connected client is disconnected (reason 0x97, quota exceeded); an offline session
    /// is ended, so its next CONNACK says "session present = 0". Either way the client learns
    /// that it lost messages. The message itself is dropped.
    Disconnect,
}

/// Bounds of one session's queue: the messages waiting for the client (offline, or behind a
/// full in-flight window). Messages in flight are bounded by the window instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// At most this many messages (0: nothing is ever queued).
    pub max_messages: usize,
    /// At most this many bytes of topic, payload and properties; a message larger than this
    /// is never queued.
    pub max_bytes: usize,
    pub overflow: Overflow,
    /// On overflow, QoS 0 messages go first (the oldest queued one, else a new QoS 0 one)
    /// before `overflow` applies.
    pub drop_qos0_first: bool,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            max_messages: 1000,
            max_bytes: 1 << 20,
            overflow: Overflow::DropNewest,
            drop_qos0_first: true,
        }
    }
}

/// Everything the broker core is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerConfig {
    pub queue: QueueLimits,
    /// The in-flight window of a client that states no Receive Maximum (3.1.1).
    pub default_receive_maximum: NonZeroU16,
    /// The largest in-flight window any client gets, whatever its Receive Maximum says (a
    /// version 5 client that sends none means 65,535).
    pub max_inflight: NonZeroU16,
    /// The server's Receive Maximum: QoS 1 and 2 publishes a client may have unacknowledged
    /// at the broker; one more closes the connection with 0x93 [MQTT-3.3.4-9] (the v5 CONNACK
    /// announces it).
    pub server_receive_maximum: NonZeroU16,
    /// Session Expiry Intervals are capped to this many seconds (`u32::MAX`: no cap, and a
    /// session asked to be kept forever is).
    pub max_session_expiry: u32,
}

const fn nonzero(n: u16) -> NonZeroU16 {
    match NonZeroU16::new(n) {
        Some(n) => n,
        None => NonZeroU16::MIN,
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            queue: QueueLimits::default(),
            default_receive_maximum: nonzero(20),
            max_inflight: nonzero(100),
            server_receive_maximum: nonzero(100),
            max_session_expiry: u32::MAX,
        }
    }
}

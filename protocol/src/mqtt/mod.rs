//! MQTT wire format: every control packet, both directions, parse and emit — 3.1.1 here,
//! version 5 in [`v5`] as a layer over the same packet views and field readers.
//!
//! [`Packet::parse`] borrows from the input and allocates nothing; it validates everything the
//! specification calls malformed, so a parsed packet can be trusted by the caller (the device
//! client and the gateway both use this codec). [`Packet::emit`] writes into a caller buffer.
//! Lists (subscription filters, SUBACK codes) are held either as the validated wire bytes
//! after parsing, or as a caller slice for emitting.

mod error;
mod list;
mod packet;
mod shared;
pub mod topic;
pub mod v5;
mod wire;

pub use error::MqttError;
pub use list::{SubAckCodes, SubscribeFilters, UnsubscribeFilters};
pub use packet::{
    ConnAck, Connect, ConnectReturnCode, Control, Emit, Packet, Publish, QoS, SubAck, SubAckCode,
    Subscribe, Unsubscribe, Will,
};
pub use topic::{matches, valid_topic_filter, valid_topic_name};

/// Largest remaining length MQTT can express (four varint bytes).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

#[cfg(test)]
mod tests;

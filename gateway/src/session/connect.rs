//! CONNECT: the identity check (the client id is the certificate's CN), the ACL on the will,
//! what a version 5 CONNECT's properties ask for, and the CONNACK either way.

use std::fmt;

use fleet_protocol::mqtt::v5::{reason, ConnAck5, Connect5, Packet5, Properties, Property};
use fleet_protocol::mqtt::{ConnAck, Connect, ConnectReturnCode, Packet};

use super::wire::{append, append5};
use super::Version;
use crate::acl::Policy;
use crate::broker::Will;
use crate::identity::Identity;

/// Why a client was refused or disconnected: logged as the audit reason and used as a metric
/// label.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The TLS handshake failed; the label says why (see [`crate::tls::failure_reason`]).
    Handshake(&'static str),
    HandshakeTimeout,
    /// The verified certificate does not name a usable identity.
    BadIdentity(String),
    ConnectTimeout,
    /// The first packet was not a well-formed CONNECT.
    BadConnect(String),
    UnsupportedProtocol(u8),
    /// The CONNECT client id is neither empty nor the certificate's device id.
    ClientIdMismatch {
        sent: String,
        cert: String,
    },
    /// A 3.1.1 CONNECT with an empty client id asked to keep its session (CleanSession=0):
    /// refused with CONNACK 0x02 [MQTT-3.1.3-8].
    EmptyIdKeepsSession,
    /// The CONNECT will topic is outside the client's ACL.
    WillDenied(String),
    /// A version 5 CONNECT asked for an authentication method; identity comes from the
    /// certificate and no extended authentication is offered.
    AuthMethod(String),
}

impl Refusal {
    /// Stable label for metrics and the audit log.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Handshake(reason) => reason,
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::BadIdentity(_) => "bad_identity",
            Refusal::ConnectTimeout => "connect_timeout",
            Refusal::BadConnect(_) => "bad_connect",
            Refusal::UnsupportedProtocol(_) => "unsupported_protocol",
            Refusal::ClientIdMismatch { .. } => "client_id_mismatch",
            Refusal::EmptyIdKeepsSession => "identifier_rejected",
            Refusal::WillDenied(_) => "acl_will",
            Refusal::AuthMethod(_) => "bad_auth_method",
        }
    }

    /// The CONNACK code to send, when the refusal happens at CONNECT.
    pub fn connack_code(&self) -> Option<ConnectReturnCode> {
        match self {
            Refusal::UnsupportedProtocol(_) => Some(ConnectReturnCode::UnacceptableProtocolVersion),
            Refusal::ClientIdMismatch { .. } | Refusal::WillDenied(_) => {
                Some(ConnectReturnCode::NotAuthorized)
            }
            Refusal::EmptyIdKeepsSession => Some(ConnectReturnCode::IdentifierRejected),
            Refusal::AuthMethod(_) => Some(ConnectReturnCode::BadUserNameOrPassword),
            _ => None,
        }
    }

    /// The version 5 CONNACK reason code, when the refusal happens at CONNECT.
    pub fn reason5(&self) -> Option<u8> {
        match self {
            Refusal::UnsupportedProtocol(_) => Some(reason::UNSUPPORTED_PROTOCOL_VERSION),
            Refusal::ClientIdMismatch { .. } | Refusal::WillDenied(_) => {
                Some(reason::NOT_AUTHORIZED)
            }
            Refusal::EmptyIdKeepsSession => Some(reason::CLIENT_IDENTIFIER_NOT_VALID),
            Refusal::AuthMethod(_) => Some(reason::BAD_AUTHENTICATION_METHOD),
            _ => None,
        }
    }

    /// The CONNACK refusing a client of `version`, if this refusal is answered with one.
    pub fn connack(&self, version: Version) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        match version {
            Version::V311 => append(
                &mut out,
                &Packet::ConnAck(ConnAck {
                    session_present: false,
                    code: self.connack_code()?,
                }),
            ),
            Version::V5 => {
                let text = self.to_string();
                let props = [Property::ReasonString(&text)];
                append5(
                    &mut out,
                    &Packet5::ConnAck(ConnAck5 {
                        session_present: false,
                        reason: self.reason5()?,
                        properties: Properties::from_slice(&props),
                    }),
                );
            }
        }
        Some(out)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Handshake(reason) => write!(f, "TLS handshake failed: {reason}"),
            Refusal::HandshakeTimeout => write!(f, "TLS handshake did not finish in time"),
            Refusal::BadIdentity(e) => write!(f, "{e}"),
            Refusal::ConnectTimeout => write!(f, "no CONNECT received in time"),
            Refusal::BadConnect(e) => write!(f, "first packet is not a valid CONNECT: {e}"),
            Refusal::UnsupportedProtocol(level) => {
                write!(f, "MQTT protocol level {level} is not supported")
            }
            Refusal::ClientIdMismatch { sent, cert } => write!(
                f,
                "client id {sent:?} differs from the certificate's device id {cert:?}"
            ),
            Refusal::EmptyIdKeepsSession => write!(
                f,
                "an empty client id cannot keep a session (CleanSession=0, MQTT-3.1.3-8)"
            ),
            Refusal::WillDenied(topic) => write!(f, "will topic {topic:?} is not allowed"),
            Refusal::AuthMethod(m) => write!(
                f,
                "authentication method {m:?} is not offered: the client certificate is the identity"
            ),
        }
    }
}

/// What an accepted CONNECT turns into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub version: Version,
    /// Always the certificate's device id.
    pub client_id: String,
    /// The client sent an empty client id (version 5 is told the id in CONNACK).
    pub assigned_id: bool,
    pub keep_alive: u16,
    /// Clean Start (3.1.1: CleanSession): any stored session is discarded.
    pub clean_start: bool,
    /// Seconds the session is kept after the connection ends (3.1.1: 0 for CleanSession=1,
    /// for ever otherwise; version 5: the Session Expiry Interval, 0 when absent).
    pub session_expiry: u32,
    pub will: Option<Will>,
    /// The client's Receive Maximum (version 5; `None`: the configured default).
    pub receive_maximum: Option<u16>,
    /// The largest packet a version 5 client accepts.
    pub client_max_packet: Option<usize>,
}

/// What the gateway tells a version 5 client in an accepting CONNACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    pub max_packet_size: usize,
    /// QoS 1 and 2 publishes the client may have unacknowledged at the gateway.
    pub receive_maximum: u16,
    /// The Session Expiry Interval the gateway applies (stated when it differs from the
    /// client's).
    pub session_expiry: u32,
}

impl Accepted {
    /// The accepting CONNACK; version 5 also learns the limits the gateway applies.
    pub fn connack(&self, session_present: bool, limits: ServerLimits) -> Vec<u8> {
        let mut out = Vec::new();
        match self.version {
            Version::V311 => append(
                &mut out,
                &Packet::ConnAck(ConnAck {
                    session_present,
                    code: ConnectReturnCode::Accepted,
                }),
            ),
            Version::V5 => {
                let mut props = vec![
                    Property::MaximumPacketSize(
                        u32::try_from(limits.max_packet_size).unwrap_or(u32::MAX),
                    ),
                    Property::ReceiveMaximum(limits.receive_maximum),
                    Property::SubscriptionIdentifierAvailable(0),
                    Property::SharedSubscriptionAvailable(0),
                ];
                if limits.session_expiry != self.session_expiry {
                    props.push(Property::SessionExpiryInterval(limits.session_expiry));
                }
                if self.assigned_id {
                    props.push(Property::AssignedClientIdentifier(&self.client_id));
                }
                append5(
                    &mut out,
                    &Packet5::ConnAck(ConnAck5 {
                        session_present,
                        reason: reason::SUCCESS,
                        properties: Properties::from_slice(&props),
                    }),
                );
            }
        }
        out
    }
}

/// Checks a 3.1.1 CONNECT against the certificate identity and the ACL.
pub fn on_connect(
    identity: &Identity,
    policy: &Policy,
    connect: &Connect<'_>,
) -> Result<Accepted, Refusal> {
    if connect.client_id.is_empty() && !connect.clean_session {
        return Err(Refusal::EmptyIdKeepsSession);
    }
    let mut accepted = accept(identity, policy, connect, Properties::EMPTY)?;
    accepted.session_expiry = if connect.clean_session { 0 } else { u32::MAX };
    Ok(accepted)
}

/// Checks a version 5 CONNECT: the identity and will rules, plus its properties. An empty
/// client id is assigned the certificate's (and told so), whatever Clean Start says.
pub fn on_connect5(
    identity: &Identity,
    policy: &Policy,
    connect: &Connect5<'_>,
) -> Result<Accepted, Refusal> {
    let mut session_expiry = 0;
    let mut client_max_packet = None;
    let mut receive_maximum = None;
    for p in connect.properties.iter() {
        match p {
            Property::AuthenticationMethod(m) => return Err(Refusal::AuthMethod(m.to_owned())),
            Property::SessionExpiryInterval(s) => session_expiry = s,
            Property::MaximumPacketSize(n) => client_max_packet = Some(n as usize),
            Property::ReceiveMaximum(0) => {
                return Err(Refusal::BadConnect(
                    "a Receive Maximum of 0 is a protocol error (MQTT 5 §3.1.2.11.3)".into(),
                ))
            }
            Property::ReceiveMaximum(n) => receive_maximum = Some(n),
            _ => {}
        }
    }
    let mut accepted = accept(identity, policy, &connect.connect, connect.will_properties)?;
    accepted.version = Version::V5;
    accepted.session_expiry = session_expiry;
    accepted.client_max_packet = client_max_packet;
    accepted.receive_maximum = Some(receive_maximum.unwrap_or(u16::MAX));
    Ok(accepted)
}

/// The rules both versions share: the client id and the will topic.
fn accept(
    identity: &Identity,
    policy: &Policy,
    connect: &Connect<'_>,
    will_properties: Properties<'_>,
) -> Result<Accepted, Refusal> {
    if !connect.client_id.is_empty() && connect.client_id != identity.id {
        return Err(Refusal::ClientIdMismatch {
            sent: connect.client_id.to_owned(),
            cert: identity.id.clone(),
        });
    }
    let will = match &connect.will {
        Some(w) if !policy.may_publish(identity, w.topic) => {
            return Err(Refusal::WillDenied(w.topic.to_owned()))
        }
        Some(w) => Some(Will::from_connect(w, &will_properties)),
        None => None,
    };
    Ok(Accepted {
        version: Version::V311,
        client_id: identity.id.clone(),
        assigned_id: connect.client_id.is_empty(),
        keep_alive: connect.keep_alive,
        clean_start: connect.clean_session,
        session_expiry: 0,
        will,
        receive_maximum: None,
        client_max_packet: None,
    })
}

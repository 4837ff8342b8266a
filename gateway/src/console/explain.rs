//! Why was a client refused, in plain words: one table for every reason label the gateway
//! writes to its audit log and metrics. `fleet-gateway doctor` and the console's refusal feed
//! both read it, so an operator sees the same sentence in either place.

/// One reason label and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Explanation {
    /// The stable label (`unknown_ca`, `revoked`, …) as in the audit log.
    pub reason: &'static str,
    /// What happened, in plain words.
    pub text: &'static str,
}

const fn e(reason: &'static str, text: &'static str) -> Explanation {
    Explanation { reason, text }
}

/// Every reason label the gateway writes, in the order the console lists them: certificate
/// checks first, then the rest of the TLS handshake, the MQTT CONNECT, admission limits and
/// the sessions the gateway ended.
pub const EXPLANATIONS: &[Explanation] = &[
    e("unknown_ca", "its issuer is not among the gateway's client CAs (tls.client_ca) — wrong PKI, or a missing intermediate"),
    e("revoked", "a CRL the gateway loaded (tls.crl) revokes the certificate"),
    e("expired", "the certificate is past the end of its validity period — renew the device"),
    e("not_yet_valid", "the certificate is not valid yet — check the issuing station's clock, or this host's"),
    e("bad_eku", "the certificate is not allowed for client authentication (its extended key usage lacks clientAuth)"),
    e("bad_signature", "its signature does not verify against the trusted CA of that name: it was issued by a different CA that uses the same name (another environment's PKI?), or it was altered"),
    e("weak_key", "the certificate's key is too weak or of a kind the gateway does not accept (EC of at least 256 bits, RSA of at least 2048 bits, or Ed25519)"),
    e("bad_key_usage", "the certificate's KeyUsage extension does not include digitalSignature, so its key may not sign the TLS handshake (RFC 5280 4.2.1.3) — reissue it with digitalSignature"),
    e("issuer_not_a_ca", "the certificate was signed by a certificate that is not a CA"),
    e("bad_certificate", "the certificate is malformed or uses something the verifier refuses"),
    e("no_client_certificate", "the client sent no certificate: every client must log in with one (mutual TLS)"),
    e("client_refused_server_certificate", "the client refused the gateway's certificate: its trust anchor or gateway host does not match the gateway's certificate"),
    e("client_alert", "the client ended the TLS handshake with an alert"),
    e("no_shared_cipher_suite", "the client offers no cipher suite the gateway speaks"),
    e("unsupported_tls_version", "the client offers no TLS version the gateway speaks"),
    e("incompatible_client", "the client's TLS offer has nothing the gateway can use"),
    e("malformed_handshake", "the client sent TLS handshake messages that cannot be parsed"),
    e("eof_during_handshake", "the client closed the connection during the TLS handshake"),
    e("io_error", "the connection failed during the TLS handshake"),
    e("tls_error", "the TLS handshake failed"),
    e("handshake_timeout", "the client did not finish the TLS handshake in time (limits.handshake_timeout_secs)"),
    e("bad_identity", "the certificate is valid but names no usable identity: CN (device id) and O (tenant) must be 1-64 of A-Z a-z 0-9 . _ -"),
    e("connect_timeout", "the client sent no MQTT CONNECT in time after the handshake (limits.connect_timeout_secs)"),
    e("bad_connect", "the client's first packet was not a well-formed MQTT CONNECT"),
    e("unsupported_protocol", "the client speaks an MQTT version other than 3.1.1 or 5"),
    e("client_id_mismatch", "the MQTT client id is neither empty nor the certificate's CN (the device id)"),
    e("acl_will", "the client's will topic is outside what its ACL allows"),
    e("bad_auth_method", "the client asked for an MQTT 5 authentication method; the certificate is the only identity"),
    e("identifier_rejected", "an MQTT 3.1.1 client with an empty client id asked to keep its session (CleanSession=0); send the device id or CleanSession=1"),
    e("too_many_connections", "the gateway was at its connection limit (limits.max_connections)"),
    e("ip_rate_limited", "the source address opened connections faster than allowed (limits.ip_connect_rate)"),
    e("admin_kick", "an operator closed the session (admin API or console); the device may reconnect"),
    e("takeover", "another connection with the same identity took the session over"),
    e("shutdown", "the gateway was shutting down"),
    e("audit_rate_limited", "refusals from this source were over the audit rate limit: counted in this record, not written one by one"),
];

/// The plain words for a reason label, if it is one the gateway writes.
pub fn explain(reason: &str) -> Option<&'static str> {
    EXPLANATIONS
        .iter()
        .find(|x| x.reason == reason)
        .map(|x| x.text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_is_explained_once() {
        for (i, x) in EXPLANATIONS.iter().enumerate() {
            assert!(
                !EXPLANATIONS[..i].iter().any(|y| y.reason == x.reason),
                "{} twice",
                x.reason
            );
            assert!(!x.text.is_empty());
        }
        // Labels made elsewhere in the gateway.
        let refusals = [
            crate::Refusal::HandshakeTimeout,
            crate::Refusal::BadIdentity(String::new()),
            crate::Refusal::ConnectTimeout,
            crate::Refusal::BadConnect(String::new()),
            crate::Refusal::UnsupportedProtocol(3),
            crate::Refusal::ClientIdMismatch {
                sent: String::new(),
                cert: String::new(),
            },
            crate::Refusal::WillDenied(String::new()),
            crate::Refusal::AuthMethod(String::new()),
            crate::Refusal::EmptyIdKeepsSession,
        ];
        let kicks = [
            crate::registry::Kick::Admin,
            crate::registry::Kick::Takeover,
            crate::registry::Kick::Revoked,
            crate::registry::Kick::Shutdown,
        ];
        for label in refusals
            .iter()
            .map(crate::Refusal::label)
            .chain(kicks.iter().map(crate::registry::Kick::label))
        {
            assert!(explain(label).is_some(), "{label} is not explained");
        }
        assert_eq!(explain("no_such_reason"), None);
    }

    #[test]
    fn every_handshake_label_is_explained() {
        use rustls::{
            AlertDescription as A, CertificateError as C, Error as E, PeerIncompatible as P,
        };
        let errors = [
            E::NoCertificatesPresented,
            E::InvalidCertificate(C::UnknownIssuer),
            E::InvalidCertificate(C::Expired),
            E::InvalidCertificate(C::NotValidYet),
            E::InvalidCertificate(C::Revoked),
            E::InvalidCertificate(C::InvalidPurpose),
            E::InvalidCertificate(C::BadSignature),
            E::InvalidCertificate(C::BadEncoding),
            E::PeerIncompatible(P::NoCipherSuitesInCommon),
            E::PeerIncompatible(P::SupportedVersionsExtensionRequired),
            E::PeerIncompatible(P::NoKxGroupsInCommon),
            E::InvalidMessage(rustls::InvalidMessage::MissingData("x")),
            E::AlertReceived(A::UnknownCA),
            E::AlertReceived(A::HandshakeFailure),
            E::General("x".into()),
        ];
        let io = [
            std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        ];
        for e in errors.into_iter().map(std::io::Error::other).chain(io) {
            let label = crate::tls::failure_reason(&e);
            assert!(explain(label).is_some(), "{label} ({e}) is not explained");
        }
        for label in [
            "weak_key",
            "bad_key_usage",
            "issuer_not_a_ca",
            "too_many_connections",
            "ip_rate_limited",
        ] {
            assert!(explain(label).is_some(), "{label}");
        }
    }
}

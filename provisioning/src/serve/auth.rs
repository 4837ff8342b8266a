//! Who is calling: the role in the verified client certificate, and what each role may do.

use axum::http::StatusCode;

use super::error::ApiError;

/// Who is calling, from the verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Anonymous,
    Operator {
        name: String,
        tenant: String,
    },
    Device {
        id: String,
        serial_hex: String,
    },
    /// A gateway (subject OU=gateway): relays renewals of devices it authenticated.
    Gateway {
        name: String,
    },
    /// A fleet operator (subject OU=operator, e.g. the gateway's console): looks up and
    /// revokes devices of every tenant; issues and renews nothing.
    FleetOperator {
        name: String,
    },
}

/// Which devices an operator acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope<'a> {
    /// A tenant's operator (OU=service): its own tenant's devices.
    Tenant(&'a str),
    /// A fleet operator (OU=operator): every tenant's.
    Fleet,
}

impl Scope<'_> {
    pub(super) fn covers(self, tenant: &str) -> bool {
        match self {
            Scope::Tenant(own) => own == tenant,
            Scope::Fleet => true,
        }
    }
}

/// The caller's role from its (already verified) certificate.
pub fn peer_from_cert(der: &[u8]) -> Peer {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Peer::Anonymous;
    };
    let subject = cert.subject();
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
        it.next().and_then(|a| a.as_str().ok()).map(str::to_owned)
    };
    let cn = first(&mut subject.iter_common_name());
    let org = first(&mut subject.iter_organization());
    let has_ou = |want: &str| {
        subject
            .iter_organizational_unit()
            .any(|ou| ou.as_str() == Ok(want))
    };
    match (cn, org) {
        (Some(name), Some(_)) if has_ou("gateway") => Peer::Gateway { name },
        (Some(name), Some(_)) if has_ou("operator") => Peer::FleetOperator { name },
        (Some(name), Some(tenant)) if has_ou("service") => Peer::Operator { name, tenant },
        (Some(id), Some(_)) => Peer::Device {
            id,
            serial_hex: hex::encode(cert.raw_serial()),
        },
        _ => Peer::Anonymous,
    }
}

/// A tenant's operator (OU=service): its name and tenant. Issuing needs a tenant.
pub(super) fn operator(peer: &Peer) -> Result<(&str, &str), ApiError> {
    match peer {
        Peer::Operator { name, tenant } => Ok((name, tenant)),
        Peer::FleetOperator { .. } => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "fleet operators (OU=operator) look devices up and revoke them; issuing is for a tenant's operator (OU=service)",
        )),
        Peer::Device { .. } => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "devices may only renew themselves (POST /v1/renew)",
        )),
        Peer::Gateway { .. } => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "gateways may only relay device renewals (POST /v1/devices/{id}/renew)",
        )),
        Peer::Anonymous => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a client certificate from the station's CA is required",
        )),
    }
}

/// An operator of either kind, for look-up and revocation: who it is (for logs and the
/// audit) and which devices it covers.
pub(super) fn overseer(peer: &Peer) -> Result<(String, Scope<'_>), ApiError> {
    match peer {
        Peer::FleetOperator { name } => Ok((format!("{name} (operator)"), Scope::Fleet)),
        other => {
            let (name, tenant) = operator(other)?;
            Ok((format!("{name} (service, {tenant})"), Scope::Tenant(tenant)))
        }
    }
}

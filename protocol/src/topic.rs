//! The topic scheme, defined once:
//!
//! ```text
//! tenants/{tenant}/devices/{device}/telemetry[/…]   device → cloud
//! tenants/{tenant}/devices/{device}/ack             device → cloud: command replies
//! tenants/{tenant}/devices/{device}/cmd/…           cloud → device
//! tenants/{tenant}/devices/{device}/cert/…          certificate rotation (see [`Cert`])
//! ```
//!
//! The builders write into any [`core::fmt::Write`] (a `heapless::String<N>` on the device, a
//! `String` on hosts) and fail with [`TooLong`] when the buffer is full. [`classify`] says what
//! a topic is for one device. The gateway's ACL templates are built with the same functions,
//! given the template names `{tenant}` and `{device}`.

use core::fmt::{self, Write};

use crate::bundle::MAX_NAME_LEN;

/// The topics of certificate rotation, under `…/cert/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cert {
    /// `status/get`, device → gateway: "how is my certificate?" (empty payload).
    StatusGet,
    /// `status`, gateway → device: the [`CertStatus`](crate::renewal::CertStatus) JSON.
    Status,
    /// `csr`, device → gateway: a PKCS#10 request (DER) for a new key.
    Csr,
    /// `new`, gateway → device: the new certificate (DER).
    New,
    /// `error`, gateway → device: one line of text, why there is no new certificate.
    Error,
}

impl Cert {
    const ALL: [Cert; 5] = [
        Cert::StatusGet,
        Cert::Status,
        Cert::Csr,
        Cert::New,
        Cert::Error,
    ];

    /// The last levels of the topic, after `…/cert/`.
    pub const fn leaf(self) -> &'static str {
        match self {
            Cert::StatusGet => "status/get",
            Cert::Status => "status",
            Cert::Csr => "csr",
            Cert::New => "new",
            Cert::Error => "error",
        }
    }

    /// The rotation topic whose leaf is `leaf`.
    pub fn from_leaf(leaf: &str) -> Option<Cert> {
        Cert::ALL.into_iter().find(|c| c.leaf() == leaf)
    }

    /// Whether the device sends it (and the gateway answers it itself).
    pub const fn from_device(self) -> bool {
        matches!(self, Cert::StatusGet | Cert::Csr)
    }
}

/// What a topic under one device's prefix is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'t> {
    /// `telemetry` or `telemetry/{sub}`: the levels after `telemetry/` (empty for none).
    Telemetry(&'t str),
    /// `ack`: a reply to a command.
    Ack,
    /// `cmd/{name}`: the levels after `cmd/`.
    Command(&'t str),
    /// One of the rotation topics.
    Cert(Cert),
    /// Anything else under the device's prefix: what follows `…/{device}/`.
    Other(&'t str),
}

/// A topic under some device's prefix, split into its parts (see [`split`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceTopic<'t> {
    pub tenant: &'t str,
    pub device: &'t str,
    pub kind: Kind<'t>,
}

/// The topic did not fit the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong;

impl fmt::Display for TooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("topic does not fit its buffer")
    }
}

impl core::error::Error for TooLong {}

const TENANTS: &str = "tenants/";
const DEVICES: &str = "/devices/";
const TELEMETRY: &str = "telemetry";
const ACK: &str = "ack";
const CMD: &str = "cmd/";
const CERT: &str = "cert/";

/// Longest topic these builders make for valid names (`…/cert/status/get` with a tenant and a
/// device id of [`MAX_NAME_LEN`] each): a device's topic buffer must hold this many bytes.
pub const MAX_LEN: usize =
    TENANTS.len() + MAX_NAME_LEN + DEVICES.len() + MAX_NAME_LEN + 1 + CERT.len() + 10;

// `status/get` is the longest leaf of any topic a device builds.
const _: () = assert!(Cert::StatusGet.leaf().len() == 10);

fn put(out: &mut impl Write, parts: &[&str]) -> Result<(), TooLong> {
    parts
        .iter()
        .try_for_each(|p| out.write_str(p))
        .map_err(|_| TooLong)
}

fn device(out: &mut impl Write, tenant: &str, device: &str, rest: &[&str]) -> Result<(), TooLong> {
    put(out, &[TENANTS, tenant, DEVICES, device, "/"])?;
    put(out, rest)
}

/// `tenants/{tenant}/#`: everything of one tenant (the services' default ACL).
pub fn tenant_filter(out: &mut impl Write, tenant: &str) -> Result<(), TooLong> {
    put(out, &[TENANTS, tenant, "/#"])
}

/// `tenants/{tenant}/devices/{device}/`: the prefix of every topic of one device.
pub fn device_prefix(out: &mut impl Write, tenant: &str, id: &str) -> Result<(), TooLong> {
    device(out, tenant, id, &[])
}

/// `tenants/{tenant}/devices/{device}/#`: every topic of one device.
pub fn device_filter(out: &mut impl Write, tenant: &str, id: &str) -> Result<(), TooLong> {
    device(out, tenant, id, &["#"])
}

/// `tenants/{tenant}/devices/{device}/telemetry`.
pub fn telemetry(out: &mut impl Write, tenant: &str, id: &str) -> Result<(), TooLong> {
    device(out, tenant, id, &[TELEMETRY])
}

/// `tenants/{tenant}/devices/{device}/ack`: where a device answers commands.
pub fn ack(out: &mut impl Write, tenant: &str, id: &str) -> Result<(), TooLong> {
    device(out, tenant, id, &[ACK])
}

/// `tenants/{tenant}/devices/{device}/cmd/{name}`: one command to a device.
pub fn command(out: &mut impl Write, tenant: &str, id: &str, name: &str) -> Result<(), TooLong> {
    device(out, tenant, id, &[CMD, name])
}

/// `tenants/{tenant}/devices/{device}/cmd/#`: every command to a device.
pub fn commands_filter(out: &mut impl Write, tenant: &str, id: &str) -> Result<(), TooLong> {
    command(out, tenant, id, "#")
}

/// `tenants/{tenant}/devices/{device}/cert/`: the prefix of the rotation topics.
pub fn cert_prefix(out: &mut impl Write, tenant: &str, id: &str) -> Result<(), TooLong> {
    device(out, tenant, id, &[CERT])
}

/// `tenants/{tenant}/devices/{device}/cert/#`: every rotation topic of a device.
pub fn cert_filter(out: &mut impl Write, tenant: &str, id: &str) -> Result<(), TooLong> {
    device(out, tenant, id, &[CERT, "#"])
}

/// `tenants/{tenant}/devices/{device}/cert/{leaf}`: one rotation topic.
pub fn cert(out: &mut impl Write, tenant: &str, id: &str, which: Cert) -> Result<(), TooLong> {
    device(out, tenant, id, &[CERT, which.leaf()])
}

/// What follows `tenants/{tenant}/devices/{device}/` in `topic`; `None` when `topic` is not
/// under that device.
pub fn device_rest<'t>(topic: &'t str, tenant: &str, id: &str) -> Option<&'t str> {
    topic
        .strip_prefix(TENANTS)?
        .strip_prefix(tenant)?
        .strip_prefix(DEVICES)?
        .strip_prefix(id)?
        .strip_prefix('/')
}

/// What `topic` is for the device `id` of `tenant`; `None` when it is not under that device.
pub fn classify<'t>(topic: &'t str, tenant: &str, id: &str) -> Option<Kind<'t>> {
    device_rest(topic, tenant, id).map(kind_of)
}

/// Which tenant and device `topic` belongs to, and what it is for (a backend that subscribed
/// to many devices); `None` when it is not under a device's prefix.
pub fn split(topic: &str) -> Option<DeviceTopic<'_>> {
    let (tenant, rest) = topic.strip_prefix(TENANTS)?.split_once('/')?;
    let (device, rest) = rest.strip_prefix("devices/")?.split_once('/')?;
    (!tenant.is_empty() && !device.is_empty()).then(|| DeviceTopic {
        tenant,
        device,
        kind: kind_of(rest),
    })
}

/// What the part after `…/{device}/` says.
fn kind_of(rest: &str) -> Kind<'_> {
    if let Some(leaf) = rest.strip_prefix(CERT) {
        Cert::from_leaf(leaf).map_or(Kind::Other(rest), Kind::Cert)
    } else if let Some(name) = rest.strip_prefix(CMD) {
        Kind::Command(name)
    } else if rest == ACK {
        Kind::Ack
    } else if rest == TELEMETRY {
        Kind::Telemetry("")
    } else if let Some(sub) = rest
        .strip_prefix(TELEMETRY)
        .and_then(|r| r.strip_prefix('/'))
    {
        Kind::Telemetry(sub)
    } else {
        Kind::Other(rest)
    }
}

/// The rotation topic `topic` is for the device `id` of `tenant`, if it is one.
pub fn cert_topic(topic: &str, tenant: &str, id: &str) -> Option<Cert> {
    match classify(topic, tenant, id)? {
        Kind::Cert(c) => Some(c),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::String;

    use super::*;

    fn built(f: impl FnOnce(&mut String) -> Result<(), TooLong>) -> String {
        let mut s = String::new();
        f(&mut s).expect("fits");
        s
    }

    #[test]
    fn every_topic_of_the_scheme() {
        let (t, d) = ("acme", "acme-000001");
        for (got, want) in [
            (built(|s| tenant_filter(s, t)), "tenants/acme/#"),
            (
                built(|s| device_prefix(s, t, d)),
                "tenants/acme/devices/acme-000001/",
            ),
            (
                built(|s| device_filter(s, t, d)),
                "tenants/acme/devices/acme-000001/#",
            ),
            (
                built(|s| telemetry(s, t, d)),
                "tenants/acme/devices/acme-000001/telemetry",
            ),
            (
                built(|s| ack(s, t, d)),
                "tenants/acme/devices/acme-000001/ack",
            ),
            (
                built(|s| command(s, t, d, "reboot")),
                "tenants/acme/devices/acme-000001/cmd/reboot",
            ),
            (
                built(|s| commands_filter(s, t, d)),
                "tenants/acme/devices/acme-000001/cmd/#",
            ),
            (
                built(|s| cert_prefix(s, t, d)),
                "tenants/acme/devices/acme-000001/cert/",
            ),
            (
                built(|s| cert_filter(s, t, d)),
                "tenants/acme/devices/acme-000001/cert/#",
            ),
            (
                built(|s| cert(s, t, d, Cert::StatusGet)),
                "tenants/acme/devices/acme-000001/cert/status/get",
            ),
            (
                built(|s| cert(s, t, d, Cert::New)),
                "tenants/acme/devices/acme-000001/cert/new",
            ),
        ] {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn split_names_the_tenant_device_and_kind() {
        assert_eq!(
            split("tenants/acme/devices/d1/ack"),
            Some(DeviceTopic {
                tenant: "acme",
                device: "d1",
                kind: Kind::Ack
            })
        );
        assert_eq!(
            split("tenants/acme/devices/d2/cert/new").map(|t| (t.device, t.kind)),
            Some(("d2", Kind::Cert(Cert::New)))
        );
        assert_eq!(
            split("tenants/acme/devices/d2/x/y").map(|t| t.kind),
            Some(Kind::Other("x/y"))
        );
        for not_a_device_topic in [
            "tenants/acme/devices/d1",
            "tenants//devices/d1/ack",
            "tenants/acme/devices//ack",
            "tenants/acme/services/d1/ack",
            "tenant/acme/devices/d1/ack",
            "",
        ] {
            assert_eq!(split(not_a_device_topic), None, "{not_a_device_topic}");
        }
    }

    #[test]
    fn templates_build_acl_patterns() {
        assert_eq!(
            built(|s| commands_filter(s, "{tenant}", "{device}")),
            "tenants/{tenant}/devices/{device}/cmd/#"
        );
    }

    #[test]
    fn a_full_buffer_is_too_long() {
        let mut small = heapless::String::<20>::new();
        assert_eq!(telemetry(&mut small, "acme", "d1"), Err(TooLong));
        let longest = "x".repeat(MAX_NAME_LEN);
        let mut exact = heapless::String::<MAX_LEN>::new();
        assert_eq!(
            cert(&mut exact, &longest, &longest, Cert::StatusGet),
            Ok(())
        );
        assert_eq!(exact.len(), MAX_LEN);
    }

    #[test]
    fn classification_of_one_devices_topics() {
        fn c(topic: &str) -> Option<Kind<'_>> {
            classify(topic, "acme", "d1")
        }
        assert_eq!(
            c("tenants/acme/devices/d1/telemetry"),
            Some(Kind::Telemetry(""))
        );
        assert_eq!(
            c("tenants/acme/devices/d1/telemetry/temp"),
            Some(Kind::Telemetry("temp"))
        );
        assert_eq!(c("tenants/acme/devices/d1/ack"), Some(Kind::Ack));
        assert_eq!(
            c("tenants/acme/devices/d1/cmd/reboot"),
            Some(Kind::Command("reboot"))
        );
        for which in Cert::ALL {
            let topic = built(|s| cert(s, "acme", "d1", which));
            assert_eq!(c(&topic), Some(Kind::Cert(which)));
            assert_eq!(cert_topic(&topic, "acme", "d1"), Some(which));
        }
        assert_eq!(
            c("tenants/acme/devices/d1/cert/other"),
            Some(Kind::Other("cert/other"))
        );
        assert_eq!(
            c("tenants/acme/devices/d1/telemetryx"),
            Some(Kind::Other("telemetryx"))
        );
        // Another device, a device whose id extends ours, another tenant, no prefix at all.
        for foreign in [
            "tenants/acme/devices/d2/cert/csr",
            "tenants/acme/devices/d10/cert/csr",
            "tenants/acme2/devices/d1/cert/csr",
            "tenants/acme/devices/d1",
            "acme/devices/d1/cert/csr",
        ] {
            assert_eq!(c(foreign), None, "{foreign}");
            assert_eq!(cert_topic(foreign, "acme", "d1"), None);
        }
        assert!(Cert::Csr.from_device() && Cert::StatusGet.from_device());
        assert!(!Cert::New.from_device() && !Cert::Status.from_device());
    }
}

//! Topic access control.
//!
//! A policy is a list of rules per principal kind. A rule pattern is an MQTT topic filter that
//! may contain the templates `{tenant}` and `{device}`, filled in from the certificate identity
//! (whose names are restricted to `[A-Za-z0-9._-]`, so a template can never inject a wildcard).
//!
//! - PUBLISH to a topic is allowed when some allow rule matches it and no deny rule does.
//! - SUBSCRIBE versus receive (as AWS IoT separates them): a filter is granted when it is
//!   contained in some allow pattern and not wholly inside a deny pattern; a granted filter
//!   that merely overlaps a deny pattern still never carries a denied topic, because every
//!   message is checked again at delivery ([`Policy::may_receive`]).

use fleet_protocol::mqtt::{matches as filter_matches, valid_topic_filter};
use fleet_protocol::topic::{self, TooLong};
use serde::Deserialize;

use crate::identity::{Identity, Kind};

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// Which operation a rule governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Publish,
    Subscribe,
    /// Both publish and subscribe.
    All,
}

/// One rule: `effect` `action` on topics matching `pattern`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub effect: Effect,
    pub action: Action,
    pub pattern: String,
}

impl Rule {
    pub fn allow(action: Action, pattern: &str) -> Rule {
        Rule {
            effect: Effect::Allow,
            action,
            pattern: pattern.to_owned(),
        }
    }

    fn applies_to(&self, op: Action) -> bool {
        self.action == Action::All || self.action == op
    }
}

/// Why a rule's pattern is refused at load time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("pattern {0:?} uses an unknown template (only {{tenant}} and {{device}})")]
    UnknownTemplate(String),
    #[error("pattern {0:?} is not a valid MQTT topic filter")]
    NotAFilter(String),
}

/// A rule [`Policy::validate`] refused: its list (`device` or `service`), its index there,
/// and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRule {
    pub list: &'static str,
    pub index: usize,
    pub problem: PatternError,
}

/// The whole policy: rules for devices and rules for services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub device: Vec<Rule>,
    pub service: Vec<Rule>,
}

/// The templates a pattern may use, filled in from the identity.
const TENANT: &str = "{tenant}";
const DEVICE: &str = "{device}";

/// A pattern from the topic scheme, built with the templates as the names.
fn scheme(build: impl FnOnce(&mut String) -> Result<(), TooLong>) -> String {
    let mut pattern = String::new();
    // A `String` never runs out of room, so there is no `TooLong` to handle.
    let _ = build(&mut pattern);
    pattern
}

impl Default for Policy {
    /// Devices publish under their own prefix and subscribe to their own `cmd/` and `cert/`
    /// subtopics; services publish and subscribe anywhere under their tenant.
    fn default() -> Self {
        let (t, d) = (TENANT, DEVICE);
        Policy {
            device: vec![
                Rule::allow(Action::Publish, &scheme(|s| topic::device_filter(s, t, d))),
                Rule::allow(
                    Action::Subscribe,
                    &scheme(|s| topic::commands_filter(s, t, d)),
                ),
                Rule::allow(Action::Subscribe, &scheme(|s| topic::cert_filter(s, t, d))),
            ],
            service: vec![Rule::allow(
                Action::All,
                &scheme(|s| topic::tenant_filter(s, t)),
            )],
        }
    }
}

impl Policy {
    /// Checks every pattern once at load time; the first rule refused, if any.
    pub fn validate(&self) -> Result<(), InvalidRule> {
        let lists = [("device", &self.device), ("service", &self.service)];
        for (list, rules) in lists {
            for (index, rule) in rules.iter().enumerate() {
                let refuse = |problem| InvalidRule {
                    list,
                    index,
                    problem,
                };
                let Some(p) = expand(&rule.pattern, "t", "d") else {
                    return Err(refuse(PatternError::UnknownTemplate(rule.pattern.clone())));
                };
                if !valid_topic_filter(&p) {
                    return Err(refuse(PatternError::NotAFilter(rule.pattern.clone())));
                }
            }
        }
        Ok(())
    }

    fn rules(&self, who: &Identity) -> &[Rule] {
        match who.kind {
            Kind::Device => &self.device,
            Kind::Service => &self.service,
        }
    }

    fn patterns<'a>(
        &'a self,
        who: &'a Identity,
        op: Action,
        effect: Effect,
    ) -> impl Iterator<Item = String> + 'a {
        self.rules(who)
            .iter()
            .filter(move |r| r.effect == effect && r.applies_to(op))
            .filter_map(|r| expand(&r.pattern, &who.tenant, &who.id))
    }

    /// May `who` publish to `topic`?
    pub fn may_publish(&self, who: &Identity, topic: &str) -> bool {
        !self
            .patterns(who, Action::Publish, Effect::Deny)
            .any(|p| filter_matches(&p, topic))
            && self
                .patterns(who, Action::Publish, Effect::Allow)
                .any(|p| filter_matches(&p, topic))
    }

    /// May `who` subscribe to `filter`? Only if the filter is inside an allow pattern and
    /// not wholly inside a deny pattern. A filter that overlaps a deny pattern is granted:
    /// the denied topics are filtered out at delivery by [`Policy::may_receive`].
    pub fn may_subscribe(&self, who: &Identity, filter: &str) -> bool {
        !self
            .patterns(who, Action::Subscribe, Effect::Deny)
            .any(|p| contains(&p, filter))
            && self
                .patterns(who, Action::Subscribe, Effect::Allow)
                .any(|p| contains(&p, filter))
    }

    /// May `who` receive a message on `topic` through one of its subscriptions? A subscribe
    /// allow rule matches it and no subscribe deny rule does.
    pub fn may_receive(&self, who: &Identity, topic: &str) -> bool {
        self.receive_rules(who).allows(topic)
    }

    /// The subscribe rules of `who`, expanded once, to check every message delivered to it.
    pub fn receive_rules(&self, who: &Identity) -> ReceiveRules {
        ReceiveRules {
            allow: self
                .patterns(who, Action::Subscribe, Effect::Allow)
                .collect(),
            deny: self
                .patterns(who, Action::Subscribe, Effect::Deny)
                .collect(),
        }
    }
}

/// One identity's subscribe rules with the templates filled in: the ACL at delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveRules {
    allow: Vec<String>,
    deny: Vec<String>,
}

impl ReceiveRules {
    /// A subscribe allow rule matches `topic` and no subscribe deny rule does.
    pub fn allows(&self, topic: &str) -> bool {
        !self.deny.iter().any(|p| filter_matches(p, topic))
            && self.allow.iter().any(|p| filter_matches(p, topic))
    }
}

fn expand(pattern: &str, tenant: &str, device: &str) -> Option<String> {
    let out = pattern.replace(TENANT, tenant).replace(DEVICE, device);
    (!out.contains('{') && !out.contains('}')).then_some(out)
}

/// Is every topic matched by `filter` also matched by `pattern`?
pub fn contains(pattern: &str, filter: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let f: Vec<&str> = filter.split('/').collect();
    for i in 0.. {
        match (p.get(i).copied(), f.get(i).copied()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            // The filter ends where the pattern goes on: only a `#` could cover that.
            (Some(_), None) | (None, Some(_)) => return false,
            // `f/#` also matches `f` itself and deeper levels: only `#` covers it.
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b && b != "+" => {}
            _ => return false,
        }
    }
    false
}

/// Is there any topic that both filters match?
pub fn overlaps(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('/').collect();
    let b: Vec<&str> = b.split('/').collect();
    for i in 0.. {
        match (a.get(i).copied(), b.get(i).copied()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(kind: Kind, tenant: &str, id: &str) -> Identity {
        Identity {
            id: id.into(),
            tenant: tenant.into(),
            kind,
            serial: vec![1],
            issuer: vec![],
            fingerprint: [0; 32],
            not_after: 0,
        }
    }

    #[test]
    fn containment() {
        for (p, f, c) in [
            ("a/#", "a/#", true),
            ("a/#", "a", true),
            ("a/#", "a/b/+/c", true),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/+", "a/#", false),
            ("a/+", "a", false),
            ("a/b", "a/+", false),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/b/#", false),
            ("a/#", "#", false),
            ("a/#", "+/b", false),
            ("a/b/#", "a/#", false),
            ("#", "anything/#", true),
        ] {
            assert_eq!(contains(p, f), c, "is {f} inside {p}?");
        }
    }

    #[test]
    fn overlap() {
        for (a, b, o) in [
            ("a/b", "a/+", true),
            ("a/#", "a", true),
            ("a/b", "a/c", false),
            ("#", "x/y", true),
            ("a/+/c", "a/b/d", false),
            ("a/+", "a/b/c", false),
            ("+/b", "a/+", true),
        ] {
            assert_eq!(overlaps(a, b), o, "{a} ~ {b}");
            assert_eq!(overlaps(b, a), o, "{b} ~ {a}");
        }
    }

    #[test]
    fn default_patterns_are_the_documented_ones() {
        let p = Policy::default();
        let patterns = |rules: &[Rule]| rules.iter().map(|r| r.pattern.clone()).collect::<Vec<_>>();
        assert_eq!(
            patterns(&p.device),
            [
                "tenants/{tenant}/devices/{device}/#",
                "tenants/{tenant}/devices/{device}/cmd/#",
                "tenants/{tenant}/devices/{device}/cert/#"
            ]
        );
        assert_eq!(patterns(&p.service), ["tenants/{tenant}/#"]);
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn default_device_policy() {
        let p = Policy::default();
        let d = who(Kind::Device, "acme", "acme-000001");
        assert!(p.may_publish(&d, "tenants/acme/devices/acme-000001/telemetry"));
        assert!(p.may_publish(&d, "tenants/acme/devices/acme-000001/telemetry/temp"));
        assert!(!p.may_publish(&d, "tenants/acme/devices/acme-000002/telemetry"));
        assert!(!p.may_publish(&d, "tenants/globex/devices/acme-000001/telemetry"));
        assert!(p.may_subscribe(&d, "tenants/acme/devices/acme-000001/cmd/#"));
        assert!(p.may_subscribe(&d, "tenants/acme/devices/acme-000001/cmd/+"));
        assert!(p.may_subscribe(&d, "tenants/acme/devices/acme-000001/cert/new"));
        assert!(!p.may_subscribe(&d, "tenants/acme/devices/acme-000001/#"));
        assert!(!p.may_subscribe(&d, "tenants/acme/devices/+/cmd/#"));
        assert!(!p.may_subscribe(&d, "#"));
        assert!(!p.may_subscribe(&d, "+/acme/devices/acme-000001/cmd/x"));
    }

    #[test]
    fn tenants_cannot_reach_each_other() {
        let p = Policy::default();
        let svc = who(Kind::Service, "acme", "backend");
        assert!(p.may_subscribe(&svc, "tenants/acme/#"));
        assert!(p.may_subscribe(&svc, "tenants/acme/devices/+/telemetry"));
        assert!(p.may_publish(&svc, "tenants/acme/devices/acme-000001/cmd/reboot"));
        for f in [
            "#",
            "tenants/#",
            "tenants/+/devices/#",
            "tenants/globex/#",
            "+/+/#",
        ] {
            assert!(!p.may_subscribe(&svc, f), "service may subscribe {f}");
        }
        assert!(!p.may_publish(&svc, "tenants/globex/devices/g1/cmd/x"));
    }

    #[test]
    fn deny_rules_carve_out() {
        let mut p = Policy::default();
        p.service.push(Rule {
            effect: Effect::Deny,
            action: Action::Subscribe,
            pattern: "tenants/{tenant}/devices/+/cert/#".into(),
        });
        p.validate().unwrap();
        let svc = who(Kind::Service, "acme", "backend");
        // Wholly inside the deny rule: refused.
        assert!(!p.may_subscribe(&svc, "tenants/acme/devices/d1/cert/csr"));
        assert!(!p.may_subscribe(&svc, "tenants/acme/devices/+/cert/#"));
        // Overlapping it: granted, and the denied topics are not received.
        assert!(p.may_subscribe(&svc, "tenants/acme/#"));
        assert!(p.may_receive(&svc, "tenants/acme/devices/d1/telemetry"));
        assert!(!p.may_receive(&svc, "tenants/acme/devices/d1/cert/new"));
        // Outside every allow rule: never received, whatever the filter.
        assert!(!p.may_receive(&svc, "tenants/globex/devices/d1/telemetry"));
        assert!(p.may_subscribe(&svc, "tenants/acme/devices/+/telemetry"));
        assert!(p.may_publish(&svc, "tenants/acme/devices/d1/cert/new"));
    }

    #[test]
    fn bad_patterns_are_refused_at_load() {
        for pattern in ["a/#/b", "a/b+", "{tenantx}/#", "tenants/{tenant"] {
            let mut p = Policy::default();
            p.device.push(Rule::allow(Action::All, pattern));
            assert!(p.validate().is_err(), "{pattern} accepted");
        }
        Policy::default().validate().unwrap();
    }
}

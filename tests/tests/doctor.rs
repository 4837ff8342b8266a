//! `fleet-gateway doctor` explains refusals with the gateway's own verifier.

use std::path::Path;

use fleet_gateway::doctor::{diagnose, Inputs, Report};
use fleet_provision::Reason;
use fleet_tests::{export_pem, Pki, TENANT};

fn run(pki: &Pki, cert: &Path, key: Option<&Path>, at: Option<i64>) -> Report {
    diagnose(&Inputs {
        cert,
        key,
        client_ca: &[pki.path("gateway/clients-ca.pem")],
        crl_issuers: &[],
        crl: &[pki.path("crl/issuing.crl.pem")],
        service_ou: "service",
        at,
    })
    .expect("diagnose runs")
}

fn failures(r: &Report) -> String {
    r.findings
        .iter()
        .filter(|f| !f.ok)
        .map(|f| f.text.as_str())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[test]
fn good_expired_revoked_foreign_and_wrong_key() {
    let mut pki = Pki::new();
    let devices = pki.devices(TENANT, 2);
    let out = tempfile::tempdir().unwrap();
    let (cert0, key0) = export_pem(&devices[0], out.path());
    let (cert1, key1) = export_pem(&devices[1], out.path());

    let good = run(&pki, &cert0, Some(&key0), None);
    assert!(good.accepted(), "{}", failures(&good));
    assert!(good.findings.iter().any(|f| f
        .text
        .contains(&format!("client id must be {:?}", devices[0].device_id))));

    let wrong_key = run(&pki, &cert0, Some(&key1), None);
    assert!(!wrong_key.accepted());
    assert!(
        failures(&wrong_key).contains("does not belong"),
        "{}",
        failures(&wrong_key)
    );

    let in_two_years = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 2 * 365 * 86_400;
    let expired = run(&pki, &cert1, None, Some(in_two_years));
    assert!(
        failures(&expired).contains("expired"),
        "{}",
        failures(&expired)
    );

    pki.station
        .revoke(&devices[1].device_id, Reason::KeyCompromise)
        .unwrap();
    let revoked = run(&pki, &cert1, None, None);
    assert!(
        failures(&revoked).contains("revoked"),
        "{}",
        failures(&revoked)
    );

    // A CA the gateway has never heard of.
    let other = tempfile::tempdir().unwrap();
    let mut stranger_station = fleet_provision::Station::init(
        other.path(),
        "Other Org",
        fleet_provision::KeyProtection::InsecurePlaintext,
    )
    .unwrap();
    let stranger = stranger_station
        .issue_devices(&fleet_provision::BatchRequest {
            tenant: TENANT.into(),
            count: 1,
            gateway_host: "localhost".into(),
            gateway_port: 8883,
            validity_days: 30,
        })
        .unwrap();
    let stranger = fleet_hil::fleet::DeviceBundle::load(&stranger[0].bundle_path).unwrap();
    let (cert_f, _) = export_pem(&stranger, out.path());
    let unknown = run(&pki, &cert_f, None, None);
    assert!(
        failures(&unknown).contains("unknown_ca"),
        "{}",
        failures(&unknown)
    );

    // Another PKI whose CAs carry the same names as the trusted ones.
    let mut twin = Pki::new();
    let twin_device = twin.devices(TENANT, 1);
    let (cert_t, _) = export_pem(&twin_device[0], out.path());
    let same_name = run(&pki, &cert_t, None, None);
    assert!(
        failures(&same_name).contains("same name"),
        "{}",
        failures(&same_name)
    );

    // A server certificate is not a client certificate.
    let server = run(&pki, &pki.path("gateway/server.pem"), None, None);
    assert!(
        failures(&server).contains("clientAuth"),
        "{}",
        failures(&server)
    );
}

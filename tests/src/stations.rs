//! Stations on one shared PostgreSQL registry (the tests' private server, crate
//! `fleet-pgserver`), each with its own issuing CA under one root, as a factory with several
//! lines runs them; and a gateway configuration that trusts every one of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fleet_gateway::cluster::ClusterConfig;
use fleet_gateway::config::{Admin, TlsFiles};
use fleet_gateway::Config;
use fleet_hil::fleet::DeviceBundle;
use fleet_pgserver::{Options, PgServer};
use fleet_provision::publish::Publisher;
use fleet_provision::{
    pki, BatchRequest, ImportFiles, KeyProtection, PostgresTarget, RegistryLocation, Station,
};

/// `n` station directories (`station-1` …) on one registry.
pub struct Stations {
    pub pg: PgServer,
    pub dir: tempfile::TempDir,
    pub registry: RegistryLocation,
    pub count: usize,
}

impl Stations {
    /// `n` stations, each with an issuing CA of its own ("Acme Line i") under one root;
    /// `None` (a skip) when PostgreSQL is missing and not required.
    pub fn new(n: usize) -> Option<Stations> {
        let pg = PgServer::for_test(Options::default())?;
        let url = pg.database("fleet").expect("create the registry database");
        let target = PostgresTarget::new(&url, Some(&pg.password), None).expect("target");
        let dir = tempfile::tempdir().expect("temp dir");
        let root = pki::new_root_ca("Acme").expect("root CA");
        let root_pem = dir.path().join("root.pem");
        std::fs::write(&root_pem, &root.cert_pem).expect("write root");
        let stations = Stations {
            pg,
            dir,
            registry: RegistryLocation::Postgres(Box::new(target)),
            count: n,
        };
        for i in 1..=n {
            let issuing = pki::new_issuing_ca(&root, &format!("Acme Line {i}")).expect("CA");
            let cert = stations.dir.path().join(format!("issuing-{i}.pem"));
            let key = stations.dir.path().join(format!("issuing-{i}.key"));
            std::fs::write(&cert, &issuing.cert_pem).expect("write CA");
            let key_pem = pki::key_to_pem(&issuing.key, None).expect("key PEM");
            std::fs::write(&key, key_pem).expect("write key");
            let files = ImportFiles {
                cert: &cert,
                key: &key,
                root: Some(&root_pem),
            };
            Station::import_at(
                &stations.station_dir(i),
                &files,
                KeyProtection::InsecurePlaintext,
                &stations.registry,
            )
            .expect("ca import");
        }
        Some(stations)
    }

    pub fn station_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("station-{i}"))
    }

    /// The root every station's CA chains to (the devices' trust anchor).
    pub fn root_pem(&self) -> PathBuf {
        self.dir.path().join("root.pem")
    }

    /// Opens station `i`, publishing its CRLs to NATS at `publish_to` if given.
    pub fn open(&self, i: usize, publish_to: Option<&str>) -> Station {
        let mut station =
            Station::open_at(&self.station_dir(i), None, &self.registry).expect("open station");
        station.publish_crls_to(publish_to.map(Publisher::new));
        station
    }

    /// A gateway on loopback (ports picked by the system) with its admin listener, its
    /// server certificate from station 1 (`issue_server_cert` there first), trusting the issuing CA of every
    /// station as client CA and signer of CRLs — and no CRL file: what it revokes comes
    /// from the cluster's CRL bucket (cached at `crl_cache`). Its audit log is `crl_cache`
    /// with the extension `audit.jsonl`.
    pub fn gateway_config(&self, nats: &[String], name: &str, crl_cache: &Path) -> Config {
        let one = self.station_dir(1);
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let mut config = Config::new(
            any,
            TlsFiles {
                server_cert: one.join("gateway/server.pem"),
                server_key: one.join("gateway/server.key"),
                client_ca: (1..=self.count)
                    .map(|i| self.station_dir(i).join("gateway/clients-ca.pem"))
                    .collect(),
                crl_issuers: Vec::new(),
                crl: Vec::new(),
            },
        );
        config.audit_log = Some(crl_cache.with_extension("audit.jsonl"));
        config.admin = Some(Admin {
            listen: any,
            token: None,
        });
        let mut cluster = ClusterConfig::new(nats.to_vec());
        cluster.name = Some(name.into());
        cluster.crl_cache = Some(crl_cache.to_owned());
        config.cluster = Some(cluster);
        config
    }
}

/// A device a station issued: its certificate's serial and its bundle.
pub struct Issued {
    pub serial: Vec<u8>,
    pub bundle: DeviceBundle,
}

/// Issues `count` devices of tenant `acme` at `station` and loads their bundles.
pub fn devices(station: &mut Station, count: u32) -> Vec<Issued> {
    station
        .issue_devices(&BatchRequest {
            tenant: crate::TENANT.into(),
            count,
            gateway_host: "localhost".into(),
            gateway_port: 8883,
            validity_days: 30,
        })
        .expect("issue devices")
        .iter()
        .map(|d| Issued {
            serial: hex::decode(&d.serial_hex).expect("hex serial"),
            bundle: DeviceBundle::load(&d.bundle_path).expect("bundle"),
        })
        .collect()
}

-- Migration 1: the registry several stations share.
--
-- devices: one row per device id, claimed once (the id's uniqueness is this primary key).
-- certs: one row per certificate; `station` is the station that reserved it (whose crash
-- leftovers it is), `issuer` the SHA-256 of the DER of the issuing CA that signs it (whose
-- CRL lists it). A serial names one certificate fleet-wide (the primary key), which holds
-- it unique per issuer too.
CREATE TABLE devices (
    device_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    station TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE counters (
    tenant TEXT PRIMARY KEY,
    next BIGINT NOT NULL
);

CREATE TABLE certs (
    serial TEXT PRIMARY KEY,
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    issuer TEXT NOT NULL,
    station TEXT NOT NULL,
    device_id TEXT NOT NULL REFERENCES devices (device_id),
    tenant TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('reserved', 'active', 'superseded', 'revoked', 'aborted')),
    batch TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    fingerprint TEXT UNIQUE,
    not_after BIGINT,
    cert_der BYTEA,
    superseded_at BIGINT,
    revoked_at BIGINT,
    revocation_reason TEXT,
    UNIQUE (issuer, serial)
);
CREATE INDEX certs_device ON certs (device_id);
CREATE INDEX certs_reserved ON certs (station) WHERE status = 'reserved';
CREATE INDEX certs_superseded ON certs (issuer, superseded_at) WHERE status = 'superseded';
CREATE INDEX certs_on_crl ON certs (issuer) WHERE status IN ('revoked', 'aborted');

CREATE TABLE batches (
    station TEXT NOT NULL,
    batch TEXT NOT NULL,
    out_dir TEXT,
    started_at BIGINT NOT NULL,
    PRIMARY KEY (station, batch)
);

CREATE TABLE renewals (
    serial TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX renewals_device ON renewals (device_id, at);

-- One strictly increasing CRL number per issuing CA, whichever station writes its CRL.
CREATE TABLE crl_numbers (
    issuer TEXT PRIMARY KEY,
    last BIGINT NOT NULL
);

-- flashgate fleet schema, version 1. Times are Unix milliseconds (bigint);
-- hashes are raw bytes (bytea). Every row that comes from a bundle names
-- the ingest that brought it.

CREATE TABLE fleet_settings (
    name  text PRIMARY KEY,
    value text NOT NULL
);

-- The OEM's job-signing keys this database trusts (rotation, business units).
CREATE TABLE oem_keys (
    key_id     bytea PRIMARY KEY,      -- COSE kid: SHA-256(SEC1 point)[..16]
    public_key bytea NOT NULL UNIQUE,  -- 65-byte uncompressed SEC1 P-256 point
    added_ms   bigint NOT NULL
);

-- One row per appliance, pinned on first sight.
CREATE TABLE appliances (
    appliance_id      text PRIMARY KEY,
    cm                text NOT NULL,
    enrollment        bytea NOT NULL,   -- the signed enrollment record as first seen
    enrollment_sha256 bytea NOT NULL,
    log_key           bytea NOT NULL,   -- 65-byte SEC1 log public key
    first_seen_ms     bigint NOT NULL,
    last_ingest_ms    bigint NOT NULL
);

-- One row per log segment of an appliance (a log reset starts a new one).
-- size is always the size of the stored signed checkpoint: only records a
-- checkpoint covers are stored.
CREATE TABLE logs (
    log_id        serial PRIMARY KEY,
    appliance_id  text NOT NULL REFERENCES appliances,
    segment       bigint NOT NULL,
    size          bigint NOT NULL,
    frontier      bytea NOT NULL,   -- roots of the complete subtrees at size, largest first
    checkpoint    bytea,            -- the appliance's signed checkpoint for size
    checkpoint_ms bigint,           -- time of the last record it covers
    UNIQUE (appliance_id, segment)
);

-- Every complete subtree root of every stored log (level 0: leaf hashes),
-- so that inclusion and consistency proofs read O(log n) rows.
CREATE TABLE nodes (
    log_id integer  NOT NULL,
    level  smallint NOT NULL,
    idx    bigint   NOT NULL,
    hash   bytea    NOT NULL,
    PRIMARY KEY (log_id, level, idx)
);

-- Jobs, from their job-imported records, completed from the verified
-- manifest once a bundle of the job itself is ingested.
CREATE TABLE jobs (
    job_id            bytea PRIMARY KEY,
    appliance_id      text NOT NULL,
    product           text NOT NULL,
    security_version  bigint NOT NULL,
    quota             bigint NOT NULL,
    manifest_sha256   bytea NOT NULL,
    reserved          bigint NOT NULL DEFAULT 0,  -- counter values reserved (the quota used)
    oem_key_id        bytea,
    not_before        bigint,
    not_after         bigint,
    job_ca_cert       bytea,
    every_units       integer,
    every_seconds     integer
);
CREATE INDEX jobs_product ON jobs (product, security_version);

CREATE TABLE runs (
    run_id     bytea PRIMARY KEY,
    log_id     integer NOT NULL,
    seq        bigint NOT NULL,
    job_id     bytea NOT NULL,
    operator   text NOT NULL,
    channels   integer NOT NULL,
    started_ms bigint NOT NULL
);

-- One row per unit record (passed, failed or aborted), with its record bytes.
CREATE TABLE units (
    log_id       integer NOT NULL,
    seq          bigint NOT NULL,
    appliance_id text NOT NULL,
    job_id       bytea NOT NULL,
    product      text NOT NULL,
    run_id       bytea,
    counter      bigint NOT NULL,
    result       text NOT NULL,      -- passed | failed | aborted
    stage        text,               -- the failing stage
    uid          bytea,
    serial       text,
    cert_sha256  bytea,
    time_ms      bigint NOT NULL,
    rework_of    bigint,
    record       bytea NOT NULL,
    ingest_id    bigint NOT NULL,
    PRIMARY KEY (log_id, seq)
);
CREATE INDEX units_uid ON units (uid) WHERE uid IS NOT NULL;
CREATE INDEX units_serial ON units (serial) WHERE serial IS NOT NULL;
CREATE INDEX units_cert ON units (cert_sha256) WHERE cert_sha256 IS NOT NULL;
CREATE INDEX units_ingest ON units (ingest_id);

-- Unit counts per job and outcome ("passed", or the failing stage), kept at
-- ingest so that the report reads a small table.
CREATE TABLE unit_counts (
    job_id  bytea NOT NULL,
    outcome text NOT NULL,
    n       bigint NOT NULL,
    PRIMARY KEY (job_id, outcome)
);

CREATE TABLE certificates (
    cert_sha256 bytea PRIMARY KEY,
    spki_sha256 bytea NOT NULL,     -- SHA-256 of the DER SubjectPublicKeyInfo
    job_id      bytea NOT NULL,
    der         bytea NOT NULL,
    ingest_id   bigint NOT NULL
);
CREATE INDEX certificates_spki ON certificates (spki_sha256);
CREATE INDEX certificates_job ON certificates (job_id);

-- Every bundle offered, merged or not.
CREATE TABLE ingests (
    ingest_id     bigserial PRIMARY KEY,
    bundle_sha256 bytea NOT NULL UNIQUE,  -- SHA-256 of bundle.json
    appliance_id  text NOT NULL,
    job_id        bytea NOT NULL,
    at_ms         bigint NOT NULL,
    outcome       text NOT NULL,          -- merged | flagged | fork | rollback
    records_added bigint NOT NULL,
    report        text NOT NULL           -- the verifier's JSON output
);

-- Findings, one row per (kind, subject); re-found findings update in place.
CREATE TABLE anomalies (
    anomaly_id   bigserial PRIMARY KEY,
    kind         text NOT NULL,
    subject      text NOT NULL,
    product      text,
    appliance_id text,
    job_id       bytea,
    detail       text NOT NULL,
    ingest_id    bigint,
    found_ms     bigint NOT NULL,
    open         boolean NOT NULL DEFAULT true,
    UNIQUE (kind, subject)
);

-- Two appliance-signed checkpoints that cannot both be true.
CREATE TABLE evidence (
    ingest_id              bigint NOT NULL,
    appliance_id           text NOT NULL,
    kind                   text NOT NULL,   -- fork | rollback
    stored_checkpoint      bytea NOT NULL,
    conflicting_checkpoint bytea
);

-- The collector's cosignatures, one per witnessed checkpoint.
CREATE TABLE cosignatures (
    log_id   integer NOT NULL,
    size     bigint NOT NULL,
    witness  text NOT NULL,
    note     text NOT NULL,
    at_ms    bigint NOT NULL,
    PRIMARY KEY (log_id, size, witness)
);

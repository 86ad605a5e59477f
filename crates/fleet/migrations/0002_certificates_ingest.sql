-- flashgate fleet schema, version 2: the certificates an ingest added are
-- found by index, as its unit rows are (units_ingest), so that the
-- duplicate-device-key cross-check reads the new rows instead of every
-- stored certificate.

CREATE INDEX certificates_ingest ON certificates (ingest_id);

-- flashgate fleet schema, version 5: the serial, certificate and device-key
-- indexes also hold the ingest that added each row, as the UID index does
-- since version 4. The cross-checks probe each value a bundle adds among
-- other ingests' rows only, answered from the index alone when the value
-- is new; lookups by serial or certificate use the first column.

CREATE INDEX units_serial_product_ingest ON units (serial, product, ingest_id) WHERE serial IS NOT NULL;
DROP INDEX units_serial;
CREATE INDEX units_cert_ingest ON units (cert_sha256, ingest_id) WHERE cert_sha256 IS NOT NULL;
DROP INDEX units_cert;
CREATE INDEX units_spki_ingest ON units (spki_sha256, ingest_id) WHERE spki_sha256 IS NOT NULL;
DROP INDEX units_spki;

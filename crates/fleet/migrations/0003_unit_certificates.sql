-- flashgate fleet schema, version 3: a unit's certificate is stored on its
-- unit row (DER and the SHA-256 of its SubjectPublicKeyInfo), loaded by the
-- same COPY as the row. The separate `certificates` table needed a second
-- COPY, a temporary table and a conflict-checked insert per bundle, over
-- half of a large ingest's time; a certificate no unit record names was
-- never reachable from a lookup or the inventory.

ALTER TABLE units ADD COLUMN cert_der bytea, ADD COLUMN spki_sha256 bytea;
UPDATE units u SET cert_der = c.der, spki_sha256 = c.spki_sha256
  FROM certificates c WHERE c.cert_sha256 = u.cert_sha256;
CREATE INDEX units_spki ON units (spki_sha256) WHERE spki_sha256 IS NOT NULL;
DROP TABLE certificates;

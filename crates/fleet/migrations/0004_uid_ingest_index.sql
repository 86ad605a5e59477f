-- flashgate fleet schema, version 4: the UID index also holds the ingest
-- that added each row. The duplicate-UID check asks, for each UID of a new
-- bundle, whether another ingest holds it; with ingest_id in the index
-- that is two range probes answered from the index alone when the answer
-- is no, instead of a visit to the wide row the bundle itself just added.
-- Lookups by UID use the same index by its first column.

CREATE INDEX units_uid_ingest ON units (uid, ingest_id) WHERE uid IS NOT NULL;
DROP INDEX units_uid;

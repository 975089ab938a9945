-- Replicas refresh by what changed since the table version they hold, not by reloading the
-- whole table: each endpoint row and each deletion carries the table version that made it.
ALTER TABLE nexus_endpoints ADD COLUMN changed_version bigint NOT NULL DEFAULT 0;
CREATE INDEX nexus_endpoints_changed ON nexus_endpoints (changed_version);

CREATE TABLE nexus_endpoint_deletions (
    id              text   NOT NULL,
    changed_version bigint NOT NULL
);
CREATE INDEX nexus_endpoint_deletions_changed ON nexus_endpoint_deletions (changed_version);

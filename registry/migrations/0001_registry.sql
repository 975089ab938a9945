-- The registry: endpoints and trusted clusters, and one table version that every write bumps
-- (its row lock serialises writers; replicas compare it to know they are current).
CREATE TABLE nexus_registry_meta (
    id            smallint PRIMARY KEY CHECK (id = 1),
    table_version bigint   NOT NULL
);
INSERT INTO nexus_registry_meta (id, table_version) VALUES (1, 0);

CREATE TABLE nexus_endpoints (
    id      text   PRIMARY KEY,
    name    text   NOT NULL UNIQUE,
    version bigint NOT NULL,
    body    jsonb  NOT NULL
);

CREATE TABLE nexus_clusters (
    name    text   PRIMARY KEY,
    version bigint NOT NULL,
    body    jsonb  NOT NULL
);

-- Random secrets every replica must share (the callback sealing key), created on first use.
CREATE TABLE nexus_shared_secrets (
    name   text PRIMARY KEY,
    secret text NOT NULL
);

-- Replicas sharing the store announce themselves, so each can tell how many it sees.
CREATE TABLE nexus_replicas (
    id        text        PRIMARY KEY,
    last_seen timestamptz NOT NULL
);

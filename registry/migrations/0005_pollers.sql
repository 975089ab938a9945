-- Which replica has workers polling which task queue, so a replica without one forwards the
-- task to one that has (each replica rewrites its own rows about once a second).
ALTER TABLE nexus_replicas ADD COLUMN url text;
CREATE TABLE nexus_pollers (
    replica    text        NOT NULL,
    namespace  text        NOT NULL,
    task_queue text        NOT NULL,
    last_seen  timestamptz NOT NULL,
    PRIMARY KEY (replica, namespace, task_queue)
);

-- Completions accepted by any replica, until delivered: each pending one is held by one
-- replica under a lease it renews; a survivor claims those whose lease ran out.
CREATE TABLE nexus_completions (
    id              bigserial PRIMARY KEY,
    state           smallint  NOT NULL,   -- 0 pending, 1 failed
    attempts        integer   NOT NULL,
    next_attempt_ms bigint    NOT NULL,
    created_ms      bigint    NOT NULL,
    expires_ms      bigint    NOT NULL,
    last_error      text,
    payload         bytea     NOT NULL,
    owner           text,
    lease_until_ms  bigint    NOT NULL DEFAULT 0
);
CREATE INDEX nexus_completions_pending ON nexus_completions (state, lease_until_ms);

-- A completion is accepted once per callback token (its digest), until the token expires.
CREATE TABLE nexus_completion_keys (
    key        bytea  PRIMARY KEY,
    expires_ms bigint NOT NULL
);

-- Callbacks too long to travel sealed in their own URL.
CREATE TABLE nexus_callback_notes (
    id         bigserial PRIMARY KEY,
    payload    bytea     NOT NULL,
    expires_ms bigint    NOT NULL
);

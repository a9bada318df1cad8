-- The safe's current shape: the sum of every migration in migrations/, kept by hand.
-- tests/integration/test_migrations.py applies both and compares the catalogs.

CREATE TABLE guests (
    id          text PRIMARY KEY,
    preferences jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tickets (
    id              uuid PRIMARY KEY,
    guest_id        text NOT NULL REFERENCES guests (id),
    service         text NOT NULL,
    args            jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'in_progress', 'retrying', 'completed', 'failed', 'cancelled')),
    butler          text NOT NULL,
    token_hashes    bytea[] NOT NULL CHECK (cardinality(token_hashes) >= 1),
    total           integer NOT NULL CHECK (total >= 0),
    done            integer NOT NULL DEFAULT 0 CHECK (done >= 0),
    message         text,
    epoch           integer NOT NULL DEFAULT 0,
    idempotency_key text UNIQUE,
    request_hash    bytea,
    reason          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX tickets_unfinished ON tickets (created_at)
    WHERE status IN ('queued', 'in_progress', 'retrying');
CREATE INDEX tickets_guest ON tickets (guest_id);

CREATE TABLE jobs (
    id               bigserial PRIMARY KEY,
    ticket_id        uuid NOT NULL UNIQUE REFERENCES tickets (id),
    queue            text NOT NULL,
    service          text NOT NULL,
    args             jsonb NOT NULL,
    state            text NOT NULL DEFAULT 'available'
        CHECK (state IN ('available', 'scheduled', 'executing', 'retryable',
                         'completed', 'discarded', 'cancelled')),
    priority         integer NOT NULL DEFAULT 0,
    attempt          integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL CHECK (max_attempts > 0),
    errors           jsonb NOT NULL DEFAULT '[]'::jsonb,
    checkpoint       jsonb,
    node             text,
    cancel_requested boolean NOT NULL DEFAULT false,
    inserted_at      timestamptz NOT NULL DEFAULT now(),
    scheduled_at     timestamptz NOT NULL DEFAULT now(),
    attempted_at     timestamptz,
    completed_at     timestamptz,
    cancelled_at     timestamptz,
    discarded_at     timestamptz
);
CREATE INDEX jobs_ready ON jobs (queue, priority, scheduled_at, id)
    WHERE state IN ('available', 'scheduled', 'retryable');
CREATE INDEX jobs_executing ON jobs (node) WHERE state = 'executing';

CREATE TABLE ticket_events (
    id        bigserial PRIMARY KEY,
    ticket_id uuid NOT NULL REFERENCES tickets (id),
    status    text NOT NULL,
    attempt   integer NOT NULL DEFAULT 0,
    detail    text,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ticket_events_ticket ON ticket_events (ticket_id, id);

CREATE TABLE service_records (
    id           bigserial PRIMARY KEY,
    ticket_id    uuid NOT NULL UNIQUE REFERENCES tickets (id),
    guest_id     text NOT NULL REFERENCES guests (id),
    service      text NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('completed', 'failed', 'cancelled')),
    done         integer NOT NULL,
    total        integer NOT NULL,
    amount_cents bigint NOT NULL CHECK (amount_cents >= 0),
    currency     text NOT NULL,
    attempts     integer NOT NULL,
    result       jsonb,
    reason       text,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX service_records_guest ON service_records (guest_id, finished_at);

CREATE TABLE nodes (
    name         text PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

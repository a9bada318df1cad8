-- insert_tickets --
-- Tickets, their jobs, first audit events and guests, many in one statement
-- (the front desk's group commit); wakes the laundry with one NOTIFY per queue
-- at commit. Returns one row: the ids left out (a ticket whose idempotency key
-- is taken), most often none; one row, not one per ticket written, which
-- psycopg would turn into a dict and a UUID each.
-- The rows come as one JSON array of [id, guest, service, args, butler,
-- token_hash (hex), total, queue, max_attempts, idempotency_key,
-- request_hash (hex)].
WITH input AS (
    SELECT (r->>0)::uuid AS id, r->>1 AS guest, r->>2 AS service, r->3 AS args,
           r->>4 AS butler, decode(r->>5, 'hex') AS token_hash, (r->>6)::integer AS total,
           r->>7 AS queue, (r->>8)::integer AS max_attempts, r->>9 AS idempotency_key,
           decode(r->>10, 'hex') AS request_hash
    FROM jsonb_array_elements(%(rows)s::jsonb) AS r
), guest AS (
    INSERT INTO guests (id) SELECT DISTINCT guest FROM input ON CONFLICT (id) DO NOTHING
), ticket AS (
    INSERT INTO tickets (id, guest_id, service, args, butler, token_hashes, total,
                         idempotency_key, request_hash)
    SELECT id, guest, service, args, butler, ARRAY[token_hash], total, idempotency_key,
           request_hash
    FROM input
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id
), job AS (
    INSERT INTO jobs (ticket_id, queue, service, args, max_attempts)
    SELECT i.id, i.queue, i.service, i.args, i.max_attempts
    FROM input i JOIN ticket t ON t.id = i.id
    RETURNING queue
), audit AS (
    INSERT INTO ticket_events (ticket_id, status) SELECT id, 'queued' FROM ticket
), wake AS (
    SELECT pg_notify('grandhotel_jobs', q.queue) FROM (SELECT DISTINCT queue FROM job) q
)
SELECT ARRAY(SELECT i.id FROM input i WHERE NOT EXISTS (SELECT FROM ticket t WHERE t.id = i.id))
           AS refused,
       (SELECT count(*) FROM wake) AS woken;

-- ticket_by_idempotency_key --
-- The ticket an earlier request with the same key created.
SELECT id, request_hash FROM tickets WHERE idempotency_key = %(idempotency_key)s;

-- add_token --
-- One more token for a ticket (an idempotent replay gets its own), up to a limit.
UPDATE tickets SET token_hashes = token_hashes || %(token_hash)s::bytea
WHERE id = %(id)s AND cardinality(token_hashes) < %(most)s
RETURNING id;

-- ticket --
-- One ticket with its job and record, for reads of finished tickets and hiring.
SELECT t.id, t.guest_id, t.service, t.args, t.status, t.butler, t.token_hashes, t.total,
       t.done, t.message, t.epoch, t.reason, t.created_at, t.updated_at, t.finished_at,
       j.attempt, j.state AS job_state, r.id AS record_id
FROM tickets t
JOIN jobs j ON j.ticket_id = t.id
LEFT JOIN service_records r ON r.ticket_id = t.id
WHERE t.id = %(id)s;

-- record --
-- A ticket's service record (history and billing).
SELECT ticket_id, guest_id, service, outcome, done, total, amount_cents, currency,
       attempts, result, reason, started_at, finished_at,
       (extract(epoch FROM finished_at - started_at) * 1000)::bigint AS duration_ms
FROM service_records WHERE ticket_id = %(id)s;

-- hire_unfinished --
-- Every unfinished ticket, each given a new epoch so its new butler's seqs
-- start above anything the old butler sent.
UPDATE tickets t SET epoch = epoch + 1
FROM jobs j
WHERE j.ticket_id = t.id AND t.status IN ('queued', 'in_progress', 'retrying')
RETURNING t.id, t.guest_id, t.service, t.args, t.status, t.butler, t.token_hashes, t.total,
          t.done, t.message, t.epoch, t.reason, t.created_at, t.updated_at, j.attempt;

-- claim_jobs --
-- Take up to %(limit)s ready jobs of a queue for this node. Each claim starts a
-- new attempt (the fence every later write of the attempt is checked against)
-- and a new epoch for the ticket, in case this node must hire its butler.
WITH claimed AS (
    UPDATE jobs SET state = 'executing', attempt = attempt + 1, attempted_at = now(),
                    node = %(node)s
    WHERE id = ANY (ARRAY(
        SELECT id FROM jobs
        WHERE queue = %(queue)s AND state IN ('available', 'scheduled', 'retryable')
          AND scheduled_at <= now()
        ORDER BY priority, scheduled_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED))
    RETURNING id, ticket_id, service, args, attempt, max_attempts, checkpoint
), moved AS (
    UPDATE tickets t SET status = 'in_progress', epoch = epoch + 1, updated_at = now()
    FROM claimed WHERE t.id = claimed.ticket_id
    RETURNING t.id, t.guest_id, t.butler, t.token_hashes, t.total, t.done, t.message,
              t.epoch, t.reason, t.created_at, t.updated_at
), audit AS (
    INSERT INTO ticket_events (ticket_id, status, attempt)
    SELECT ticket_id, 'in_progress', attempt FROM claimed
)
SELECT c.id AS job_id, c.ticket_id, c.service, c.args, c.attempt, c.max_attempts,
       c.checkpoint, m.guest_id, m.butler, m.token_hashes, m.total, m.done, m.message,
       m.epoch, m.reason, m.created_at, m.updated_at
FROM claimed c JOIN moved m ON m.id = c.ticket_id;

-- save_progress --
-- Throttled checkpoints of running attempts, many in one statement. Fenced per
-- row on (job, attempt, executing); keeps a job's checkpoint when none is given.
-- The rows come as one JSON array of [job, attempt, done, total, message,
-- checkpoint]; a JSON null checkpoint is none. One row back, the count of
-- tickets saved (not a row per ticket for the server to decode).
WITH progress AS (
    SELECT (r->>0)::bigint AS job, (r->>1)::integer AS attempt, (r->>2)::integer AS done,
           (r->>3)::integer AS total, r->>4 AS message,
           nullif(r->5, 'null'::jsonb) AS checkpoint
    FROM jsonb_array_elements(%(rows)s::jsonb) AS r
), saved AS (
    UPDATE jobs SET checkpoint = coalesce(p.checkpoint, jobs.checkpoint)
    FROM progress p
    WHERE jobs.id = p.job AND jobs.attempt = p.attempt AND jobs.state = 'executing'
    RETURNING jobs.ticket_id, p.done, p.total, p.message
), updated AS (
    UPDATE tickets t SET done = saved.done, total = saved.total, message = saved.message,
                         updated_at = now()
    FROM saved WHERE t.id = saved.ticket_id
    RETURNING 1
)
SELECT count(*) AS saved FROM updated;

-- complete_job --
-- Fenced on (job, attempt, executing): job, ticket, audit and the service
-- record in one statement, exactly once. No row back: the attempt was stale.
WITH job AS (
    UPDATE jobs SET state = 'completed', completed_at = now()
    WHERE id = %(job)s AND attempt = %(attempt)s AND state = 'executing'
    RETURNING ticket_id, attempt
), ticket AS (
    UPDATE tickets t SET status = 'completed', done = %(done)s, total = %(total)s,
                         message = %(message)s, updated_at = now(), finished_at = now()
    FROM job WHERE t.id = job.ticket_id
    RETURNING t.id, t.guest_id, t.service, t.created_at
), audit AS (
    INSERT INTO ticket_events (ticket_id, status, attempt)
    SELECT ticket_id, 'completed', attempt FROM job
), record AS (
    INSERT INTO service_records (ticket_id, guest_id, service, outcome, done, total,
                                 amount_cents, currency, attempts, result, started_at)
    SELECT ticket.id, ticket.guest_id, ticket.service, 'completed', %(done)s, %(total)s,
           %(amount_cents)s, %(currency)s, job.attempt, %(result)s, ticket.created_at
    FROM ticket, job
    RETURNING *
)
SELECT ticket_id, guest_id, service, outcome, done, total, amount_cents, currency,
       attempts, result, reason, started_at, finished_at,
       (extract(epoch FROM finished_at - started_at) * 1000)::bigint AS duration_ms
FROM record;

-- retry_job --
-- Fenced: the attempt failed; run again at now() + %(delay_seconds)s.
WITH job AS (
    UPDATE jobs SET state = 'retryable', node = NULL,
                    scheduled_at = now() + make_interval(secs => %(delay_seconds)s),
                    errors = errors || jsonb_build_array(%(error)s::jsonb)
    WHERE id = %(job)s AND attempt = %(attempt)s AND state = 'executing'
    RETURNING ticket_id, attempt, scheduled_at
), ticket AS (
    UPDATE tickets t SET status = 'retrying', reason = %(reason)s, updated_at = now()
    FROM job WHERE t.id = job.ticket_id
), audit AS (
    INSERT INTO ticket_events (ticket_id, status, attempt, detail)
    SELECT ticket_id, 'retrying', attempt, %(reason)s FROM job
)
SELECT ticket_id, scheduled_at FROM job;

-- end_ticket --
-- End a ticket as failed or cancelled with its record, in one statement.
-- Fenced on the job not having ended, and, when %(attempt)s is not null, on
-- that attempt still executing. Failed jobs are discarded (errors kept).
WITH job AS (
    UPDATE jobs SET
        state = CASE WHEN %(outcome)s = 'cancelled' THEN 'cancelled' ELSE 'discarded' END,
        cancelled_at = CASE WHEN %(outcome)s = 'cancelled' THEN now() END,
        discarded_at = CASE WHEN %(outcome)s = 'failed' THEN now() END,
        errors = CASE WHEN %(error)s::jsonb IS NULL THEN errors
                      ELSE errors || jsonb_build_array(%(error)s::jsonb) END
    WHERE ticket_id = %(id)s AND state NOT IN ('completed', 'discarded', 'cancelled')
      AND (%(attempt)s::integer IS NULL OR (attempt = %(attempt)s AND state = 'executing'))
    RETURNING ticket_id, attempt
), stop AS (
    SELECT pg_notify('grandhotel_stop', ticket_id::text) FROM job
), ticket AS (
    UPDATE tickets t SET status = %(outcome)s, reason = %(reason)s, done = %(done)s,
                         updated_at = now(), finished_at = now()
    FROM job WHERE t.id = job.ticket_id
    RETURNING t.id, t.guest_id, t.service, t.total, t.created_at
), audit AS (
    INSERT INTO ticket_events (ticket_id, status, attempt, detail)
    SELECT ticket_id, %(outcome)s, attempt, %(reason)s FROM job
), record AS (
    INSERT INTO service_records (ticket_id, guest_id, service, outcome, done, total,
                                 amount_cents, currency, attempts, reason, started_at)
    SELECT ticket.id, ticket.guest_id, ticket.service, %(outcome)s, %(done)s, ticket.total,
           %(amount_cents)s, %(currency)s, job.attempt, %(reason)s, ticket.created_at
    FROM ticket, job
    RETURNING *
)
SELECT ticket_id, guest_id, service, outcome, done, total, amount_cents, currency,
       attempts, result, reason, started_at, finished_at,
       (extract(epoch FROM finished_at - started_at) * 1000)::bigint AS duration_ms,
       (SELECT count(*) FROM stop) AS stopped
FROM record;

-- guest_history --
-- A guest's service records, newest first.
SELECT ticket_id, guest_id, service, outcome, done, total, amount_cents, currency,
       attempts, result, reason, started_at, finished_at,
       (extract(epoch FROM finished_at - started_at) * 1000)::bigint AS duration_ms
FROM service_records WHERE guest_id = %(guest)s
ORDER BY finished_at DESC, id DESC LIMIT %(limit)s;

-- heartbeat --
-- This node is alive.
INSERT INTO nodes (name) VALUES (%(node)s)
ON CONFLICT (name) DO UPDATE SET heartbeat_at = now();

-- deregister_node --
-- This node leaves (graceful stop).
DELETE FROM nodes WHERE name = %(node)s;

-- rescue_orphans --
-- Jobs executing under a node that is this one restarting (%(node)s, at start-up
-- only) or whose heartbeat is older than %(stale_seconds)s go back to available.
-- The next claim starts a new attempt, which fences off the old one's writes.
WITH rescued AS (
    UPDATE jobs SET state = 'available', node = NULL, scheduled_at = now()
    WHERE state = 'executing' AND (
        node IS NULL OR node = %(restarting_node)s OR node NOT IN (
            SELECT name FROM nodes
            WHERE heartbeat_at > now() - make_interval(secs => %(stale_seconds)s)))
    RETURNING id, queue
), wake AS (
    SELECT pg_notify('grandhotel_jobs', queue) FROM (SELECT DISTINCT queue FROM rescued) q
)
SELECT (SELECT count(*) FROM rescued) AS rescued, (SELECT count(*) FROM wake) AS woken;

-- ping --
-- The safe answers.
SELECT 1;

-- migrations_lock --
-- Serialises concurrent migration runs until the transaction ends.
SELECT pg_advisory_xact_lock(%(key)s);

-- migrations_table --
-- The book of applied migrations.
CREATE TABLE IF NOT EXISTS grandhotel_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- migrations_applied --
-- Versions already applied.
SELECT version FROM grandhotel_migrations;

-- migration_done --
-- Note one migration as applied.
INSERT INTO grandhotel_migrations (version, name) VALUES (%(version)s, %(name)s);

-- listen --
-- Subscribe this connection to job wake-ups and to tickets ended elsewhere.
LISTEN grandhotel_jobs;
LISTEN grandhotel_stop;

-- release_jobs --
-- Graceful stop: this node's executing jobs go back to available. The attempt
-- stays counted for fencing, and max_attempts grows by one so that a release
-- is not counted against the job as a failure.
WITH released AS (
    UPDATE jobs SET state = 'available', node = NULL, scheduled_at = now(),
                    max_attempts = max_attempts + 1
    WHERE state = 'executing' AND node = %(node)s
    RETURNING ticket_id, attempt, queue
), moved AS (
    UPDATE tickets t SET status = 'queued', updated_at = now()
    FROM released WHERE t.id = released.ticket_id
), audit AS (
    INSERT INTO ticket_events (ticket_id, status, attempt, detail)
    SELECT ticket_id, 'queued', attempt, 'released by a node shutting down' FROM released
), wake AS (
    SELECT pg_notify('grandhotel_jobs', queue) FROM (SELECT DISTINCT queue FROM released) q
)
SELECT (SELECT count(*) FROM released) AS released, (SELECT count(*) FROM wake) AS woken;

-- The heartbeat: one statement renewing the holds this process knows it has (those whose
-- grant it saw, and those handed to its live waiters: a grant whose reply was lost is left to
-- end within the liveness window), and the queue tickets
-- of its waiting calls (only those still waiting: a ticket whose call is gone, because its
-- removal failed or its reply was lost with a connection, is deleted instead, and the next
-- waiter notified), reporting holds that lapsed. A ticket is deleted only once no longer
-- fresh (expiring within 3/4 of the liveness window), so a call registering while the
-- list of live waiters was taken keeps its place.
WITH holds AS (
  UPDATE {locks} SET expires_at = now() + make_interval(secs => %(liveness)s::float8)
  WHERE owner = %(owner)s AND expires_at > now()
    AND (key_hash = ANY(%(held)s::bytea[]) OR granted = ANY(%(live)s::uuid[]))
    AND (granted IS NULL OR NOT granted = ANY(%(orphans)s::uuid[])) RETURNING 1
),
tickets AS (
  UPDATE {waiters} SET expires_at = now() + make_interval(secs => %(liveness)s::float8)
  WHERE owner = %(owner)s AND waiter = ANY(%(live)s::uuid[]) AND expires_at > now() RETURNING 1
),
stale AS (
  DELETE FROM {waiters} WHERE owner = %(owner)s AND NOT (waiter = ANY(%(live)s::uuid[]))
    AND (expires_at < now() + make_interval(secs => %(liveness)s::float8 * 0.75)
      OR waiter = ANY(%(orphans)s::uuid[]))
  RETURNING key_hash
),
-- Holds handed to calls of this process that had already given up (their withdrawal
-- failed): freed, and the key's waiters notified.
freed AS (
  UPDATE {locks} SET expires_at = '-infinity', owner = NULL, granted = NULL
  WHERE granted = ANY(%(orphans)s::uuid[]) AND expires_at > now() RETURNING key_hash
),
freed_notified AS (
  SELECT pg_notify(%(channel)s, encode(substring(key_hash FROM 1 FOR 12), 'hex')) FROM freed
),
stale_notified AS (
  SELECT pg_notify(%(channel)s, encode(substring(s.key_hash FROM 1 FOR 12), 'hex'))
  FROM (SELECT DISTINCT key_hash FROM stale) s
  WHERE NOT EXISTS (SELECT 1 FROM {locks} l WHERE l.key_hash = s.key_hash AND l.expires_at > now())
),
lost AS (
  UPDATE {locks} SET owner = NULL WHERE owner = %(owner)s AND expires_at <= now()
  RETURNING key, key_hash = ANY(%(held)s::bytea[]) AS known
)
SELECT (SELECT count(*) FROM holds), (SELECT count(*) FROM tickets),
  (SELECT array_agg(key) FILTER (WHERE known) FROM lost),
  (SELECT count(*) FROM stale), (SELECT count(*) FROM stale_notified), (SELECT count(*) FROM freed_notified)

-- One attempt of a waiting call, one statement: take the key if it is free or expired and
-- nobody is queued ahead of us (or re-grant it to its holder); when the call is granted,
-- its queue ticket goes in the same statement; when it is refused, it takes a ticket
-- (once). The token of a grant is max(the key's last token + 1, the server clock in
-- microseconds, the table's high-water mark + 1): it never regresses, needs no WAL.
WITH ahead AS (
  SELECT count(*) AS n, min(w.expires_at) AS until FROM {waiters} w
  WHERE w.key_hash = %(key_hash)s AND w.expires_at > now() AND w.waiter IS DISTINCT FROM %(waiter)s::uuid
    AND (%(ticket)s::int8 IS NULL OR (w.ticket, w.waiter) < (%(ticket)s::int8, %(waiter)s::uuid))
    AND {alive}
),
cur AS (SELECT holder, expires_at FROM {locks} WHERE key_hash = %(key_hash)s AND expires_at > now()),
ins AS (
  INSERT INTO {locks} AS l (key_hash, key, holder, token, owner, ttl, acquired_at, expires_at)
  {grant_row}
  WHERE (SELECT n FROM ahead) = 0 OR EXISTS (SELECT 1 FROM cur WHERE holder = %(holder)s)
  {grant_conflict}
  RETURNING token, acquired_at, expires_at
),
reg AS (
  INSERT INTO {waiters} (waiter, key_hash, ticket, owner, expires_at, session, holder, ttl, span)
  SELECT %(waiter)s::uuid, %(key_hash)s, {clock}, %(owner)s::uuid,
    now() + make_interval(secs => %(liveness)s::float8),
    %(session)s::int8, %(holder)s, %(ttl)s::float8, coalesce(%(ttl)s::float8, %(liveness)s::float8)
  WHERE %(waiter)s::uuid IS NOT NULL AND %(ticket)s::int8 IS NULL AND NOT EXISTS (SELECT 1 FROM ins)
  ON CONFLICT (waiter) DO NOTHING RETURNING ticket
),
gone AS (DELETE FROM {waiters} WHERE waiter = %(waiter)s::uuid AND EXISTS (SELECT 1 FROM ins) RETURNING 1),
-- Granted to a queued call while other calls wait: say so as a release's hand-off would
-- (payload: key hash, waiter id, token, expiry), so that the waiters behind it learn when
-- this hold ends; it may end without a release (hold_timeout, a dead process), which
-- nothing else announces. (Counted in the result: a SELECT-only CTE runs only if referenced.)
say AS (
  SELECT pg_notify(%(channel)s, %(payload)s::text || ' ' || %(waiter)s::text || ' ' || i.token::text
    || ' ' || extract(epoch FROM i.expires_at)::float8::text)
  FROM ins i WHERE EXISTS (SELECT 1 FROM gone) AND EXISTS (
    SELECT 1 FROM {waiters} w WHERE w.key_hash = %(key_hash)s AND w.expires_at > now()
      AND w.waiter <> %(waiter)s::uuid)
),
-- Refused: mark the key, so that the release that frees it notifies (the mark is on the row
-- the release locks, so it sees it even if it began before this). A row committed after
-- this statement's snapshot cannot be marked here: the caller then looks again at once.
flag AS (
  UPDATE {locks} SET wake = true WHERE key_hash = %(key_hash)s
  AND NOT EXISTS (SELECT 1 FROM ins) RETURNING 1
)
SELECT i.token, extract(epoch FROM i.acquired_at)::float8, extract(epoch FROM i.expires_at)::float8,
  c.holder, extract(epoch FROM c.expires_at - now())::float8,
  a.n, extract(epoch FROM a.until - now())::float8,
  coalesce((SELECT ticket FROM reg),
    (SELECT ticket FROM {waiters} WHERE %(ticket)s::int8 IS NULL AND waiter = %(waiter)s::uuid)),
  (SELECT count(*) FROM gone), (SELECT count(*) FROM flag), (SELECT count(*) FROM say)
FROM (SELECT 1) AS one LEFT JOIN ins i ON true LEFT JOIN cur c ON true LEFT JOIN ahead a ON true

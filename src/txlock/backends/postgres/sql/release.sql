-- Release hands the lock straight to the oldest live queued call, if any (its ticket
-- carries holder, hold_timeout and span): the row changes holder, takes a new token and
-- the ticket goes, all in this statement, and the NOTIFY tells the waiter's process that
-- it holds the lock (payload: key hash, waiter id, token, expiry), so the waiter needs no
-- statement of its own. With nobody queued the key is freed (the row stays: its token is
-- the key's high-water mark), and a NOTIFY says so only if the row is marked (wake): some
-- caller sleeps on it. cur locks the row and reads the mark from its latest version, so a
-- mark committed after this statement began still counts. Row locks go lock row first,
-- then ticket, as in a waiter's own attempt. No row returned: not ours (see holder.sql).
WITH cur AS (
  SELECT wake FROM {locks} WHERE key_hash = %(key_hash)s AND holder = %(holder)s AND expires_at > now()
  FOR UPDATE
),
next_call AS (
  SELECT w.waiter, w.holder, w.ttl, w.span, w.owner FROM {waiters} w
  WHERE EXISTS (SELECT 1 FROM cur) AND w.key_hash = %(key_hash)s AND w.expires_at > now()
    AND w.holder IS NOT NULL AND {alive}
  ORDER BY w.ticket, w.waiter LIMIT 1 FOR UPDATE OF w
),
rel AS (
  UPDATE {locks} l SET
    holder = coalesce(n.holder, l.holder),
    token = CASE WHEN n.waiter IS NULL THEN l.token ELSE greatest(l.token + 1, {clock}) END,
    owner = CASE WHEN n.waiter IS NOT NULL AND n.ttl IS NULL THEN n.owner END,
    ttl = CASE WHEN n.waiter IS NULL THEN l.ttl ELSE n.ttl END,
    acquired_at = CASE WHEN n.waiter IS NULL THEN l.acquired_at ELSE now() END,
    expires_at = CASE WHEN n.waiter IS NULL THEN '-infinity'::timestamptz
      ELSE now() + make_interval(secs => coalesce(n.span, %(liveness)s::float8)) END,
    granted = n.waiter, wake = n.waiter IS NOT NULL AND l.wake
  FROM (SELECT 1) AS one LEFT JOIN next_call n ON true
  WHERE l.key_hash = %(key_hash)s AND l.holder = %(holder)s AND l.expires_at > now()
  RETURNING n.waiter, l.token, l.expires_at
),
gone AS (DELETE FROM {waiters} WHERE waiter = (SELECT waiter FROM rel)),
say AS (
  SELECT pg_notify(%(channel)s, CASE WHEN r.waiter IS NULL THEN %(payload)s::text
    ELSE %(payload)s::text || ' ' || r.waiter::text || ' ' || r.token::text
      || ' ' || extract(epoch FROM r.expires_at)::float8::text END)
  FROM rel r WHERE r.waiter IS NOT NULL OR (SELECT wake FROM cur)
)
SELECT r.waiter, (SELECT count(*) FROM say) FROM rel r

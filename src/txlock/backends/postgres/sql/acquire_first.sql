-- The first attempt of a call (no waiter yet): the same grant as acquire.sql when nobody is
-- queued, and nothing else, so the uncontended path is one plain INSERT. A refusal returns
-- no row; the caller then registers a waiter and asks with acquire.sql (which also
-- re-grants to the holder while others are queued).
INSERT INTO {locks} AS l (key_hash, key, holder, token, owner, ttl, acquired_at, expires_at)
{grant_row}
WHERE NOT EXISTS (
  SELECT 1 FROM {waiters} w WHERE w.key_hash = %(key_hash)s AND w.expires_at > now() AND {alive}
)
{grant_conflict}
RETURNING token, extract(epoch FROM acquired_at)::float8, extract(epoch FROM expires_at)::float8

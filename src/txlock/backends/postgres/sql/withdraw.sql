-- A waiter leaving the queue lets the next one in when the key is free; if a release
-- handed it the lock meanwhile, the hold is returned (the caller keeps or releases it).
WITH deleted AS (DELETE FROM {waiters} WHERE waiter = %(waiter)s RETURNING 1),
notified AS (
  SELECT pg_notify(%(channel)s, %(payload)s) FROM deleted
  WHERE NOT EXISTS (SELECT 1 FROM {locks} WHERE key_hash = %(key_hash)s AND expires_at > now())
),
handed AS (
  SELECT token, extract(epoch FROM expires_at)::float8 AS expires FROM {locks}
  WHERE key_hash = %(key_hash)s AND granted = %(waiter)s::uuid AND expires_at > now()
)
SELECT (SELECT count(*) FROM deleted), (SELECT count(*) FROM notified), (SELECT token FROM handed),
  (SELECT expires FROM handed)

-- The janitor (every minute per process and store): rows released or expired long ago go,
-- their highest token folded into the table's high-water mark in the same statement, so a
-- key taken again later still gets a larger token; dead queue tickets go too.
WITH swept AS (DELETE FROM {locks} WHERE expires_at < now() - interval '60 seconds' RETURNING token),
tickets AS (DELETE FROM {waiters} WHERE expires_at < now() - interval '60 seconds' RETURNING 1),
mark AS (
  UPDATE {versions} SET hwm = greatest(hwm, (SELECT max(token) FROM swept))
  WHERE name = %(name)s AND EXISTS (SELECT 1 FROM swept) RETURNING 1
)
SELECT (SELECT count(*) FROM swept), (SELECT count(*) FROM tickets), (SELECT count(*) FROM mark)

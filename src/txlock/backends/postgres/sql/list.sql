-- The live holds whose key lies in [low, high): the index on the key's first bytes narrows
-- the range, the whole key decides.
SELECT l.key, l.holder, l.token, extract(epoch FROM l.acquired_at)::float8,
  CASE WHEN l.ttl IS NULL THEN NULL ELSE extract(epoch FROM l.expires_at)::float8 END,
  (SELECT count(*) FROM {waiters} w WHERE w.key_hash = l.key_hash AND w.expires_at > now() AND {alive})
FROM {locks} l WHERE l.expires_at > now()
  AND substring(l.key FROM 1 FOR {indexed}) >= %(low_indexed)s
  AND (%(high_indexed)s::bytea IS NULL OR substring(l.key FROM 1 FOR {indexed}) < %(high_indexed)s::bytea)
  AND l.key >= %(low)s AND (%(high)s::bytea IS NULL OR l.key < %(high)s::bytea)
ORDER BY l.key

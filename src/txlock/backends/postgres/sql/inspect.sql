SELECT l.key, l.holder, l.token, extract(epoch FROM l.acquired_at)::float8,
  CASE WHEN l.ttl IS NULL THEN NULL ELSE extract(epoch FROM l.expires_at)::float8 END,
  (SELECT count(*) FROM {waiters} w WHERE w.key_hash = l.key_hash AND w.expires_at > now() AND {alive})
FROM {locks} l WHERE l.key_hash = %(key_hash)s AND l.expires_at > now()

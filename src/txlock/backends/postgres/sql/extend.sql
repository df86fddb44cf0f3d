-- Renew one grant (by token) to end ttl seconds from now, or bind it to this process.
UPDATE {locks} SET
  expires_at = now() + make_interval(secs => coalesce(%(ttl)s::float8, %(liveness)s::float8)),
  ttl = %(ttl)s::float8, owner = CASE WHEN %(ttl)s::float8 IS NULL THEN %(owner)s::uuid END
WHERE key_hash = %(key_hash)s AND holder = %(holder)s AND token = %(token)s AND expires_at > now()
RETURNING token, extract(epoch FROM acquired_at)::float8, extract(epoch FROM expires_at)::float8

-- Fragment of acquire.sql and acquire_first.sql: the key's row exists. Taken if expired or
-- released (new token), re-granted to its holder (same token, new expiry), else untouched.
ON CONFLICT (key_hash) DO UPDATE SET
  token = CASE WHEN l.expires_at > now() THEN l.token ELSE greatest(l.token + 1, EXCLUDED.token) END,
  acquired_at = CASE WHEN l.expires_at > now() THEN l.acquired_at ELSE EXCLUDED.acquired_at END,
  key = EXCLUDED.key, holder = EXCLUDED.holder, owner = EXCLUDED.owner, ttl = EXCLUDED.ttl,
  expires_at = EXCLUDED.expires_at, granted = NULL
WHERE l.expires_at <= now() OR (l.holder = EXCLUDED.holder AND l.key = EXCLUDED.key)

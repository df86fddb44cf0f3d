UPDATE {locks} SET expires_at = '-infinity', owner = NULL, granted = NULL
WHERE key_hash = %(key_hash)s AND expires_at > now()
RETURNING pg_notify(%(channel)s, %(payload)s)

-- A registered wait_for_lock caller marks the key it sleeps on (see acquire.sql).
UPDATE {locks} SET wake = true WHERE key_hash = %(key_hash)s AND expires_at > now()
RETURNING holder, extract(epoch FROM expires_at - now())::float8

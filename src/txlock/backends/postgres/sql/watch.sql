SELECT holder, extract(epoch FROM expires_at - now())::float8
FROM {locks} WHERE key_hash = %(key_hash)s AND expires_at > now()

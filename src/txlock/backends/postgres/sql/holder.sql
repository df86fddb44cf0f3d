SELECT holder FROM {locks} WHERE key_hash = %(key_hash)s AND expires_at > now()

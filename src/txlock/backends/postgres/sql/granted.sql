-- A call that gave up while a release handed it the lock finds the hold here.
SELECT token, extract(epoch FROM expires_at)::float8 FROM {locks}
WHERE key_hash = %(key_hash)s AND granted = %(waiter)s::uuid AND expires_at > now()

-- Forget a queued waiter and/or a watcher entry.
-- ARGV: waiter id ('' = none), watcher entry ('' = none), liveness ms, key.
-- Reply: nil | {1, token, now ms, life ms} when the lock had been handed to that waiter.
local hold_key, queue_key, entries_key, watchers_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
--#include functions
local waiter_id, entry, liveness, lock_key = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if entry ~= '' then redis.call('SREM', watchers_key, entry) end
if waiter_id == '' then return nil end
if redis.call('ZREM', queue_key, waiter_id) == 1 then
  redis.call('HDEL', entries_key, waiter_id)
  if not redis.call('HGET', hold_key, 'holder') and redis.call('EXISTS', queue_key) == 1 then
    vacate(liveness, lock_key)
  end
  return nil
end
local fields = redis.call('HMGET', hold_key, 'wid', 'token', 'holder')
if fields[1] == waiter_id and fields[3] then return {1, tonumber(fields[2]), now, redis.call('PTTL', hold_key)} end
return nil

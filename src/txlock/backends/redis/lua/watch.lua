-- Is the key free? If not and a watcher entry is given, register it to be told when it is.
-- ARGV: watcher entry ('' = none), liveness ms, key. Reply: nil (free) | {holder, pttl ms}.
local hold_key, queue_key, entries_key, watchers_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local entry, liveness, lock_key = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local current = redis.call('HGET', hold_key, 'holder')
if not current and redis.call('EXISTS', queue_key) == 0 then return nil end
--#include functions
if not current then
  current = vacate(liveness, lock_key)
  if not current then return nil end
end
local pttl = redis.call('PTTL', hold_key)
if entry ~= '' then
  redis.call('SADD', watchers_key, entry)
  local keep = liveness
  if pttl > 0 then keep = keep + pttl end
  redis.call('PEXPIRE', watchers_key, keep)
end
return {current, pttl}

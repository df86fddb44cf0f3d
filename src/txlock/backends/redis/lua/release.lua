-- Free the key if ARGV[1] holds it, handing it to the longest waiter if there is one.
-- ARGV: holder, liveness ms, key. Reply: 0 (released, or not held) | the other holder.
local hold_key, queue_key, entries_key, watchers_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local current = redis.call('HGET', hold_key, 'holder')
if current and current ~= ARGV[1] then return current end
if redis.call('EXISTS', queue_key, watchers_key) == 0 then
  -- The record keeps the last token until the old hold's expiry.
  if current then redis.call('HDEL', hold_key, 'holder', 'at', 'ttl', 'wid') end
  return 0
end
--#include functions
vacate(tonumber(ARGV[2]), ARGV[3])
return 0

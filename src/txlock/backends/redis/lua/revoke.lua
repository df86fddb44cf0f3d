-- Withdraw the grant `token` of `holder` (one the replicas did not confirm), handing the key
-- on like a release. A later grant of the key is left alone.
-- ARGV: holder, token, liveness ms, key. Reply: 1 withdrawn | 0 that grant no longer holds the key.
local hold_key, queue_key, entries_key, watchers_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local fields = redis.call('HMGET', hold_key, 'holder', 'token')
if fields[1] ~= ARGV[1] or fields[2] ~= ARGV[2] then return 0 end
if redis.call('EXISTS', queue_key, watchers_key) == 0 then
  redis.call('HDEL', hold_key, 'holder', 'at', 'ttl', 'wid')
  return 1
end
--#include functions
vacate(tonumber(ARGV[3]), ARGV[4])
return 1

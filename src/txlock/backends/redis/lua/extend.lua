-- Renew the grant `token` of `holder`.
-- ARGV: holder, token, ttl ms (0 = bound to its process), liveness ms.
-- Reply: {1, token, now ms, life ms} | nil when that grant no longer holds the key.
local hold_key = KEYS[1]
local holder, token, ttl, liveness = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local fields = redis.call('HMGET', hold_key, 'holder', 'token')
if fields[1] ~= holder or fields[2] ~= token then return nil end
local life = ttl
if ttl == 0 then life = liveness end
redis.call('HSET', hold_key, 'ttl', ARGV[3])
redis.call('PEXPIRE', hold_key, life)
local clock = redis.call('TIME')
return {1, tonumber(token), clock[1] * 1000 + math.floor(clock[2] / 1000), life}

-- Free the key whoever holds it. ARGV: liveness ms, key. Reply: 1 if it was held, else 0.
local hold_key, queue_key, entries_key, watchers_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
--#include functions
local liveness, lock_key = tonumber(ARGV[1]), ARGV[2]
local held = redis.call('HGET', hold_key, 'holder')
if held or redis.call('EXISTS', queue_key) == 1 then vacate(liveness, lock_key) end
if held then return 1 end
return 0

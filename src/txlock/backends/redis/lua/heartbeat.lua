-- Renew the process-bound holds whose grant is still the one this process holds.
-- KEYS: hold keys. ARGV: per key (token, liveness ms).
-- Reply: the 1-based indexes of the holds that are lost.
local lost = {}
for index, hold_key in ipairs(KEYS) do
  local fields = redis.call('HMGET', hold_key, 'token', 'ttl')
  if fields[1] == ARGV[2 * index - 1] and fields[2] == '0' then
    redis.call('PEXPIRE', hold_key, ARGV[2 * index])
  else
    lost[#lost + 1] = index
  end
end
return lost

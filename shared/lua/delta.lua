-- include: outbound
-- Append a `delta` event for the lease holder only. `mark` names the delta
-- (its attempt and seq): the same delta written twice -- a retried call whose
-- reply was lost -- appends once.
-- KEYS: lease, conv, out, meta
-- ARGV: token, mark, new epoch, out maxlen, channel, user keys' lifetime ms, fields...
-- Returns 1 (written, now or before), or 0 when the lease is not the caller's.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[2], F.conv_delta) == ARGV[2] then return 1 end
redis.call('HSET', KEYS[2], F.conv_delta, ARGV[2])
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
append_event(KEYS[3], KEYS[4], ARGV[5], ARGV[3], tonumber(ARGV[4]), fields, tonumber(ARGV[6]))
return 1

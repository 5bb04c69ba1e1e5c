-- include: admission
-- Admit one connection of a client address if it has fewer than `cap` live ones.
-- KEYS: ip_connections   ARGV: connection id, now (ms), expiry (ms), cap, key ttl (ms)
-- Returns {1, count with this one} if admitted, {0, count} if the cap is reached.
drop_expired(KEYS[1], ARGV[2])
local count = redis.call('ZCARD', KEYS[1])
if count >= tonumber(ARGV[4]) then return {0, count} end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {1, count + 1}

-- include: admission
-- Admit one connection of a user's device if the user has fewer than `cap`
-- devices connected. A device that already holds a slot takes it over (its
-- old connection is most likely dead: a reconnect is never refused because of
-- it); the old connection's id is returned so its gateway can close it.
-- KEYS: devices, device_owners
-- ARGV: device, connection id, now (ms), expiry (ms), cap, key ttl (ms)
-- Returns {1, previous connection id or ''} if admitted, {0, count} if the cap is reached.
local expired = drop_expired(KEYS[1], ARGV[3])
if #expired > 0 then redis.call('HDEL', KEYS[2], unpack(expired)) end
local previous = redis.call('HGET', KEYS[2], ARGV[1])
if not previous then
  local count = redis.call('ZCARD', KEYS[1])
  if count >= tonumber(ARGV[5]) then return {0, count} end
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return {1, previous or ''}

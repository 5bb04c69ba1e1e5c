-- include: admission
-- Renew the slot of a live connection of a device. If the slot expired (its
-- gateway could not renew it in time) the connection is admitted again,
-- within the cap; if another connection of the device took the slot over,
-- nothing changes.
-- KEYS: devices, device_owners
-- ARGV: device, connection id, now (ms), expiry (ms), cap, key ttl (ms)
-- Returns 1 if the connection holds its slot, 0 if it lost it (taken over, or the cap is reached).
local owner = redis.call('HGET', KEYS[2], ARGV[1])
if owner and owner ~= ARGV[2] then return 0 end
if not owner then
  local expired = drop_expired(KEYS[1], ARGV[3])
  if #expired > 0 then redis.call('HDEL', KEYS[2], unpack(expired)) end
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[5]) then return 0 end
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 1

-- Free a device's slot when its connection ends -- unless another connection
-- of the device took it over meanwhile (then the slot is that one's).
-- KEYS: devices, device_owners   ARGV: device, connection id
-- Returns 1 if the slot was freed, 0 if it was not this connection's.
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1

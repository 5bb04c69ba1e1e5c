-- One more attempt at the entry being retried in place (its last attempt
-- failed in the graph). `seen` is the attempt the caller ran: the count moves
-- on from it once, so the call repeated (a lost reply) does not count twice.
-- KEYS: conv   ARGV: entry id, seen
-- Returns the attempt now begun.
local state = redis.call('HMGET', KEYS[1], F.conv_attempt_of, F.conv_attempts)
if state[1] ~= ARGV[1] then
  redis.call('HSET', KEYS[1], F.conv_attempt_of, ARGV[1], F.conv_attempts, 1)
  return 1
end
local attempts = tonumber(state[2] or '0')
if attempts == tonumber(ARGV[2]) then return redis.call('HINCRBY', KEYS[1], F.conv_attempts, 1) end
return attempts

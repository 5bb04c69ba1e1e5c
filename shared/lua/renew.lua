-- Extend a lease, only if it is still the caller's.
-- KEYS: lease   ARGV: token, ttl ms   Returns 1, or 0 when it is not.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0

-- Shared by the admission scripts: a sorted set of slots scored by their
-- expiry (ms). A gateway renews the slots of its live connections; the slots
-- of a gateway that died (kill -9) are past their expiry and are dropped here
-- by the next admission (ZRANGEBYSCORE/ZREMRANGEBYSCORE on -inf..now).
-- Returns the members dropped (so a companion hash can drop them too).
local function drop_expired(slots, now)
  local expired = redis.call('ZRANGEBYSCORE', slots, '-inf', now)
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  end
  return expired
end

-- include: outbound
-- Where a user's outbound stream stands, for a `hello`: its epoch (the life
-- starts here if the stream is new), the newest trimmed and newest ids, the
-- id after which the newest `window` events lie, and the device's stored
-- offset. Only ids go back: the window's entries are read here, never sent.
-- KEYS: out, meta, offsets   ARGV: new epoch, window, device, lifetime ms of a new life (0: for ever)
-- Returns {epoch, trimmed, last, window start, stored offset or ''}.
local epoch = ensure_life(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[4]))
local trimmed = redis.call('HGET', KEYS[2], F.meta_trimmed) or '0-0'
local n = tonumber(ARGV[2])
local last = trimmed
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest > 0 then last = newest[1][1] end
local start = trimmed
if redis.call('XLEN', KEYS[1]) > n then
  local recent = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', n + 1)
  start = recent[n + 1][1]
end
local stored = redis.call('HGET', KEYS[3], ARGV[3]) or ''
return {epoch, trimmed, last, start, stored}

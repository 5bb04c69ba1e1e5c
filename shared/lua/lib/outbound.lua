-- The outbound stream: its life (epoch) and every append to it.
--
-- An epoch names one life of the stream: it is created with the stream, so a
-- stream lost with Redis data (or deleted) comes back with a new epoch and
-- every old position is reported `recovered: false`.

-- A life begun here expires with the user's other keys (`keep_ms`, 0: never;
-- the accept script refreshes them all, see keep_user in accept.lua).
local function ensure_life(out, meta, new_epoch, keep_ms)
  if redis.call('EXISTS', out) == 0 then
    -- XGROUP CREATE MKSTREAM creates an empty stream: the life starts now.
    redis.call('XGROUP', 'CREATE', out, 'sb-life', '$', 'MKSTREAM')
    redis.call('HSET', meta, F.meta_epoch, new_epoch, F.meta_trimmed, '0-0')
    if keep_ms > 0 then
      redis.call('PEXPIRE', out, keep_ms)
      redis.call('PEXPIRE', meta, keep_ms)
    end
    return new_epoch
  end
  local epoch = redis.call('HGET', meta, F.meta_epoch)
  if not epoch then
    -- The stream survived its metadata: start a new life, and count every
    -- retained entry as possibly preceded by lost ones.
    local first = redis.call('XRANGE', out, '-', '+', 'COUNT', 1)
    local trimmed = '0-0'
    if #first > 0 then trimmed = first[1][1] end
    redis.call('HSET', meta, F.meta_epoch, new_epoch, F.meta_trimmed, trimmed)
    epoch = new_epoch
  end
  return epoch
end

-- Append an event (a flat field list), trim to `maxlen` while recording the
-- newest trimmed id, and publish the notice {prev, id, fields} on `channel`:
-- a fanout whose connections are all at `prev` delivers it without a read.
-- A stream created here lives `keep_ms` (0: for ever) unless refreshed.
-- Returns {id, epoch}.
local function append_event(out, meta, channel, new_epoch, maxlen, fields, keep_ms)
  local epoch = ensure_life(out, meta, new_epoch, keep_ms)
  local newest = redis.call('XREVRANGE', out, '+', '-', 'COUNT', 1)
  local prev = '0-0'
  if #newest > 0 then prev = newest[1][1] end
  local id = redis.call('XADD', out, '*', unpack(fields))
  local len = redis.call('XLEN', out)
  -- Trim in batches of maxlen/16 to amortise; remember the newest trimmed id.
  if len > maxlen + math.floor(maxlen / 16) then
    local old = redis.call('XRANGE', out, '-', '+', 'COUNT', len - maxlen)
    redis.call('HSET', meta, F.meta_trimmed, old[#old][1])
    redis.call('XTRIM', out, 'MAXLEN', maxlen)
  end
  redis.call('PUBLISH', channel, cmsgpack.pack({prev, id, fields}))
  return {id, epoch}
end

-- Store a device's offset (`<epoch>|<id>`). Offsets only move forward within
-- one epoch: a late ack from an old connection must not make a reconnect
-- replay events the device already has.
-- KEYS: offsets   ARGV: device, epoch, id   Returns 1 if stored, 0 if older.
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local epoch, id = string.match(cur, '^(.*)|(.*)$')
  if epoch == ARGV[2] then
    local ams, aseq = parse(id)
    local bms, bseq = parse(ARGV[3])
    if ams and (ams > bms or (ams == bms and aseq >= bseq)) then return 0 end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3])
return 1

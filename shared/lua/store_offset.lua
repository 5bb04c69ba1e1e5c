-- Store a device's offset (`<epoch>|<id>`). Offsets only move forward within
-- one epoch: a late ack from an old connection must not make a reconnect
-- replay events the device already has.
-- KEYS: offsets   ARGV: device, epoch, id, lifetime ms of a new key (0: for ever)
-- Returns 1 if stored, 0 if older.
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
-- A new device's first offset may create the key: it ages with the user's
-- other keys (accept.lua refreshes them all while the user sends).
if redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3]) == 1 and tonumber(ARGV[4]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1

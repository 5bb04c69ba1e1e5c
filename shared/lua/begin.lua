-- include: entries
-- Take a conversation in one round trip: its lease, where it stands (`done`,
-- the thread's latest checkpoint pointer) and its next entry, attempt begun.
-- KEYS: lease, conv, inbound, latest checkpoint pointer
-- ARGV: token, lease ttl ms, resumed (entry id or '')
-- Returns {'busy', holder} or {'ok', done, latest, <next_entry's answer>...}.
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local holder = redis.call('GET', KEYS[1]) or ''
  if holder ~= ARGV[1] then return {'busy', holder} end
  -- Our own token: this very call, repeated after its reply was lost.
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local done = redis.call('HGET', KEYS[2], F.conv_done) or '0-0'
local latest = redis.call('GET', KEYS[4]) or ''
local found = next_entry(KEYS[3], KEYS[2], done, ARGV[1], ARGV[3])
return {'ok', done, latest, unpack(found)}

-- include: outbound, entries, checkpoint
-- A turn's reply, exactly once: written only by the lease holder, only if
-- `done` is where the turn started; its checkpoint (if the graph wrote one)
-- stored in the same atomic step, its entry removed from the inbound stream.
-- Then the next entry, in the same round trip; with none left the lease is
-- released here too, and the conversation's keys start to age: they expire
-- after `retention` ms unless a message comes (accept.lua keeps them while
-- anything waits).
-- KEYS: lease, conv, out, meta, inbound, checkpoint, latest checkpoint pointer, usage
-- ARGV: token, expected done, new done, new epoch, out maxlen, channel,
--       checkpoint document ('' for none), checkpoint ttl ms, retention ms (0: keep),
--       event fields...
-- A cancelled entry (at or before the conversation's `cancel` mark: a
-- `cancel`, or a `send` with `if_busy: interrupt`, came while it ran) is
-- committed as a `cancelled` event, whatever kind the worker passed, and
-- without its checkpoint: the graph's state stays as if it never ran.
-- Returns {'ok', reply id, cancelled ('1'/'0'), <next_entry's answer>...}, {'already', holds lease
-- ('1'/'0')} when `done` is already the new one (this call repeated after its
-- reply was lost, or another worker committed it), {'stale', done} when `done`
-- moved elsewhere, or {'lease'} when the lease is not the caller's.
local conv = redis.call('HMGET', KEYS[2], F.conv_done, F.conv_cancel)
local done = conv[1] or '0-0'
local holds = redis.call('GET', KEYS[1]) == ARGV[1]
if done == ARGV[3] then return {'already', holds and '1' or '0'} end
if done ~= ARGV[2] then return {'stale', done} end
if not holds then return {'lease'} end
local cancelled = conv[2] and not id_after(ARGV[3], conv[2])
local fields = {}
local retention = tonumber(ARGV[9])
for i = 10, #ARGV do fields[#fields + 1] = ARGV[i] end
if cancelled then
  for i = 1, #fields, 2 do
    if fields[i] == F.event_kind then
      -- A clear is never cancelled: the conversation moved to its next generation when it was accepted.
      if fields[i + 1] == 'cleared' then cancelled = false else fields[i + 1] = 'cancelled' end
    end
  end
end
if ARGV[7] ~= '' and not cancelled then store_checkpoint(KEYS[6], KEYS[7], ARGV[7], ARGV[8]) end
local appended = append_event(KEYS[3], KEYS[4], ARGV[6], ARGV[4], tonumber(ARGV[5]), fields,
  math.floor(retention * 1.5))
redis.call('HSET', KEYS[2], F.conv_done, ARGV[3])
redis.call('HDEL', KEYS[2], F.conv_attempt_of, F.conv_attempts, F.conv_attempt_token, F.conv_delta)
answered(KEYS[5], KEYS[8], ARGV[3])
local found = next_entry(KEYS[5], KEYS[2], ARGV[3], ARGV[1], '')
if found[1] == 'none' then
  redis.call('DEL', KEYS[1])
  if retention > 0 then
    redis.call('PEXPIRE', KEYS[2], retention)
    redis.call('PEXPIRE', KEYS[5], retention)
  end
end
return {'ok', appended[1], cancelled and '1' or '0', unpack(found)}

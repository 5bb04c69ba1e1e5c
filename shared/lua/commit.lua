-- include: outbound, entries, checkpoint
-- A turn's reply, exactly once: written only by the lease holder, only if
-- `done` is where the turn started; its checkpoint (if the graph wrote one)
-- stored in the same atomic step, its entry removed from the inbound stream.
-- Then the next entry, in the same round trip; with none left the lease is
-- released here too, and the conversation's keys start to age: they expire
-- after `retention` ms unless a message comes (accept.lua keeps them while
-- anything waits).
-- KEYS: lease, conv, out, meta, inbound, checkpoint, the thread's latest checkpoint pointer, usage,
--       the staged checkpoint, the thread's checkpoint index
-- ARGV: token, expected done, new done, new epoch, out maxlen, channel,
--       checkpoint ('1': the caller staged it at the staged key, renamed into
--       place here; '': none), checkpoint ttl ms, retention ms (0: keep),
--       interrupt id ('' : the turn ended), base ('' : not known, '-' : no checkpoint
--       before the turn, else the pointer's value before it), event fields...
-- A cancelled entry (at or before the conversation's `cancel` mark: a
-- `cancel`, or a `send` with `if_busy: interrupt`, came while it ran) is
-- committed as a `cancelled` event, whatever kind the worker passed, and
-- without its checkpoint: the graph's state stays as if it never ran. A
-- checkpoint the turn stored before (an interrupt's) is undone by putting the
-- latest pointer back to the base.
-- An interrupt (human-in-the-loop: the graph called LangGraph's `interrupt`;
-- its checkpoint is stored already, with the interrupt's pending writes) is
-- an event too, but the entry stays waiting: `done` stays, the conversation
-- records the interrupt, and the entry -- with what is queued behind it -- is
-- held until a `resume` (resume.lua). The lease is released.
-- Returns {'ok', reply id, cancelled ('1'/'0'), <next_entry's answer>...}, {'already', holds lease
-- ('1'/'0')} when `done` is already the new one (this call repeated after its
-- reply was lost, or another worker committed it), {'stale', done} when `done`
-- moved elsewhere, or {'lease'} when the lease is not the caller's.
-- A staged checkpoint is placed or deleted: a refused commit leaves none.
local staged = ARGV[7] ~= ''
local function refuse(answer)
  if staged then redis.call('DEL', KEYS[9]) end
  return answer
end
local conv = redis.call('HMGET', KEYS[2], F.conv_done, F.conv_cancel, F.conv_interrupt, F.conv_base)
local done = conv[1] or '0-0'
local holds = redis.call('GET', KEYS[1]) == ARGV[1]
if done == ARGV[3] then return refuse({'already', holds and '1' or '0'}) end
-- An interrupt already recorded: this call repeated after its reply was lost (it released the lease).
if ARGV[10] ~= '' and string.match(conv[3] or '', '^(%S+ %S+)') == ARGV[3] .. ' ' .. ARGV[10] then
  return refuse({'already', holds and '1' or '0'})
end
if done ~= ARGV[2] then return refuse({'stale', done}) end
if not holds then return refuse({'lease'}) end
local cancelled = conv[2] and not id_after(ARGV[3], conv[2])
local fields = {}
local retention = tonumber(ARGV[9])
local ttl_ms = tonumber(ARGV[8])
for i = 12, #ARGV do fields[#fields + 1] = ARGV[i] end
-- This entry was interrupted before (a resume ran it on): the base recorded then holds.
local held_here = conv[3] and string.match(conv[3], '^(%S+)') == ARGV[3]
local base = held_here and conv[4] or (ARGV[11] ~= '' and ARGV[11] or nil)
local interrupting = ARGV[10] ~= ''
if cancelled then
  for i = 1, #fields, 2 do
    if fields[i] == F.event_kind then
      -- A clear is never cancelled: the conversation moved to its next generation when it was accepted.
      if fields[i + 1] == 'cleared' then cancelled = false else fields[i + 1] = 'cancelled' end
    end
  end
end
if cancelled then
  interrupting = false
  if base == '-' then
    redis.call('DEL', KEYS[7])
  elseif base then
    redis.call('SET', KEYS[7], base)
    if ttl_ms > 0 then redis.call('PEXPIRE', KEYS[7], ttl_ms) end
  end
end
if staged then
  if cancelled then redis.call('DEL', KEYS[9]) else place_checkpoint(KEYS[9], KEYS[6], KEYS[7], ARGV[8], KEYS[10]) end
end
local appended = append_event(KEYS[3], KEYS[4], ARGV[6], ARGV[4], tonumber(ARGV[5]), fields,
  math.floor(retention * 1.5))
if interrupting then
  local text, cmid = '', ''
  for i = 1, #fields, 2 do
    if fields[i] == F.event_text then text = fields[i + 1] elseif fields[i] == F.event_cmid then cmid = fields[i + 1] end
  end
  local record = {F.conv_interrupt, ARGV[3] .. ' ' .. ARGV[10] .. ' ' .. cmid, F.conv_interrupt_text, text}
  if base then record[#record + 1] = F.conv_base; record[#record + 1] = base end
  redis.call('HSET', KEYS[2], unpack(record))
  redis.call('HDEL', KEYS[2], F.conv_resume, F.conv_attempt_of, F.conv_attempts, F.conv_attempt_token, F.conv_delta)
  -- Held until resumed: the lease goes, and the keys age as an idle conversation's.
  redis.call('DEL', KEYS[1])
  if retention > 0 then
    redis.call('PEXPIRE', KEYS[2], retention)
    redis.call('PEXPIRE', KEYS[5], retention)
  end
  return {'ok', appended[1], '0', 'none'}
end
redis.call('HSET', KEYS[2], F.conv_done, ARGV[3])
redis.call('HDEL', KEYS[2], F.conv_attempt_of, F.conv_attempts, F.conv_attempt_token, F.conv_delta,
  F.conv_interrupt, F.conv_interrupt_text, F.conv_resume, F.conv_base)
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

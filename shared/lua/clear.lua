-- Clear a conversation (`clear`), in order with its messages: an inbound
-- entry of kind `clear` goes in after those waiting, and the conversation
-- moves to its next generation -- a new, empty LangGraph thread -- for every
-- message accepted from now on. The worker reaching the entry writes the
-- `cleared` event and deletes the old thread's checkpoints; the messages
-- queued before it still run on the old thread, in order.
-- With a client_msg_id it is done once per id (within the dedup ttl), as a send.
-- KEYS: conv, inbound, usage, dedup key of client_msg_id (or any key of the user's)
-- ARGV: device, retention ms (0: keep), renotice ms, client_msg_id ('' : none), dedup ttl s
-- Returns {'ok', entry id, notice (1/0)}, {'repeat', entry id, 0} or {'unknown'} for a
-- conversation with no message.
if ARGV[4] ~= '' then
  local known = redis.call('GET', KEYS[4])
  if known then return {'repeat', known, 0} end
end
local conv = redis.call('HMGET', KEYS[1], F.conv_count, F.conv_done, F.conv_last, F.conv_gen, F.conv_noticed)
if not conv[1] then return {'unknown'} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local done, last = conv[2] or '0-0', conv[3]
local idle = not last or last == done
local gen = tonumber(conv[4] or '0')
local id = redis.call('XADD', KEYS[2], '*', F.in_kind, 'clear', F.in_cmid, '', F.in_dev, ARGV[1], F.in_text, '',
  F.in_ts, string.format('%d', now), F.in_gen, string.format('%d', gen))
redis.call('HSET', KEYS[1], F.conv_last, id, F.conv_gen, gen + 1)
if ARGV[4] ~= '' then redis.call('SET', KEYS[4], id, 'EX', ARGV[5]) end
local notice = (idle or now - tonumber(conv[5] or '0') >= tonumber(ARGV[3])) and 1 or 0
if notice == 1 then redis.call('HSET', KEYS[1], F.conv_noticed, now) end
if idle and tonumber(ARGV[2]) > 0 then
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
end
redis.call('HINCRBY', KEYS[3], F.usage_waiting, 1)
return {'ok', id, notice}

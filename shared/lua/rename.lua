-- include: outbound
-- Rename a conversation (`rename`): its title, and a `renamed` event to every
-- device. Only a conversation that has had a message can be renamed.
-- KEYS: conv, out, meta
-- ARGV: conversation, title (sealed as every stored text), new epoch, out maxlen, channel,
--       user keys' lifetime ms (0: keep), device
-- Returns {'ok', event id} or {'unknown'}.
if not redis.call('HGET', KEYS[1], F.conv_count) then return {'unknown'} end
redis.call('HSET', KEYS[1], F.conv_title, ARGV[2])
local t = redis.call('TIME')
local ts = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local appended = append_event(KEYS[2], KEYS[3], ARGV[5], ARGV[3], tonumber(ARGV[4]), {
  F.event_kind, 'renamed', F.event_conv, ARGV[1], F.event_text, ARGV[2], F.event_cmid, '', F.event_dev, ARGV[7],
  F.event_ts, ts, F.event_in, ''}, tonumber(ARGV[6]))
return {'ok', appended[1]}

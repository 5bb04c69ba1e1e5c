-- include: outbound
-- Accept a `send`: append it to the inbound stream once per client_msg_id
-- (within DEDUP_TTL), and echo it to the user's devices as a `user` event.
-- KEYS: dedup, inbound, out, meta
-- ARGV: conversation, client_msg_id, device, text, ts, new epoch, out maxlen,
--       in maxlen, dedup ttl s, channel
-- Returns {inbound id, 1} for a new message, {inbound id it got then, 0} for a repeat.
local known = redis.call('GET', KEYS[1])
if known then return {known, 0} end
local in_id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[8], '*',
  F.in_conv, ARGV[1], F.in_cmid, ARGV[2], F.in_dev, ARGV[3], F.in_text, ARGV[4], F.in_ts, ARGV[5])
redis.call('SET', KEYS[1], in_id, 'EX', ARGV[9])
append_event(KEYS[3], KEYS[4], ARGV[10], ARGV[6], tonumber(ARGV[7]), {
  F.event_kind, 'user', F.event_conv, ARGV[1], F.event_text, ARGV[4], F.event_cmid, ARGV[2],
  F.event_dev, ARGV[3], F.event_ts, ARGV[5], F.event_in, in_id})
return {in_id, 1}

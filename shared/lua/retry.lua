-- Queue a dead-lettered message again (`switchboard deadletters retry`): its
-- whole copy, kept in the user's dead-copies stream, becomes a new entry of
-- its conversation's inbound stream, as if just accepted, and the copy is
-- removed, so a second retry of the same dead letter finds nothing to queue.
-- No quota is checked and no `user` event is echoed: the devices saw the
-- message when it was first accepted; its reply will carry the same
-- client_msg_id. The caller sends the work notice.
-- KEYS: dead copies, inbound, conv, conversations, usage
-- ARGV: copy id, conversation, the inbound id it had, retention ms (0: keep)
-- Returns {'queued', new inbound id}, {'gone'} when no such copy is kept, or
-- {'mismatch', conversation, entry} when the copy is another message's.
local copy = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #copy == 0 then return {'gone'} end
local f = {}
for i = 1, #copy[1][2], 2 do f[copy[1][2][i]] = copy[1][2][i + 1] end
if f[F.dead_conv] ~= ARGV[2] or f[F.dead_entry] ~= ARGV[3] then
  return {'mismatch', f[F.dead_conv] or '', f[F.dead_entry] or ''}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local conv = redis.call('HMGET', KEYS[3], F.conv_done, F.conv_last)
local idle = not conv[2] or conv[2] == (conv[1] or '0-0')
local in_id = redis.call('XADD', KEYS[2], '*', F.in_cmid, f[F.dead_cmid] or '', F.in_dev, f[F.dead_dev] or '',
  F.in_text, f[F.dead_text] or '', F.in_ts, string.format('%d', now), F.in_graph, f[F.dead_graph] or '')
redis.call('HSET', KEYS[3], F.conv_last, in_id)
if idle and tonumber(ARGV[4]) > 0 then
  -- Something waits now: the conversation's keys must not expire (as accept.lua).
  redis.call('PERSIST', KEYS[3])
  redis.call('PERSIST', KEYS[2])
end
redis.call('ZADD', KEYS[4], now, ARGV[2])
redis.call('HINCRBY', KEYS[5], F.usage_waiting, 1)
redis.call('XDEL', KEYS[1], ARGV[1])
return {'queued', in_id}

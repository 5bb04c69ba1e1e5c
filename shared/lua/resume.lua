-- include: outbound, ids
-- Answer a turn's interrupt (human-in-the-loop: `resume`): the value is
-- recorded once for the interrupted entry, which the next worker to take the
-- conversation runs on with it, and every device gets a `resumed` event.
-- KEYS: conv, inbound, out, meta
-- ARGV: client_msg_id of the interrupted turn, interrupt id ('' : whichever is pending),
--       value (JSON, sealed as stored text), device, new epoch, out maxlen, channel,
--       user keys' ttl ms (0: keep), conversation id
-- Returns {'ok', entry id} (the caller sends the work notice), {'none'} when no
-- interrupt of that message is pending (none at all, another message's, another
-- interrupt id, or the turn was cancelled), or {'already', entry id} when it was resumed.
local conv = redis.call('HMGET', KEYS[1], F.conv_interrupt, F.conv_resume, F.conv_cancel)
if not conv[1] then return {'none'} end
local entry, iid, cmid = string.match(conv[1], '^(%S+) (%S+) (%S*)$')
if cmid ~= ARGV[1] or (ARGV[2] ~= '' and ARGV[2] ~= iid) then return {'none'} end
if conv[3] and not id_after(entry, conv[3]) then return {'none'} end
if conv[2] then return {'already', entry} end
redis.call('HSET', KEYS[1], F.conv_resume, ARGV[3])
-- It waits for a worker now: the conversation's keys must not expire (as accept.lua).
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
local t = redis.call('TIME')
append_event(KEYS[3], KEYS[4], ARGV[7], ARGV[5], tonumber(ARGV[6]), {
  F.event_kind, 'resumed', F.event_conv, ARGV[9], F.event_text, ARGV[3], F.event_cmid, ARGV[1],
  F.event_dev, ARGV[4], F.event_ts, string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)),
  F.event_in, entry}, tonumber(ARGV[8]))
return {'ok', entry}

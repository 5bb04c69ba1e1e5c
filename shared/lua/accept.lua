-- include: outbound, ids
-- Accept a `send`: check the user's quotas, append the message to its
-- conversation's inbound stream once per client_msg_id (within DEDUP_TTL),
-- and echo it to the user's devices as a `user` event.
--
-- It also says whether the caller must send a work notice. A conversation
-- with messages already waiting has a notice queued or a drain under way,
-- which takes this message too (a drain runs until its commit finds nothing
-- left, and that commit comes after this script), so a new message needs a
-- notice only when nothing was waiting. Two safety nets cover a notice lost
-- with the gateway that was to send it (its client never got `accepted`):
-- the client's repeat of a message still waiting, and a new message to a
-- conversation whose last notice is old, ask for one when no drain holds
-- the conversation -- each at most once per `renotice` ms. So repeats cost
-- this one script and, at most, a notice every `renotice` ms.
--
-- Retention (`retention` ms, 0: keep for ever): a conversation's keys never
-- expire while a message waits -- they are made persistent here when it
-- had nothing waiting, and the commit that answers its last message sets
-- them to expire `retention` ms later. The user's keys (events, positions,
-- quota state, conversation index) live 1.5 x `retention`, refreshed here
-- when less than `retention` is left -- once per half-lifetime, not per
-- message -- so an idle user's keys go between `retention` and 1.5 x
-- `retention` after their last message.
--
-- KEYS: dedup, inbound, out, meta, conv, conversations, usage, lease, offsets
-- ARGV: conversation, client_msg_id, device, text, new epoch, out maxlen,
--       dedup ttl s, channel, sends per minute, max conversations,
--       max messages per conversation, max waiting, renotice ms, inbound key prefix,
--       text bytes per minute, the text's size in bytes, retention ms,
--       the graph the send names ('' none), the default graph,
--       if_busy ('enqueue', 'interrupt', 'reject'), the cancel channel, the user,
--       the conversation's default title (the start of this text; '' : the caller
--       stores it after a first message, sealed: only then is the seal's cost paid),
--       fork ('' : a send; 'edit', 'regenerate'), the message replaced (its client_msg_id),
--       the checkpoint to fork from ('' : the empty state), the id of the message run
--       again ('' : a new one), the `done` and generation the fork was found at
-- A fork (`edit`, `regenerate`: time travel) needs the conversation idle, and
-- as it was when the gateway found the checkpoint to fork from (`done` and the
-- generation unchanged: no turn ran since), else `busy`. It tells the devices
-- first with a `replaced` event (`text`: 'message' for an edit, which replaces
-- the message and all after it; 'reply' for a regenerate, which keeps it), then,
-- for an edit, the new message's `user` event; a regenerate is not a new
-- message (the conversation's message count stays).
-- `if_busy` applies while the conversation has messages waiting (one runs, or
-- is about to): `reject` refuses this one (`busy`, before any quota counts);
-- `interrupt` marks every waiting entry cancelled (the conversation's `cancel`
-- mark, as cancel.lua) and tells the workers, so this one runs next. A turn
-- waiting for a `resume` (human-in-the-loop) is busy too: `enqueue` waits
-- behind it until it is resumed and answered.
-- The conversation's graph is fixed by its first message (the one named, or
-- the default) and written into each of its entries for the worker; a later
-- message naming another is refused (`graph_mismatch`). A conversation from
-- before graphs were chosen runs the default.
-- The text is stored as given: sealed (shared/encryption.py) when encryption
-- at rest is on, so the byte quota counts the size the caller passes, the
-- UTF-8 size of the plain text, not that of its ciphertext.
-- Limits of 0 are off.
-- Returns {'new', id, notice (1/0), first message (1/0)}, {'repeat', id, notice} or
-- {'limit', error code, retry after ms (0: not by waiting)}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local conv = redis.call('HMGET', KEYS[5], F.conv_done, F.conv_last, F.conv_count, F.conv_noticed,
  F.conv_renoticed, F.conv_graph, F.conv_cancel, F.conv_gen, F.conv_interrupt)
local done, last = conv[1] or '0-0', conv[2]
local count = tonumber(conv[3] or '0')
local renotice = tonumber(ARGV[13])
local function overdue(field_value)
  return now - tonumber(field_value or '0') >= renotice and redis.call('EXISTS', KEYS[8]) == 0
end

local known = redis.call('GET', KEYS[1])
if known then
  if id_after(known, done) and overdue(conv[5]) then
    redis.call('HSET', KEYS[5], F.conv_renoticed, now)
    return {'repeat', known, 1}
  end
  return {'repeat', known, 0}
end

local requested, graph = ARGV[18], conv[6]
if not graph and count > 0 then graph = ARGV[19] end
if graph then
  if requested ~= '' and requested ~= graph then return {'limit', 'graph_mismatch', 0} end
else
  graph = requested ~= '' and requested or ARGV[19]
end
local busy = last and last ~= done
if busy and ARGV[20] == 'reject' then return {'limit', 'busy', 0} end
local fork = ARGV[24]
if fork ~= '' and (busy or done ~= ARGV[28] or (conv[8] or '0') ~= ARGV[29]) then return {'limit', 'busy', 0} end

-- Quotas, cheapest first; nothing is written until all pass.
local usage = redis.call('HMGET', KEYS[7], F.usage_tat, F.usage_btat, F.usage_waiting, F.usage_kept)
-- GCRA (the generic cell rate algorithm): `cost` units of a `per_minute`
-- allowance, spread evenly, with bursts of up to the whole minute's. Returns
-- the new theoretical arrival time, or nil and the ms to wait.
local function gcra(stored, per_minute, cost)
  local interval = 60000 * cost / per_minute
  local tat = math.max(tonumber(stored or '0'), now) + interval
  local wait = tat - now - 60000
  if wait > 0 then return nil, math.ceil(wait) end
  return tat
end
local per_minute, byte_rate, text_bytes = tonumber(ARGV[9]), tonumber(ARGV[15]), tonumber(ARGV[16])
local tat, btat, wait
if per_minute > 0 then
  tat, wait = gcra(usage[1], per_minute, 1)
  if not tat then return {'limit', 'rate_limited', wait} end
end
if byte_rate > 0 then
  -- A text larger than a minute's allowance could never pass: it is
  -- refused outright (MAX_TEXT_LENGTH should sit below it).
  if text_bytes > byte_rate then return {'limit', 'rate_limited', 0} end
  btat, wait = gcra(usage[2], byte_rate, text_bytes)
  if not btat then return {'limit', 'rate_limited', wait} end
end
local retention = tonumber(ARGV[17])
local max_convs = tonumber(ARGV[10])
if count == 0 and max_convs > 0 and not redis.call('ZSCORE', KEYS[6], ARGV[1]) then
  -- The index scores each conversation by its last message; one idle for
  -- longer than `retention` has expired (or soon will): it no longer counts.
  if retention > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', '(' .. (now - retention)) end
  if redis.call('ZCARD', KEYS[6]) >= max_convs then return {'limit', 'too_many_conversations', 0} end
end
local max_messages = tonumber(ARGV[11])
if max_messages > 0 and count >= max_messages then return {'limit', 'conversation_full', 0} end
local max_waiting = tonumber(ARGV[12])
if max_waiting > 0 and tonumber(usage[3] or '0') >= max_waiting then
  -- The counter is the fast path; the streams are the truth (each holds
  -- only its waiting entries). Recount before refusing, so a counter that
  -- drifted (data restored, keys deleted by hand) cannot lock a user out.
  -- Bounded by MAX_SESSIONS_PER_USER lengths read.
  local waiting = 0
  for _, c in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do
    waiting = waiting + redis.call('XLEN', ARGV[14] .. c)
  end
  redis.call('HSET', KEYS[7], F.usage_waiting, waiting)
  if waiting >= max_waiting then return {'limit', 'backlog_full', 0} end
end

local ts = string.format('%d', now)
local entry = {F.in_cmid, ARGV[2], F.in_dev, ARGV[3], F.in_text, ARGV[4], F.in_ts, ts, F.in_graph, graph,
  F.in_gen, conv[8] or '0'}
if fork ~= '' then
  for _, v in ipairs({F.in_kind, fork, F.in_base, ARGV[26]}) do entry[#entry + 1] = v end
  if ARGV[27] ~= '' then entry[#entry + 1] = F.in_human; entry[#entry + 1] = ARGV[27] end
end
local in_id = redis.call('XADD', KEYS[2], '*', unpack(entry))
redis.call('SET', KEYS[1], in_id, 'EX', ARGV[7])
local idle = not last or last == done
local notice = 0
-- A turn held by an interrupt has no drain under way: stopping it needs one.
if idle or overdue(conv[4]) or (busy and ARGV[20] == 'interrupt' and conv[9]) then notice = 1 end
local progress = {F.conv_last, in_id, F.conv_count, fork == 'regenerate' and count or count + 1}
if notice == 1 then progress[#progress + 1] = F.conv_noticed; progress[#progress + 1] = now end
if not conv[6] then progress[#progress + 1] = F.conv_graph; progress[#progress + 1] = graph end
if count == 0 then
  -- The first message: when the conversation began, and a title until `rename` gives one.
  progress[#progress + 1] = F.conv_created; progress[#progress + 1] = ts
  if ARGV[23] ~= '' then progress[#progress + 1] = F.conv_title; progress[#progress + 1] = ARGV[23] end
end
redis.call('HSET', KEYS[5], unpack(progress))
if idle and retention > 0 then
  -- Something waits now: the conversation's keys must not expire.
  redis.call('PERSIST', KEYS[5])
  redis.call('PERSIST', KEYS[2])
end
redis.call('ZADD', KEYS[6], now, ARGV[1])
redis.call('HINCRBY', KEYS[7], F.usage_waiting, 1)
if busy and ARGV[20] == 'interrupt' then
  local mark = conv[7]
  if not mark or id_after(last, mark) then redis.call('HSET', KEYS[5], F.conv_cancel, last) end
  redis.call('PUBLISH', ARGV[21], ARGV[22] .. ' ' .. ARGV[1] .. ' ' .. last)
end
local keep = math.floor(retention * 1.5)
local set = {}
if tat then set[#set + 1] = F.usage_tat; set[#set + 1] = string.format('%d', math.ceil(tat)) end
if btat then set[#set + 1] = F.usage_btat; set[#set + 1] = string.format('%d', math.ceil(btat)) end
local refresh = retention > 0 and tonumber(usage[4] or '0') - now < retention
if refresh then set[#set + 1] = F.usage_kept; set[#set + 1] = string.format('%d', now + keep) end
if #set > 0 then redis.call('HSET', KEYS[7], unpack(set)) end
if fork ~= '' then
  append_event(KEYS[3], KEYS[4], ARGV[8], ARGV[5], tonumber(ARGV[6]), {
    F.event_kind, 'replaced', F.event_conv, ARGV[1], F.event_text, fork == 'edit' and 'message' or 'reply',
    F.event_cmid, ARGV[25], F.event_dev, ARGV[3], F.event_ts, ts, F.event_in, in_id}, keep)
end
if fork ~= 'regenerate' then
  append_event(KEYS[3], KEYS[4], ARGV[8], ARGV[5], tonumber(ARGV[6]), {
    F.event_kind, 'user', F.event_conv, ARGV[1], F.event_text, ARGV[4], F.event_cmid, ARGV[2],
    F.event_dev, ARGV[3], F.event_ts, ts, F.event_in, in_id}, keep)
end
if refresh then
  for _, key in ipairs({KEYS[3], KEYS[4], KEYS[6], KEYS[7], KEYS[9]}) do redis.call('PEXPIRE', key, keep) end
end
return {'new', in_id, notice, count == 0 and 1 or 0}

-- include: ids
-- A conversation's inbound entries and the attempts at them.

-- Count an attempt at entry `id` durably *before* it runs, so a message that
-- crashes the worker process is counted too (a poison message). Not counted
-- again: the same call repeated (same lease `token`: a retried command whose
-- reply was lost), and the retry of an attempt this process gave up because
-- Redis went away (`resumed` names the entry; not the message's fault). A
-- process that dies loses that memory, and its successor's attempt counts.
-- Returns the attempt's number and whether the entry is cancelled (its id
-- at or before the conversation's `cancel` mark): the worker then commits a
-- `cancelled` event without running it.
local function begin_attempt(conv, id, token, resumed)
  local state = redis.call('HMGET', conv, F.conv_attempt_of, F.conv_attempts, F.conv_attempt_token, F.conv_cancel)
  local cancelled = (state[4] and not id_after(id, state[4])) and '1' or '0'
  if state[1] == id then
    if state[3] == token or id == resumed then
      redis.call('HSET', conv, F.conv_attempt_token, token)
      return tonumber(state[2] or '1'), cancelled
    end
    redis.call('HSET', conv, F.conv_attempt_token, token)
    return redis.call('HINCRBY', conv, F.conv_attempts, 1), cancelled
  end
  redis.call('HSET', conv, F.conv_attempt_of, id, F.conv_attempts, 1, F.conv_attempt_token, token)
  return 1, cancelled
end

-- The conversation's next entry after `after`, with an attempt at it begun.
-- The stream is the conversation's own and holds only entries still waiting,
-- so this reads exactly one entry, however long the conversation or the
-- user's other conversations are. Returns {'entry', id, cmid, dev, text,
-- attempt, graph, cancelled ('1'/'0'), kind ('' or 'clear'), generation} or {'none'}.
local function next_entry(inbound, conv, after, token, resumed)
  local entries = redis.call('XRANGE', inbound, '(' .. after, '+', 'COUNT', 1)
  if #entries == 0 then return {'none'} end
  local e = entries[1]
  local f = {}
  for i = 1, #e[2], 2 do f[e[2][i]] = e[2][i + 1] end
  local attempt, cancelled = begin_attempt(conv, e[1], token, resumed)
  return {'entry', e[1], f[F.in_cmid] or '', f[F.in_dev] or '', f[F.in_text] or '', attempt,
          f[F.in_graph] or '', cancelled, f[F.in_kind] or '', f[F.in_gen] or '0'}
end

-- Entry `id` is answered: remove it and everything before it from the
-- conversation's stream (a reply is never re-run once committed), and count
-- one message less waiting for the user.
local function answered(inbound, usage, id)
  redis.call('XTRIM', inbound, 'MINID', id_successor(id))
  if redis.call('HINCRBY', usage, F.usage_waiting, -1) < 0 then
    redis.call('HSET', usage, F.usage_waiting, 0)
  end
end

-- include: ids
-- A conversation's inbound entries and the attempts at them.

-- Count an attempt at entry `id` durably *before* it runs, so a message that
-- crashes the worker process is counted too (a poison message). Not counted
-- again: the same call repeated (same lease `token`: a retried command whose
-- reply was lost), and the retry of an attempt this process gave up because
-- Redis went away (`resumed` names the entry; not the message's fault). A
-- process that dies loses that memory, and its successor's attempt counts.
-- `state` is the conversation's {attempt_of, attempts, attempt_token}.
-- Returns the attempt's number.
local function begin_attempt(conv, id, token, resumed, state)
  if state[1] == id then
    if state[3] == token or id == resumed then
      redis.call('HSET', conv, F.conv_attempt_token, token)
      return tonumber(state[2] or '1')
    end
    redis.call('HSET', conv, F.conv_attempt_token, token)
    return redis.call('HINCRBY', conv, F.conv_attempts, 1)
  end
  redis.call('HSET', conv, F.conv_attempt_of, id, F.conv_attempts, 1, F.conv_attempt_token, token)
  return 1
end

-- The conversation's next entry after `after`, with an attempt at it begun.
-- The stream is the conversation's own and holds only entries still waiting,
-- so this reads exactly one entry, however long the conversation or the
-- user's other conversations are.
-- An entry whose turn was interrupted (human-in-the-loop: the conversation's
-- `interrupt` names it) is held until a `resume` gives its value -- and with
-- it everything queued behind it: {'none'}. Cancelled, it is returned (to be
-- written as `cancelled`).
-- An entry is cancelled when its id is at or before the conversation's
-- `cancel` mark: the worker then commits a `cancelled` event without running it.
-- Returns {'entry', id, cmid, dev, text, attempt, graph, cancelled ('1'/'0'),
-- kind ('' , 'clear', 'edit', 'regenerate'), generation, resume value ('' : none), interrupt id ('' : none),
-- the checkpoint a fork runs on, the id of the message a regenerate runs again} or {'none'}.
local function next_entry(inbound, conv, after, token, resumed)
  local entries = redis.call('XRANGE', inbound, '(' .. after, '+', 'COUNT', 1)
  if #entries == 0 then return {'none'} end
  local e = entries[1]
  local state = redis.call('HMGET', conv, F.conv_attempt_of, F.conv_attempts, F.conv_attempt_token, F.conv_cancel,
    F.conv_interrupt, F.conv_resume)
  local cancelled = state[4] and not id_after(e[1], state[4])
  local resume, interrupt_id = '', ''
  if state[5] then
    local held, iid = string.match(state[5], '^(%S+) (%S+)')
    if held == e[1] then
      if not state[6] and not cancelled then return {'none'} end
      if state[6] then resume, interrupt_id = state[6], iid end
    end
  end
  local f = {}
  for i = 1, #e[2], 2 do f[e[2][i]] = e[2][i + 1] end
  local attempt = begin_attempt(conv, e[1], token, resumed, state)
  return {'entry', e[1], f[F.in_cmid] or '', f[F.in_dev] or '', f[F.in_text] or '', attempt,
          f[F.in_graph] or '', cancelled and '1' or '0', f[F.in_kind] or '', f[F.in_gen] or '0', resume, interrupt_id,
          f[F.in_base] or '', f[F.in_human] or ''}
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

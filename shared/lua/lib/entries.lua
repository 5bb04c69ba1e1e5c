-- A conversation's inbound entries and the attempts at them.

-- Count an attempt at entry `id` durably *before* it runs, so a message that
-- crashes the worker process is counted too (a poison message). Not counted
-- again: the same call repeated (same lease `token`: a retried command whose
-- reply was lost), and the retry of an attempt this process gave up because
-- Redis went away (`resumed` names the entry; not the message's fault). A
-- process that dies loses that memory, and its successor's attempt counts.
local function begin_attempt(conv, id, token, resumed)
  local state = redis.call('HMGET', conv, F.conv_attempt_of, F.conv_attempts, F.conv_attempt_token)
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

-- The conversation's next inbound entry after `after`, within one page of the
-- user's inbound stream, with an attempt at it begun. Returns
-- {'entry', id, cmid, dev, text, attempt}, {'more', last id scanned} (a full
-- page of other conversations' entries) or {'none'}.
local function next_entry(inbound, conv, after, conversation, page, token, resumed)
  local entries = redis.call('XRANGE', inbound, '(' .. after, '+', 'COUNT', page)
  for _, e in ipairs(entries) do
    local f = {}
    for i = 1, #e[2], 2 do f[e[2][i]] = e[2][i + 1] end
    if f[F.in_conv] == conversation then
      return {'entry', e[1], f[F.in_cmid] or '', f[F.in_dev] or '', f[F.in_text] or '',
              begin_attempt(conv, e[1], token, resumed)}
    end
  end
  if #entries >= page then return {'more', entries[#entries][1]} end
  return {'none'}
end

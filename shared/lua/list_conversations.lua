-- A page of the user's conversations, newest first by their last message
-- (the index's score), after the cursor (`before`: the score and id of the
-- last one listed before; ties on the score follow the index's own order,
-- which lists equal scores by id, descending). Conversations whose progress
-- hash has expired (retention) are left out. Reads at most the index's
-- size (bounded by MAX_SESSIONS_PER_USER) and one hash per conversation listed.
-- KEYS: conversations (the user's index)
-- ARGV: conversation key prefix, before score ('' : from the newest), before id, limit
-- Returns {more ('1'/'0'), id, score, title, created, count, graph, pending interrupt's client_msg_id,
-- its event text (sealed), ...}: eight per conversation ('' where there is none).
local max = ARGV[2] == '' and '+inf' or ARGV[2]
local limit = tonumber(ARGV[4])
local out, found, offset = {'0'}, 0, 0
while true do
  local page = redis.call('ZREVRANGEBYSCORE', KEYS[1], max, '-inf', 'WITHSCORES', 'LIMIT', offset, 100)
  if #page == 0 then break end
  for i = 1, #page, 2 do
    local id, score = page[i], page[i + 1]
    local seen = ARGV[2] ~= '' and score == ARGV[2] and id >= ARGV[3]
    if not seen then
      local c = redis.call('HMGET', ARGV[1] .. id, F.conv_count, F.conv_title, F.conv_created, F.conv_graph,
        F.conv_interrupt, F.conv_interrupt_text)
      if c[1] then
        if found == limit then out[1] = '1'; return out end
        found = found + 1
        local pending = ''
        if c[5] then pending = c[6] or '' end
        local cmid = c[5] and string.match(c[5], '^%S+ %S+ (%S*)$') or ''
        for _, v in ipairs({id, score, c[2] or '', c[3] or '', c[1], c[4] or '', cmid, pending}) do out[#out + 1] = v end
      end
    end
  end
  offset = offset + 100
end
return out

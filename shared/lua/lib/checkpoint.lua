-- A LangGraph checkpoint document, stored as langgraph-checkpoint-redis
-- stores it: the JSON document, the thread's latest pointer (which names the
-- document's key), and the TTL on both if one is set. The pointer is what a
-- worker compares its kept copy with: the library's own writes (an operator's
-- `aupdate_state`) move it too, and it expires with the document.
-- Each document is listed in its thread's index (`index`, keys.thread_checkpoints)
-- by the time it was written: what pruning and a clear find it by.
local function index_checkpoint(index, key, ttl_ms)
  local t = redis.call('TIME')
  redis.call('ZADD', index, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), key)
  if tonumber(ttl_ms) > 0 then redis.call('PEXPIRE', index, ttl_ms) else redis.call('PERSIST', index) end
end

local function store_checkpoint(key, latest, document, ttl_ms, index)
  redis.call('JSON.SET', key, '$', document)
  redis.call('SET', latest, key)
  if tonumber(ttl_ms) > 0 then
    redis.call('PEXPIRE', key, ttl_ms)
    redis.call('PEXPIRE', latest, ttl_ms)
  end
  index_checkpoint(index, key, ttl_ms)
end

-- The same, for a document a commit's pipeline wrote to `staged` first (no
-- index covers it, and the script is not handed the document): renamed to
-- its key, where it is indexed, with the TTL it must have (the staged key's
-- own is dropped).
local function place_checkpoint(staged, key, latest, ttl_ms, index)
  redis.call('RENAME', staged, key)
  redis.call('SET', latest, key)
  if tonumber(ttl_ms) > 0 then
    redis.call('PEXPIRE', key, ttl_ms)
    redis.call('PEXPIRE', latest, ttl_ms)
  else
    redis.call('PERSIST', key)
  end
  index_checkpoint(index, key, ttl_ms)
end

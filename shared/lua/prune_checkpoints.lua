-- Keep a thread's newest `keep` checkpoints and delete the rest, found by the
-- thread's index (lib/checkpoint.lua) rather than by a search: each older
-- document goes with its pending writes and the library's registry of them
-- (the registry's key is the document's with its prefix changed; the writes
-- are its members). All in the thread's user's slot.
-- With `keep` 0 (a clear) every checkpoint goes, and the thread's latest pointer.
-- KEYS: the thread's checkpoint index, its latest pointer
-- ARGV: keep, the documents' key prefix, the registries' key prefix
-- Returns how many checkpoints were deleted.
if tonumber(ARGV[1]) == 0 then redis.call('DEL', KEYS[2]) end
local surplus = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1])
if surplus <= 0 then return 0 end
for _, key in ipairs(redis.call('ZRANGE', KEYS[1], 0, surplus - 1)) do
  local registry = ARGV[3] .. string.sub(key, #ARGV[2] + 1)
  local doomed = redis.call('ZRANGE', registry, 0, -1)
  doomed[#doomed + 1] = registry
  doomed[#doomed + 1] = key
  redis.call('DEL', unpack(doomed))
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, surplus - 1)
return surplus

-- Read a user's outbound stream for delivery: the events after `after` and
-- the newest trimmed id, as one snapshot (a trim between two reads could hide
-- a gap), packed as one msgpack string that the fanout decodes in C.
-- KEYS: out, meta   ARGV: after (exclusive), count
-- Returns msgpack [trimmed, [[id, [field, value, ...]], ...]].
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
local trimmed = redis.call('HGET', KEYS[2], F.meta_trimmed) or '0-0'
return cmsgpack.pack({trimmed, entries})

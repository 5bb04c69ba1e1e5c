-- Read a user's outbound stream for delivery: the events after `after` and
-- the newest trimmed id, as one snapshot (a trim between two reads could hide
-- a gap), packed as one msgpack string that the fanout decodes in C.
-- KEYS: out, meta   ARGV: after (exclusive), count, max_bytes
-- Returns msgpack [trimmed, [[id, [field, value, ...]], ...], cut].
--
-- At most `count` events and, beyond the first (so that an event larger than
-- the budget still goes, alone), at most `max_bytes` bytes of ids, field
-- names and values. `cut` is 1 when the budget stopped the read, possibly
-- before the end of the stream (the caller reads on from the last id returned).
-- The stream is read in chunks sized from the largest entry seen so far
-- (at most CHUNK entries), so an unread tail of large entries is never
-- loaded into the script's memory all at once; the read also counts as cut
-- when what is left of the budget is below that largest entry.
local CHUNK = 16
local count = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
local entries, used, cut = {}, 0, 0
local from, largest = ARGV[1], 0
while #entries < count do
    local want = count - #entries
    if largest > 0 then
        -- Read no entry that would likely not fit: stop as cut once what is
        -- left of the budget is below the largest entry seen (reading one to
        -- drop it would cost as much as sending it).
        want = math.min(want, math.floor((budget - used) / largest))
        if want < 1 then
            -- Possibly at the end of the stream: then the next read finds nothing.
            cut = 1
            break
        end
    else
        want = 1
    end
    want = math.min(want, CHUNK)
    local chunk = redis.call('XRANGE', KEYS[1], '(' .. from, '+', 'COUNT', want)
    if #chunk == 0 then break end
    for _, entry in ipairs(chunk) do
        local size = #entry[1]
        for _, part in ipairs(entry[2]) do size = size + #part end
        if size > largest then largest = size end
        if #entries > 0 and used + size > budget then
            cut = 1
            break
        end
        entries[#entries + 1] = entry
        used = used + size
        from = entry[1]
    end
    if cut == 1 or #chunk < want then break end
end
local trimmed = redis.call('HGET', KEYS[2], F.meta_trimmed) or '0-0'
return cmsgpack.pack({trimmed, entries, cut})

-- include: ids
-- Stop a conversation's running turn (`cancel`): its first waiting entry --
-- the one a worker runs now, or will run next -- is marked cancelled (the
-- conversation's `cancel` mark: every entry up to it), and the workers are
-- told (a prompt nudge only: the commit script checks the mark, so a turn
-- that finishes anyway is written as `cancelled`, and an entry not yet
-- started is not run). Queued messages behind it run as usual.
-- KEYS: conv, inbound, dedup key of `client_msg_id` (or any key of the user's)
-- ARGV: user, conversation, channel, client_msg_id ('' : whichever runs)
-- An entry held by an interrupt (human-in-the-loop) has no worker running it:
-- the caller must send a work notice (notice 1), and a worker writes its
-- `cancelled` event (and puts the graph's state back).
-- Returns {'ok', entry id, notice (1/0)}, {'idle'} when nothing waits, or {'other', entry
-- id} when `client_msg_id` is not the entry running (answered, or queued behind it).
local done = redis.call('HGET', KEYS[1], F.conv_done) or '0-0'
local first = redis.call('XRANGE', KEYS[2], '(' .. done, '+', 'COUNT', 1)
if #first == 0 then return {'idle'} end
local id = first[1][1]
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) ~= id then return {'other', id} end
local mark = redis.call('HGET', KEYS[1], F.conv_cancel)
if not mark or id_after(id, mark) then redis.call('HSET', KEYS[1], F.conv_cancel, id) end
redis.call('PUBLISH', ARGV[3], ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. id)
local held = redis.call('HGET', KEYS[1], F.conv_interrupt)
return {'ok', id, (held and string.match(held, '^(%S+)') == id) and 1 or 0}

-- include: entries
-- Find a conversation's next entry after `after` (when `done` moved under a
-- turn, or its commit had run before), attempt begun.
-- KEYS: inbound, conv   ARGV: after, token
-- Returns next_entry's answer.
return next_entry(KEYS[1], KEYS[2], ARGV[1], ARGV[2], '')

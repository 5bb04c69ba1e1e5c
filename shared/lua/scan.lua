-- include: entries
-- Scan on for a conversation's next entry (past a full page of other
-- conversations' entries, or after `done` moved), attempt begun.
-- KEYS: inbound, conv   ARGV: after, conversation, page, token
-- Returns next_entry's answer.
return next_entry(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], '')

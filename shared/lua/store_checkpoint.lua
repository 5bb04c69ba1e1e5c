-- include: checkpoint
-- Store a checkpoint document for the lease holder only (a write of a leased
-- turn that cannot wait for the commit: see the worker's checkpoint saver).
-- KEYS: lease, checkpoint, latest checkpoint pointer, the thread's checkpoint index
-- ARGV: token, document, ttl ms
-- Returns 1, or 0 when the lease is not the caller's.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
store_checkpoint(KEYS[2], KEYS[3], ARGV[2], ARGV[3], KEYS[4])
return 1

-- emit.lua: send one event of a running job, only while we hold its lease.
--
-- KEYS[1] {ns}:job:<id>
-- KEYS[2] {ns}:progress:<id>
-- KEYS[3] {ns}:events
-- KEYS[4] {ns}:log:<id>
-- KEYS[5] {ns}:cancel
-- ARGV[1] worker id
-- ARGV[2] attempt (our lease)
-- ARGV[3] the event (msgpack)
-- ARGV[4] its seq
-- ARGV[5] its type
-- ARGV[6] log_maxlen
-- ARGV[7] '1' when it also goes to {ns}:events (not a log batch)
-- ARGV[8] the phase to record in the job hash, or ''
-- ARGV[9] job id
--
-- Returns 0 (lease lost: nothing sent), 1 (sent), 2 (sent, and a cancel
-- is asked).  Sends the event given.
--
-- An event already in the stream (a replay after Redis went away before
-- answering, or one overtaken by a later event) is not sent again: the
-- stream's entry ids are '0-<seq>', and Redis refuses to add an id that
-- is not above the last (prelude's xadd), so this costs no read.  The
-- job hash's `seq` is not written here (the next script that sends an
-- event finds the stream ahead of it and continues after the stream).
local h = redis.call('HMGET', KEYS[1], 'worker', 'attempt', 'state')
if h[1] ~= ARGV[1] or h[2] ~= ARGV[2] or h[3] ~= 'running' then return 0 end
if xadd(KEYS[4], ARGV[6], ARGV[4], ARGV[5], ARGV[3]) then
  redis.call('PUBLISH', KEYS[2], ARGV[3])
  if ARGV[7] == '1' then redis.call('PUBLISH', KEYS[3], ARGV[3]) end
  if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'phase', ARGV[8]) end
end
if redis.call('HEXISTS', KEYS[5], ARGV[9]) == 1 then return 2 end
return 1
